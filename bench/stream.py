"""``python -m bench stream``: the dashboard and 50 SSE clients watching ``**`` while POST
/events ingests 2,000/s (issue 13's benchmark, in one run).

The work: one `tidings serve` process (SQLite store in a temporary directory, no endpoints),
events posted at an offered rate (batches of 20 every 10 ms = 2,000 events/s, each carrying its
send time), rounds with nobody watching and rounds with the watchers, interleaved. The watchers
run in a child process of their own (so their parsing does not slow the poster): 50 SSE clients
of ``GET /events/stream?pattern=**``, each recording per chunk received now minus the send time
of its oldest event (an upper bound of every event's lag in it), and ``--pages`` open dashboard
pages, each what `bench/dashboard.py` does for one (its live feed from the head, and ``/`` then
``/ui/endpoints`` reloaded every ``--reload`` seconds; that module's loops, imported).

Printed: ingestion throughput reached (events accepted / seconds until the last POST answered)
with and without watchers and the drop between them, the server's CPU seconds per round, each
SSE client's lag p99 (worst client, median client) and the distribution over all clients, the
dashboard's feed lag and page loads, and the count check: every SSE client and dashboard feed
saw every event of its rounds exactly once, in order (exit 1 otherwise).
Goals (issue 13): drop <= 10%, p99 < 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.dashboard import _feed, _head, _reload

ROOT = Path(__file__).resolve().parent.parent
TYPE = "bench.stream.tick"
END = "bench.stream.end"
END_BYTES = END.encode()
BATCH = 20  # events per POST
TICK = 0.01  # seconds between POSTs: BATCH / TICK = 2,000 events/s


@dataclass(frozen=True)
class Options:
    watchers: int
    rate: int
    seconds: float
    rounds: int
    pages: int = 1
    reload: float = 2.0
    profile: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dist(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:.1f} ms · p99 {p99 * 1000:.1f} ms · max {ordered[-1] * 1000:.1f} ms"


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


# ---- the watchers (a child process: python -m bench stream --watch URL N) -----------------


async def watch_one(session: aiohttp.ClientSession, url: str, out: dict[str, Any]) -> None:
    """One SSE client until the END event. A chunk is checked whole (C-level scans, so 50
    clients fit in one process): its ids must continue the previous chunk's without a gap or a
    repeat (one writer, pattern ``**``: positions are consecutive), and its lag is that of its
    oldest event (now minus that event's send time), an upper bound for every event in it."""
    lags: list[float] = out["lags"]
    buffer = b""
    last = -1
    async with session.get(url + "/events/stream?pattern=**") as resp:
        assert resp.status == 200, resp.status
        out["connected"] = True
        async for chunk in resp.content.iter_any():
            now = time.time()
            buffer += chunk
            cut = buffer.rfind(b"\n\n")
            if cut < 0:
                continue
            complete, buffer = buffer[: cut + 2], buffer[cut + 2 :]
            if b"event: error" in complete:
                out["error"] = complete[complete.index(b"event: error") :].decode(errors="replace")
                return
            count = complete.count(b"\nid: ") + complete.startswith(b"id: ")
            if not count:
                continue
            first_at = complete.find(b"id: ")
            first = int(complete[first_at + 4 : complete.index(b"\n", first_at)])
            last_at = complete.rfind(b"\nid: ") + 1 or 0
            newest = int(complete[last_at + 4 : complete.index(b"\n", last_at)])
            if (last >= 0 and first != last + 1) or newest - first + 1 != count:
                out["gaps"] += 1
            out["count"] += count
            last = newest
            sent_at = complete.find(b'"t":', first_at)
            if sent_at >= 0:
                lags.append(now - float(complete[sent_at + 4 : complete.index(b"}", sent_at)]))
            if END_BYTES in complete:
                return


async def watchers_main(url: str, n: int, pages: int, reload: float) -> int:
    outs: list[dict[str, Any]] = [{"lags": [], "count": 0, "gaps": 0} for _ in range(n)]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        # the dashboard pages: bench/dashboard.py's feed (from the head) and page reloads
        after = await _head(session, url)
        seen: list[list[int]] = [[] for _ in range(pages)]
        feed_lags: list[float] = []
        page_times: list[float] = []
        dash = [asyncio.ensure_future(_feed(session, url, after, s, feed_lags)) for s in seen]
        dash += [asyncio.ensure_future(_reload(session, url, reload, page_times)) for _ in seen]
        tasks = [asyncio.ensure_future(watch_one(session, url, o)) for o in outs]
        while not all(o.get("connected") for o in outs):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3 if pages else 0)  # the feeds connect, as a page would first
        ready_cpu = time.process_time()  # from here: the streaming, not the imports
        print("ready", flush=True)
        await asyncio.gather(*tasks)
        end = max((o["count"] for o in outs), default=0)  # the END event's rank
        deadline = time.monotonic() + 30
        while any(len(s) < end for s in seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in dash:
            task.cancel()
        await asyncio.gather(*dash, return_exceptions=True)
    feeds = [
        {"count": len(s), "in_order": s == list(range(after + 1, after + len(s) + 1))} for s in seen
    ]
    report = [
        {
            "p99": p99(o["lags"]),
            "lags": o["lags"][:: max(1, len(o["lags"]) // 2000)],  # a sample for the overall
            "count": o["count"],
            "gaps": o["gaps"],
            "error": o.get("error"),
        }
        for o in outs
    ]
    cpu = time.process_time() - ready_cpu
    answer = {"cpu": cpu, "watchers": report, "feeds": feeds, "feed_lags": feed_lags,
              "pages": page_times}  # fmt: skip
    print(json.dumps(answer), flush=True)
    return 0


# ---- the poster and the rounds --------------------------------------------------------------


async def post_paced(
    session: aiohttp.ClientSession, url: str, rate: int, seconds: float, end: bool
) -> tuple[int, float]:
    """Post ``rate`` events/s for ``seconds``; (events accepted, seconds until the last answer)."""
    per_tick = max(1, round(rate * TICK))
    ticks = int(seconds / TICK)
    accepted = 0
    errors: list[str] = []
    pending: set[asyncio.Task[None]] = set()

    async def post(body: bytes, n: int) -> None:
        nonlocal accepted
        async with session.post(
            url + "/events", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            if resp.status == 202:
                accepted += n
            else:
                errors.append(f"{resp.status} {await resp.text()}")

    start = time.perf_counter()
    for i in range(ticks):
        target = start + i * TICK
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t = time.time()
        body = json.dumps([{"type": TYPE, "data": {"t": t}} for _ in range(per_tick)]).encode()
        task = asyncio.ensure_future(post(body, per_tick))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    elapsed = time.perf_counter() - start
    if end:
        await post(json.dumps({"type": END}).encode(), 0)
    if errors:
        raise RuntimeError(f"POST /events refused {len(errors)} batches: {errors[:3]}")
    return accepted, elapsed


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench stream", description=__doc__.split("\n")[0])
    p.add_argument("--watchers", type=int, default=50)
    p.add_argument("--rate", type=int, default=2000, help="events/s offered (default 2000)")
    p.add_argument("--seconds", type=float, default=5.0, help="per round (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="of each kind (default 5)")
    p.add_argument("--pages", type=int, default=1, help="dashboard pages open (default 1)")
    p.add_argument("--reload", type=float, default=2.0, help="seconds between page reloads")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s each, 10 watchers")
    p.add_argument("--profile", metavar="FILE", help="run tidings serve under cProfile into FILE")
    args = p.parse_args(list(argv))
    if args.quick:
        return Options(10, args.rate, 2.0, 1, args.pages, args.reload, args.profile)
    return Options(
        args.watchers, args.rate, args.seconds, args.rounds, args.pages, args.reload, args.profile
    )


async def run(opts: Options, workdir: Path) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = workdir / "tidings.yaml"
    config.write_text(
        f"store:\n  url: sqlite:///{workdir / 'tidings.db'}\nserver:\n  port: {port}\n"
        "events:\n  enabled: false\n"
    )
    log = workdir / "serve.log"
    argv = ["-m", "tidings", "--config", str(config), "serve", "--log-level", "warning"]
    if opts.profile:  # the serve process's own time, by function (SIGTERM ends it cleanly)
        argv = ["-m", "cProfile", "-o", str(Path(opts.profile).resolve()), *argv]
    serve = subprocess.Popen(
        [sys.executable, *argv], cwd=workdir, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    bad: list[str] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(url + "/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if serve.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text()[-2000:], file=sys.stderr)
                    return 1
                await asyncio.sleep(0.1)
            await post_paced(session, url, opts.rate, 1.0, False)  # warm-up
            alone: list[float] = []
            watched: list[float] = []
            cpu_alone: list[float] = []
            cpu_watched: list[float] = []
            cpu_clients: list[float] = []
            client_p99: list[float] = []
            all_lags: list[float] = []
            feed_lags: list[float] = []
            per_round: list[str] = []  # a stall shows in one round, a steady cost in all
            page_times: list[float] = []
            for r in range(opts.rounds):
                before = cpu_seconds(serve.pid)
                n, took = await post_paced(session, url, opts.rate, opts.seconds, False)
                alone.append(n / took)
                cpu_alone.append(cpu_seconds(serve.pid) - before)
                watchers = subprocess.Popen(
                    [sys.executable, "-m", "bench", "stream", "--watch", url, str(opts.watchers),
                     str(opts.pages), str(opts.reload)],
                    cwd=ROOT, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert watchers.stdout is not None
                line = await asyncio.to_thread(watchers.stdout.readline)
                if line.strip() != "ready":
                    bad.append(f"round {r}: the watchers did not start: {line!r}")
                    watchers.kill()
                    break
                before = cpu_seconds(serve.pid)
                n, took = await post_paced(session, url, opts.rate, opts.seconds, True)
                watched.append(n / took)
                cpu_watched.append(cpu_seconds(serve.pid) - before)
                out, _ = await asyncio.to_thread(watchers.communicate, timeout=120)
                answer = json.loads(out.strip().splitlines()[-1])
                cpu_clients.append(answer["cpu"])
                for i, w in enumerate(answer["watchers"]):
                    if w["error"] or w["count"] != n + 1 or w["gaps"]:
                        bad.append(
                            f"round {r} watcher {i}: saw {w['count']} events of {n + 1}, "
                            f"{w['gaps']} chunks with a gap or a repeat; error {w['error']}"
                        )
                    client_p99.append(w["p99"])
                    all_lags += w["lags"]
                for i, f in enumerate(answer["feeds"]):
                    if f["count"] != n + 1 or not f["in_order"]:
                        bad.append(
                            f"round {r} dashboard feed {i}: saw {f['count']} events of "
                            f"{n + 1}, consecutive from the head: {f['in_order']}"
                        )
                feed_lags += answer["feed_lags"]
                worst_here = max((w["p99"] for w in answer["watchers"]), default=0.0)
                per_round.append(f"{n / took:,.0f}/s, {worst_here * 1000:.0f} ms")
                page_times += answer["pages"]
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
    cpu = (cpu_alone, cpu_watched, cpu_clients)
    report_figures(opts, alone, watched, cpu, client_p99, all_lags)
    print("stream.rounds (ingestion, worst client p99 per round with watchers): "
          + " · ".join(per_round))  # fmt: skip
    print(f"stream.dashboard.feed_lag: {opts.pages} page(s), {len(feed_lags):,} events: "
          f"{dist(feed_lags)}")  # fmt: skip
    print(f"stream.dashboard.page: {len(page_times):,} loads of / and /ui/endpoints every "
          f"{opts.reload:g} s while ingesting: {dist(page_times)}")  # fmt: skip
    if bad:
        print("COUNT ERRORS:\n  " + "\n  ".join(bad[:20]))
        return 1
    print(f"count check: every watcher saw every event of its round once, in order "
          f"({opts.watchers} watchers and {opts.pages} dashboard feed(s) x {opts.rounds} "
          "rounds)")  # fmt: skip
    return 0


def _rate(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}/s (min {min(values):,.0f}, max {max(values):,.0f})"


def report_figures(
    opts: Options,
    alone: list[float],
    watched: list[float],
    cpu: tuple[list[float], list[float], list[float]],
    client_p99: list[float],
    all_lags: list[float],
) -> None:
    if not alone or not watched:
        return
    drop = 1 - statistics.median(watched) / statistics.median(alone)
    rounds = f"{opts.rounds} round{'s' if opts.rounds > 1 else ''}"
    load = os.getloadavg()[0]
    print(
        f"work: offered {opts.rate:,} events/s ({BATCH} per POST every {TICK * 1000:.0f} ms) for "
        f"{opts.seconds:g} s, {rounds} of each, interleaved; {opts.watchers} SSE watchers of "
        f"'**' and {opts.pages} dashboard page(s) (its feed, / and /ui/endpoints every "
        f"{opts.reload:g} s) in a child process; SQLite store; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs (load average {load:.1f} at the end)"
    )
    print(f"stream.ingest.alone: {_rate(alone)}")
    print(f"stream.ingest.watched: {_rate(watched)} · drop {drop:.1%} "
          f"(goal <= 10%: {'met' if drop <= 0.10 else 'NOT met'})")  # fmt: skip
    alone_cpu, watched_cpu, clients_cpu = (statistics.median(c) if c else 0.0 for c in cpu)
    print(
        f"stream.cpu: tidings serve alone {alone_cpu:.2f} s/round · with watchers "
        f"{watched_cpu:.2f} s/round · the watchers' process {clients_cpu:.2f} s/round "
        f"(of {opts.seconds:g} s)"
    )
    worst = max(client_p99)
    print(
        f"stream.lag.client_p99: worst client {worst * 1000:.1f} ms · median client "
        f"{statistics.median(client_p99) * 1000:.1f} ms (goal < 250 ms: "
        f"{'met' if worst < 0.25 else 'NOT met'})"
    )
    print(f"stream.lag.all: {dist(all_lags)}")


def _run(coro: Any) -> int:
    """uvloop when installed (as `tidings serve` runs on it), so clients cost what they would."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--watch"]:
        return _run(watchers_main(argv[1], int(argv[2]), int(argv[3]), float(argv[4])))
    opts = parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        return _run(run(opts, Path(tmp)))
