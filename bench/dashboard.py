"""``python -m bench dashboard``: what an open dashboard costs `tidings serve` while it ingests.

One `tidings serve` process (SQLite store in a temporary folder, no endpoints) is offered
``--rate`` events/s over ``POST /events`` (batches of ``--batch``, paced every 10 ms) in rounds
of ``--seconds``. Rounds alternate, interleaved: **without watchers** (the floor: the same
server, nobody looking) and **with the dashboard open**: what a browser with the live page
does, ``--pages`` times, each a live feed (``GET /events/stream?pattern=**`` from the head, as
the page's script opens it) and the page itself loaded every ``--reload`` seconds (``/`` with
its health, charts and newest events, then ``/ui/endpoints``).

Printed per side: ingestion (events/s accepted, median with min and max over rounds) and the
ratio with/without; the feed's lag (send time in the event's data to the moment the client
reads it: p50, p99, max at the offered rate); the page load times. Every feed must see every
event of its round exactly once, in order, or the benchmark says so and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import fmt_duration, fmt_rate, machine_lines, percentile

TICK = 0.01  # seconds between batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Side:
    name: str
    rates: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    pages: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _head(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/subscriptions") as resp:
        head: int = (await resp.json())["head"]
        return head


async def _feed(
    session: aiohttp.ClientSession, url: str, after: int, seen: list[int], lags: list[float]
) -> None:
    """Read the live stream as the page's EventSource does; note positions and lags."""
    params = {"pattern": "**", "after": str(after)}
    async with session.get(url + "/events/stream", params=params, timeout=None) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                item = json.loads(line[6:])
                if "position" not in item:
                    continue
                data = item["event"].get("data")
                if isinstance(data, dict) and "t" in data:  # an end marker carries no time
                    lags.append(time.time() - data["t"])
                seen.append(item["position"])


async def _reload(
    session: aiohttp.ClientSession, url: str, every: float, times: list[float]
) -> None:
    while True:
        for path in ("/", "/ui/endpoints"):
            started = time.perf_counter()
            async with session.get(url + path) as resp:
                await resp.read()
                assert resp.status == 200, path
            times.append(time.perf_counter() - started)
        await asyncio.sleep(every)


async def _ingest(
    session: aiohttp.ClientSession, url: str, rate: int, batch: int, seconds: float
) -> tuple[int, float]:
    """Offer ``rate`` events/s for ``seconds``; (accepted, seconds taken)."""
    per_tick = max(1, round(rate * TICK))
    ticks = int(seconds / TICK)
    accepted = 0
    inflight = asyncio.Semaphore(8)

    async def post(n: int) -> None:
        nonlocal accepted
        now = time.time()
        body = [{"type": "bench.dash", "source": "/bench", "data": {"t": now, "i": i}}
                for i in range(n)]  # fmt: skip
        for start in range(0, len(body), batch):
            async with session.post(url + "/events", json=body[start : start + batch]) as resp:
                got = await resp.json()
                assert resp.status == 202, got
                accepted += got["accepted"]

    started = time.perf_counter()
    tasks = []
    for tick in range(ticks):
        delay = started + tick * TICK - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await inflight.acquire()
        task = asyncio.ensure_future(post(per_tick))
        task.add_done_callback(lambda _t: inflight.release())
        tasks.append(task)
    await asyncio.gather(*tasks)
    return accepted, time.perf_counter() - started


async def _round(url: str, args: argparse.Namespace, side: Side, watch: bool) -> None:
    async with aiohttp.ClientSession() as session:
        after = await _head(session, url)
        seen: list[list[int]] = [[] for _ in range(args.pages if watch else 0)]
        lags: list[float] = []
        watchers = [asyncio.ensure_future(_feed(session, url, after, s, lags)) for s in seen]
        watchers += [
            asyncio.ensure_future(_reload(session, url, args.reload, side.pages))
            for _ in range(args.pages if watch else 0)
        ]
        await asyncio.sleep(0.3 if watch else 0)  # the feeds connect, as a page would first
        accepted, took = await _ingest(session, url, args.rate, args.batch, args.seconds)
        side.rates.append(accepted / took)
        expected = list(range(after + 1, after + accepted + 1))
        deadline = time.monotonic() + 30
        while watch and any(len(s) < accepted for s in seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for i, positions in enumerate(seen):
            if positions != expected:
                side.errors.append(
                    f"feed {i}: saw {len(positions)} of {accepted} events "
                    f"({len(set(positions))} distinct, in order: {positions == sorted(positions)})"
                )
        side.lags += lags


def _serve(folder: Path, port: int) -> subprocess.Popen[bytes]:
    config = folder / "tidings.yaml"
    config.write_text(
        f'store: {{url: "sqlite:///{folder / "bench.db"}"}}\n'
        f"server: {{host: 127.0.0.1, port: {port}, max_batch: 10000}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", "--config", str(config), "serve", "--log-level",
         "warning"],
        stdout=(folder / "serve.log").open("ab"), stderr=subprocess.STDOUT, env=env, cwd=folder,
    )  # fmt: skip


async def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"tidings serve exited: {log.read_text()[-2000:]}")
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"tidings serve did not start: {log.read_text()[-2000:]}")


def _dist(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "no samples"
    return (
        f"p50 {fmt_duration(percentile(ordered, 50))} · p99 {fmt_duration(percentile(ordered, 99))}"
        f" · max {fmt_duration(ordered[-1])}"
    )


async def _main(args: argparse.Namespace) -> int:
    print(f"dashboard: {args.rounds} rounds per side of {args.seconds:g}s, interleaved; offered "
          f"{args.rate:,}/s in batches of {args.batch} every {TICK * 1000:.0f} ms; dashboard open "
          f"= {args.pages} page(s), each a live feed on ** and a reload of / and /ui/endpoints "
          f"every {args.reload:g}s; tidings serve on SQLite, no endpoints")  # fmt: skip
    for line in machine_lines(["starlette", "uvicorn", "jinja2", "aiohttp"]):
        print(line)
    without, with_ = Side("without watchers"), Side("dashboard open")
    with tempfile.TemporaryDirectory(prefix="tidings-bench-dash-") as tmp:
        folder = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _serve(folder, port)
        try:
            await _wait_up(url, proc, folder / "serve.log")
            await _round(url, argparse.Namespace(**{**vars(args), "seconds": 1.0}), Side("warm"),
                         True)  # fmt: skip
            for _ in range(args.rounds):
                await _round(url, args, without, False)
                await _round(url, args, with_, True)
        finally:
            proc.terminate()
            proc.wait(20)
    a, b = statistics.median(without.rates), statistics.median(with_.rates)
    print(
        f"dashboard.ingest: without watchers {fmt_rate(a)}/s (min {fmt_rate(min(without.rates))}, "
        f"max {fmt_rate(max(without.rates))}) · dashboard open {fmt_rate(b)}/s "
        f"(min {fmt_rate(min(with_.rates))}, max {fmt_rate(max(with_.rates))}) · "
        f"ratio {b / a:.2f} (offered {args.rate:,}/s)"
    )
    print(f"dashboard.feed.lag: offered {args.rate:,}/s, {len(with_.lags):,} events seen by "
          f"{args.pages} feed(s): {_dist(with_.lags)}")  # fmt: skip
    print(f"dashboard.page: {len(with_.pages):,} loads of / and /ui/endpoints while ingesting: "
          f"{_dist(with_.pages)}")  # fmt: skip
    errors = without.errors + with_.errors
    if errors:
        print("FEED ERRORS: " + "; ".join(errors[:5]))
        return 1
    print("feed check: every feed saw every event of its round once, in order")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dashboard", description=__doc__)
    parser.add_argument("--rate", type=int, default=2000, help="events/s offered")
    parser.add_argument("--batch", type=int, default=20, help="events per POST")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side")
    parser.add_argument("--pages", type=int, default=1, help="dashboard pages open")
    parser.add_argument("--reload", type=float, default=2.0, help="seconds between reloads")
    parser.add_argument("--quick", action="store_true", help="a short run (the smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rate, args.seconds, args.rounds = 500, 1.0, 1
    return asyncio.run(_main(args))
