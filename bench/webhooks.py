"""``python -m bench webhooks``: `tidings serve` delivering webhooks, beside raw aiohttp posting.

Goals (the webhook issue, 2-core machine): tidings end to end >= 50% of the aiohttp floor; every
event delivered exactly once with a 200 while the receiver fails 30% of requests at random;
accept -> first attempt latency reported at 500 events/s offered. They are printed beside the
figures, never asserted.

Three processes on loopback: this one (posters and the floor), a receiver (a raw ASGI app, this
module's ``receiver``, under a one-worker uvicorn) and `python -m tidings --config X serve` with a
SQLite store in a temporary directory. The receiver records, per request, its arrival time
(``time.time()``: one clock for every process on this machine), ``tidings-event-id``,
``webhook-id`` and the status it answered; the figures and the counts come from those records.

- **floor**: aiohttp posting pre-built requests (the body tidings renders for the same event,
  seed format, signed, the same headers) to the receiver, 50 at a time;
- **tidings**: POST /events in batches of 100 by 4 concurrent posters; one signed endpoint with
  ``max_in_flight: 50``, ``server.workers: 50``. Both run from the first request sent to the
  last request's arrival at the receiver, interleaved round-robin;
- **latency**: single-event POST /events paced at 500/s; receiver arrival - POST sent;
- **failures**: a second `tidings serve` (fresh store) whose endpoint answers 500 to 30% of
  requests at random, retrying fast. Lost events or a message id answered 200 twice exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from time import perf_counter
from typing import Any

import aiohttp
import msgspec
import yaml

from bench import Contender, Kind, fmt_duration, fmt_rate, machine_lines, percentile, run_rounds
from tidings.event import Event, new_id
from tidings.webhooks.payload import render
from tidings.webhooks.signing import Signer, generate_secret
from tidings.webhooks.worker import USER_AGENT

DESCRIPTION = "Webhook delivery by `tidings serve`, beside aiohttp posting to the same receiver."
ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TYPE = "bench.webhook.tick"
LAT_TYPE = "bench.webhook.lat"
FLAKY_TYPE = "bench.webhook.flaky"
CONCURRENCY = 50  # floor connections, server.workers and the endpoint's max_in_flight
BATCH = 100  # events per POST /events
POSTERS = 4  # concurrent POST /events
QUEUE_SIZE = 1_000_000
FAIL_RATE = 0.3
RETRY = {"max_retries": 20, "retry_delay": 0.05, "max_delay": 0.5}
ROUND_LIMIT = 120.0  # seconds a round may take before what is missing counts as lost
IDLE_LIMIT = 30.0  # seconds tidings may take to record its last outcomes after a round

_json = msgspec.json.Encoder()


# ---- the receiver: runs in its own process (`uvicorn bench.webhooks:receiver`) ---------------

Record = tuple[float, str, str, int]  # arrival time, tidings-event-id, webhook-id, status
_records: list[Record] = []
_ok_ids: set[str] = set()
_rng = random.Random(1)  # the same failures every run

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def receiver(scope: Scope, receive: Receive, send: Send) -> None:
    """POST /hook answers 200, POST /flaky 500 at ``FAIL_RATE``; /_bench/* reads or clears.

    The arrival time is taken first, when uvicorn hands over the parsed request head.
    """
    if scope["type"] != "http":
        return
    at = time.time()
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    path: str = scope["path"]
    if path.startswith("/_bench/"):
        body = _control(path, scope["method"])
        await _answer(send, 200 if body is not None else 404, body or b"unknown control path")
        return
    event_id = msg_id = ""
    for name, value in scope["headers"]:
        if name == b"tidings-event-id":
            event_id = value.decode()
        elif name == b"webhook-id":
            msg_id = value.decode()
    status = 500 if path == "/flaky" and _rng.random() < FAIL_RATE else 200
    _records.append((at, event_id, msg_id, status))
    if status == 200:
        _ok_ids.add(event_id)
    await _answer(send, status, b"ok" if status == 200 else b"no")


def _control(path: str, method: str) -> bytes | None:
    if path == "/_bench/count":
        return _json.encode({"requests": len(_records), "ok": len(_ok_ids)})
    if path == "/_bench/records":
        return _json.encode(_records)
    if path == "/_bench/clear" and method == "POST":
        _records.clear()
        _ok_ids.clear()
        return b"{}"
    return None


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    """A child process serving HTTP on loopback; stopped with SIGINT (uvicorn drains), then kill."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.url = f"http://{HOST}:{port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    async def ready(self, session: aiohttp.ClientSession, path: str, limit: float = 30.0) -> None:
        deadline = perf_counter() + limit
        while perf_counter() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(self.url + path) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start (exit {self.proc.poll()}):\n{tail}")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (Linux /proc; 0 elsewhere)."""
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live descendants (tidings' sender process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        total += _cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out += [int(c) for c in f.read().split()]
    return out


def start_receiver(workdir: Path) -> Process:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.webhooks:receiver", "--host", HOST]
    argv += ["--port", str(port), "--workers", "1", "--no-access-log", "--lifespan", "off"]
    argv += ["--log-level", "warning"]
    return Process("receiver", argv, port, workdir / "receiver.log")


def start_tidings(
    workdir: Path, name: str, endpoint: dict[str, Any], sender_process: bool | None = None
) -> tuple[Process, str]:
    """`tidings serve` with a fresh SQLite store and one endpoint; returns it and the store URL."""
    port = free_port()
    store = f"sqlite:///{workdir / name}.db"
    server = {"host": HOST, "port": port, "workers": CONCURRENCY, "max_batch": 1000}
    config = {
        "store": {"url": store},
        "server": {**server, "sender_process": sender_process},
        "events": {"enabled": True, "queue_size": QUEUE_SIZE, "webhooks": {"bench": endpoint}},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "tidings", "--config", str(path), "serve", "--log-level"]
    argv.append("warning")
    return Process(f"tidings serve ({name})", argv, port, workdir / f"{name}.log"), store


# ---- talking to the receiver and to tidings --------------------------------------------------


@dataclass(slots=True)
class Received:
    """What the receiver recorded between two clears."""

    records: list[Record]

    def arrivals(self) -> dict[str, float]:
        """Each event id's first arrival."""
        first: dict[str, float] = {}
        for at, event_id, _, _ in self.records:
            if event_id not in first or at < first[event_id]:
                first[event_id] = at
        return first

    def last(self) -> float:
        return max((r[0] for r in self.records), default=float("nan"))

    def check(self, name: str, expected: set[str]) -> str | None:
        """None when every expected event arrived exactly once with a 200 and nothing else did."""
        ok = [r[1] for r in self.records if r[3] == 200]
        got = set(ok)
        if len(self.records) == len(ok) == len(expected) and got == expected:
            return None
        return (
            f"{name}: {len(self.records):,} requests for {len(expected):,} events: "
            f"{len(expected - got):,} lost, {len(ok) - len(got):,} duplicated, "
            f"{len(got - expected):,} unexpected, {len(self.records) - len(ok):,} not answered 200"
        )


class Bench:
    """The shared session and the two servers this run talks to."""

    def __init__(self, session: aiohttp.ClientSession, receiver: Process) -> None:
        self.session = session
        self.receiver = receiver

    async def _json(self, method: str, url: str) -> Any:
        async with self.session.request(method, url) as resp:
            resp.raise_for_status()
            return msgspec.json.decode(await resp.read())

    async def clear(self) -> None:
        await self._json("POST", self.receiver.url + "/_bench/clear")

    async def take(self) -> Received:
        got = await self._json("GET", self.receiver.url + "/_bench/records")
        await self.clear()
        return Received([(float(a), str(e), str(m), int(s)) for a, e, m, s in got])

    async def wait_delivered(self, target: int, tidings: Process, limit: float) -> None:
        """Until ``target`` distinct event ids got a 200, ``limit`` seconds pass, or tidings has
        nothing left to send (its queue is idle: what is missing then is lost). A retry waiting
        out a backoff or an open circuit is still pending, not lost. /health is asked only after
        a second without progress: it counts every delivery row under the queue's lock.
        """
        deadline = perf_counter() + limit
        last, since = -1, perf_counter()
        while perf_counter() < deadline:
            ok = int((await self._json("GET", self.receiver.url + "/_bench/count"))["ok"])
            if ok >= target:
                return
            if ok != last:
                last, since = ok, perf_counter()
            elif perf_counter() - since > 1.0:
                if await self.idle(tidings):
                    return
                since = perf_counter()
            await asyncio.sleep(0.02)

    async def idle(self, tidings: Process) -> bool:
        queue = await self.queue(tidings)
        return int(queue["pending"]) + int(queue["delivering"]) == 0

    async def queue(self, tidings: Process) -> dict[str, Any]:
        queue: dict[str, Any] = (await self._json("GET", tidings.url + "/health"))["queue"]
        return queue

    async def wait_idle(self, tidings: Process, limit: float = IDLE_LIMIT) -> dict[str, Any]:
        """Until tidings has nothing pending or in flight (so no late request is missed)."""
        deadline = perf_counter() + limit
        while True:
            queue = await self.queue(tidings)
            if queue["pending"] + queue["delivering"] == 0 or perf_counter() > deadline:
                return queue
            await asyncio.sleep(0.02)


# ---- one round's work ------------------------------------------------------------------------


def payload(i: int) -> dict[str, Any]:
    return {"order_id": f"ord_{i:08d}", "amount": 1234.5, "currency": "EUR", "seq": i}


def seed_item(i: int, kind: str = TYPE) -> dict[str, Any]:
    """One event as a seed 000 producer posts it to POST /events."""
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"event_type": kind, "timestamp": stamp, "data": payload(i)}


@dataclass(slots=True)
class Round:
    """Both sides' requests for ``n`` events, built before the clock starts."""

    n: int
    requests: list[tuple[bytes, dict[str, str]]]  # floor: body and headers, as tidings sends
    floor_ids: set[str]
    batches: list[bytes]  # tidings: POST /events bodies


def signed_request(i: int, signer: Signer) -> tuple[bytes, dict[str, str]]:
    """The request tidings' worker makes for event ``i``: seed body, signed, its headers."""
    event = Event(type=TYPE, source="tidings", data=payload(i))
    body, headers = render(event, "seed")
    headers["User-Agent"] = USER_AGENT
    headers["tidings-event-id"] = event.id
    headers["tidings-event-type"] = event.type
    headers["tidings-attempt"] = "1"
    headers.update(signer.headers(new_id(), int(time.time()), body))
    return body, headers


def batches(n: int, kind: str = TYPE, size: int = BATCH) -> list[bytes]:
    return [
        _json.encode([seed_item(i, kind) for i in range(start, min(n, start + size))])
        for start in range(0, n, size)
    ]


def make_round(n: int, signer: Signer) -> Round:
    requests = [signed_request(i, signer) for i in range(n)]
    ids = {h["tidings-event-id"] for _, h in requests}
    return Round(n, requests, ids, batches(n))


# ---- the floor and tidings, one round each ---------------------------------------------------


@dataclass
class Side:
    """A contender's results beside its rates: latencies, errors, CPU each process used.

    ``procs`` maps a label to a child process, or to None for this process (the posters).
    """

    procs: dict[str, Process | None]
    warm: bool = False
    error: str | None = None
    latencies: list[float] = field(default_factory=list)
    ingest_rates: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # label -> CPU seconds, all rounds
    wall: float = 0.0  # seconds those CPU seconds were spent in
    units: int = 0  # events those CPU seconds delivered

    def cpu_now(self) -> dict[str, float]:
        return {
            k: time.process_time() if p is None else p.cpu_seconds() for k, p in self.procs.items()
        }

    def add_cpu(self, before: dict[str, float], wall: float, units: int) -> None:
        for k, now in self.cpu_now().items():
            self.cpu[k] = self.cpu.get(k, 0.0) + now - before[k]
        self.wall += wall
        self.units += units

    def cpu_line(self) -> str:
        """Per process: CPU µs per event, and the share of one core it kept busy."""
        if not self.units or self.wall <= 0:
            return "no figure"
        return ", ".join(
            f"{k} {v / self.units * 1e6:.0f} µs ({v / self.wall:.0%})" for k, v in self.cpu.items()
        )


async def floor_round(b: Bench, r: Round, side: Side, hook: str) -> float:
    """aiohttp, 50 connections kept alive, each coroutine posting the next pre-built request."""
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=10.0)
    todo = iter(r.requests)
    latencies: list[float] = []

    async def poster(session: aiohttp.ClientSession) -> None:
        for body, headers in todo:
            t = perf_counter()
            async with session.post(
                hook, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                await resp.content.read(2048)
            latencies.append(perf_counter() - t)

    async with aiohttp.ClientSession(connector=connector) as session:
        cpu = side.cpu_now()
        t0 = time.time()
        await asyncio.gather(*(poster(session) for _ in range(CONCURRENCY)))
        side.add_cpu(cpu, time.time() - t0, r.n)
    got = await b.take()
    side.error = got.check("floor", r.floor_ids)
    side.latencies += latencies
    return got.last() - t0


async def post_events(
    session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes], posters: int
) -> list[str]:
    """POST every body to /events, ``posters`` at a time; the accepted event ids, in order."""
    todo: Iterator[bytes] = iter(bodies)
    ids: list[str] = []

    async def poster() -> None:
        for body in todo:
            async with session.post(
                url + "/events", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                answer = await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"POST /events: HTTP {resp.status}: {answer[:300]!r}")
                ids.extend(msgspec.json.decode(answer)["ids"])

    await asyncio.gather(*(poster() for _ in range(posters)))
    return ids


async def tidings_round(b: Bench, r: Round, side: Side, tidings: Process, limit: float) -> float:
    cpu = side.cpu_now()
    t0 = time.time()
    ids = await post_events(b.session, tidings.url, r.batches, POSTERS)
    accepted = time.time()
    await b.wait_delivered(len(ids), tidings, limit)
    side.add_cpu(cpu, time.time() - t0, len(ids))
    await b.wait_idle(tidings)
    got = await b.take()
    side.error = got.check("tidings", set(ids))
    if len(ids) != r.n:
        side.error = f"tidings: {len(ids):,} of {r.n:,} events accepted"
    side.ingest_rates.append(len(ids) / (accepted - t0))
    return got.last() - t0


def contender(
    loop: asyncio.AbstractEventLoop,
    key: str,
    kind: Kind,
    procs: dict[str, Process | None],
    go: Callable[[Round, Side], Awaitable[float]],
) -> tuple[Contender[Round], Side]:
    side = Side(procs)

    def run(r: Round) -> float:
        side.error = None
        try:
            seconds = loop.run_until_complete(go(r, side))
        except Exception as exc:  # a round that breaks is an error in the output, not a figure
            side.error = f"{key}: round failed: {type(exc).__name__}: {exc}"
            return 0.0
        if not side.warm:  # run_rounds' first call is the warm-up: keep none of its figures
            side.warm = True
            side.latencies, side.ingest_rates, side.cpu = [], [], {}
            side.wall, side.units = 0.0, 0
        return seconds

    return Contender(key, key, kind, run, lambda _r: side.error), side


# ---- latency at an offered rate --------------------------------------------------------------


@dataclass(slots=True)
class Latency:
    count: int
    achieved: float
    delays: list[float]  # receiver arrival - POST sent, ascending
    round_trips: list[float]  # POST /events answered - sent, ascending
    error: str | None


async def measure_latency(b: Bench, tidings: Process, rate: int, seconds: float) -> Latency:
    """Single-event POSTs paced at ``rate`` (each in its own task, so a slow answer does not
    hold the next one back); the send time is ``time.time()`` just before the POST."""
    interval = 1.0 / rate

    async def paced(n: int) -> tuple[dict[str, float], list[float], float]:
        bodies = [_json.encode(seed_item(i, LAT_TYPE)) for i in range(n)]
        sent: dict[str, float] = {}
        trips: list[float] = []

        async def one(body: bytes) -> None:
            t = time.time()
            async with b.session.post(
                tidings.url + "/events", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                answer = await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"POST /events: HTTP {resp.status}: {answer[:300]!r}")
            trips.append(time.time() - t)
            sent[msgspec.json.decode(answer)["ids"][0]] = t

        tasks: list[asyncio.Task[None]] = []
        start = perf_counter() + 0.002
        for i, body in enumerate(bodies):
            delay = start + i * interval - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body)))
        span = perf_counter() - start
        await asyncio.gather(*tasks)
        await b.wait_delivered(len(sent), tidings, ROUND_LIMIT)
        await b.wait_idle(tidings)
        return sent, trips, (n - 1) / span if span > 0 else 0.0

    count = max(100, int(rate * seconds))
    await paced(max(100, count // 10))  # warm-up
    await b.take()
    sent, trips, achieved = await paced(count)
    got = await b.take()
    error = got.check("tidings latency", set(sent))
    arrivals = got.arrivals()
    delays = sorted(arrivals[i] - t for i, t in sent.items() if i in arrivals)
    return Latency(count, achieved, delays, sorted(trips), error)


# ---- failures: a receiver answering 500 to 30% of requests -----------------------------------


@dataclass(slots=True)
class Failures:
    events: int
    delivered: int  # event ids answered 200 at least once
    undelivered: int  # event ids never answered 200
    queued: int  # deliveries tidings still had pending or in flight at the end
    dead: int  # deliveries tidings gave up on (its /health)
    duplicate_ok: int  # 200 answers beyond the first for one message id
    attempts: int
    failed: int  # requests answered 500
    id_changed: int  # events whose retries carried more than one message id
    seconds: float  # first POST to the last 200
    pauses: list[float]  # gaps of >= 1 s between consecutive requests

    @property
    def problem(self) -> str | None:
        if self.undelivered == 0 and self.duplicate_ok == 0:
            return None
        missing = (
            f"{self.undelivered:,} events lost ({self.dead:,} dead in tidings)"
            if self.queued == 0
            else f"{self.undelivered:,} events not delivered within the time limit "
            f"({self.queued:,} still queued in tidings)"
        )
        return f"failure run: {missing}, {self.duplicate_ok:,} extra 200s for one message id"


async def measure_failures(b: Bench, tidings: Process, n: int, limit: float) -> Failures:
    t0 = time.time()
    ids = await post_events(b.session, tidings.url, batches(n, FLAKY_TYPE), POSTERS)
    await b.wait_delivered(len(ids), tidings, limit)
    queue = await b.wait_idle(tidings)
    got = await b.take()
    expected = set(ids)
    ok = [r for r in got.records if r[3] == 200]
    delivered = {r[1] for r in ok} & expected
    messages: dict[str, set[str]] = {}
    for _, event_id, msg_id, _ in got.records:
        messages.setdefault(event_id, set()).add(msg_id)
    times = sorted(r[0] for r in got.records)
    return Failures(
        events=n,
        delivered=len(delivered),
        undelivered=len(expected - delivered) + (n - len(ids)),
        queued=int(queue["pending"]) + int(queue["delivering"]),
        dead=int(queue["dead"]),
        duplicate_ok=sum(c - 1 for c in Counter(r[2] for r in ok).values()),
        attempts=len(got.records),
        failed=len(got.records) - len(ok),
        id_changed=sum(1 for m in messages.values() if len(m) > 1),
        seconds=max((r[0] for r in ok), default=t0) - t0,
        pauses=[y - x for x, y in pairwise(times) if y - x >= 1.0],
    )


# ---- running it all --------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    events: int
    rounds: int
    warmup: int
    rate: int
    latency_seconds: float
    failures: int
    round_limit: float
    failure_limit: float
    quick: bool
    sender_process: bool | None


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench webhooks", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="smoke test: small counts, 1 round")
    p.add_argument("--events", type=int, help="events per round (default 20,000; quick 2,000)")
    p.add_argument("--rounds", type=int, help="measured rounds (default 5; quick 1)")
    p.add_argument("--rate", type=int, default=500, help="latency offered rate, events/s")
    p.add_argument("--latency-seconds", type=float, help="latency run (default 10; quick 1.5)")
    p.add_argument("--failures", type=int, help="failure-run events (default 10,000; quick 300)")
    p.add_argument(
        "--sender-process",
        choices=["auto", "on", "off"],
        default="auto",
        help="server.sender_process for tidings (default auto: on with more than one core)",
    )
    a = p.parse_args(list(argv))
    quick: bool = a.quick
    events = a.events if a.events is not None else (2_000 if quick else 20_000)
    rounds = a.rounds if a.rounds is not None else (1 if quick else 5)
    failures = a.failures if a.failures is not None else (300 if quick else 10_000)
    if events < BATCH or rounds < 1 or failures < 1 or a.rate < 1:
        p.error(f"--events must be >= {BATCH}; --rounds, --failures and --rate >= 1")
    return Options(
        events=events,
        rounds=rounds,
        warmup=max(BATCH, events // 10),
        rate=a.rate,
        latency_seconds=a.latency_seconds or (1.5 if quick else 10.0),
        failures=failures,
        round_limit=30.0 if quick else ROUND_LIMIT,
        # An open circuit pauses an endpoint 5 s, doubling while its probes fail.
        failure_limit=30.0 if quick else 300.0,
        quick=quick,
        sender_process={"auto": None, "on": True, "off": False}[a.sender_process],
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: what uvicorn runs `tidings serve` on, so the floor gets it too."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _dist(values: list[float]) -> str:
    if not values:
        return "no figure"
    return (
        f"p50 {fmt_duration(percentile(values, 50))} · p99 {fmt_duration(percentile(values, 99))}"
        f" · max {fmt_duration(values[-1])}"
    )


@dataclass
class Results:
    rounds: int = 0
    contenders: list[tuple[Contender[Round], Side]] = field(default_factory=list)
    latency: Latency | str = "not run"
    failures: Failures | str = "not run"
    stores: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sizes: tuple[int, int] = (0, 0)  # body bytes, header count


def run(opts: Options, workdir: Path, progress: Callable[[str], None]) -> Results:
    res = Results()
    secret = generate_secret()
    signer = Signer([secret])
    sample_body, sample_headers = signed_request(0, signer)
    res.sizes = (len(sample_body), len(sample_headers))
    loop = _new_loop()
    procs: list[Process] = []
    session: aiohttp.ClientSession | None = None

    async def open_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))

    def serve(name: str, endpoint: dict[str, Any]) -> Process:
        p, store = start_tidings(
            workdir, name, {"secret": secret, **endpoint}, sender_process=opts.sender_process
        )
        procs.append(p)
        res.stores.append(store)
        assert session is not None
        loop.run_until_complete(p.ready(session, "/health"))
        return p

    try:
        session = loop.run_until_complete(open_session())
        recv = start_receiver(workdir)
        procs.append(recv)
        loop.run_until_complete(recv.ready(session, "/_bench/count"))
        b = Bench(session, recv)
        hook = recv.url + "/hook"
        endpoint = {"url": hook, "events": [TYPE, LAT_TYPE], "max_in_flight": CONCURRENCY}
        tidings = serve("deliver", endpoint)
        progress("receiver and tidings serve are up")

        main = contender(
            loop,
            "tidings",
            "tidings",
            {"tidings serve": tidings, "receiver": recv, "posters (bench)": None},
            lambda r, s: tidings_round(b, r, s, tidings, opts.round_limit),
        )
        floor = contender(
            loop,
            "aiohttp floor",
            "floor",
            {"aiohttp client (bench)": None, "receiver": recv},
            lambda r, s: floor_round(b, r, s, hook),
        )
        res.contenders = [main, floor]
        gc.collect()
        res.rounds = run_rounds(
            [main[0], floor[0]],
            lambda _i: make_round(opts.events, signer),
            warmup=make_round(opts.warmup, signer),
            min_rounds=opts.rounds,
            max_rounds=opts.rounds,
            budget=float("inf"),
            progress=progress,
        )
        res.errors += main[0].errors + floor[0].errors
        progress("latency run")
        try:
            lat = loop.run_until_complete(
                measure_latency(b, tidings, opts.rate, opts.latency_seconds)
            )
        except Exception as exc:
            res.latency = f"failed: {exc}"
            res.errors.append(f"latency run failed: {exc}")
        else:
            res.latency = lat
            if lat.error:
                res.errors.append(lat.error)
        tidings.stop()
        progress("failure run")
        flaky = {
            "url": recv.url + "/flaky",
            "events": [FLAKY_TYPE],
            "max_in_flight": CONCURRENCY,
            **RETRY,
        }
        tidings = serve("failures", flaky)
        try:
            f = loop.run_until_complete(
                measure_failures(b, tidings, opts.failures, opts.failure_limit)
            )
        except Exception as exc:
            res.failures = f"failed: {exc}"
            res.errors.append(f"failure run failed: {exc}")
        else:
            res.failures = f
            if f.problem:
                res.errors.append(f.problem)
    finally:
        if session is not None:
            loop.run_until_complete(session.close())
        for p in reversed(procs):
            p.stop()
        loop.close()
    return res


def report(opts: Options, res: Results, workdir: Path, load_start: str) -> list[str]:
    body, nheaders = res.sizes
    lines = [
        f"bench webhooks{' --quick' if opts.quick else ''}: {res.rounds} round"
        f"{'s' if res.rounds != 1 else ''} of {opts.events:,} events per contender (+1 warm-up "
        f"round of {opts.warmup:,}), interleaved, order rotated each round; figures are "
        "deliveries/s from the first request (floor) or first POST /events (tidings) to the "
        "last request's arrival at the receiver",
        f"event: seed format {{event_type, timestamp, data}}, data {payload(0)}; body {body} "
        f"bytes, signed (Standard Webhooks, HMAC-SHA256), {nheaders} headers",
        f"receiver: raw ASGI app (bench.webhooks:receiver) under uvicorn, 1 worker, no access "
        f"log, its own process on {HOST}; records time.time() on arrival, tidings-event-id, "
        "webhook-id, status",
        f"floor: aiohttp ClientSession, TCPConnector(limit={CONCURRENCY}), {CONCURRENCY} "
        "concurrent posters, keep-alive, requests built (and signed) before the clock",
        f"tidings: python -m tidings --config X serve (own process); server.workers "
        f"{CONCURRENCY}, server.sender_process "
        f"{'auto' if opts.sender_process is None else str(opts.sender_process).lower()}; "
        f"one signed endpoint, max_in_flight {CONCURRENCY}, events.queue_size "
        f"{QUEUE_SIZE:,}; POST /events {BATCH} events per request, {POSTERS} concurrent posters",
        f"stores: {', '.join(res.stores)} (a fresh one per tidings process, SQLite defaults: "
        f"WAL, synchronous=FULL; in {workdir})",
        *machine_lines(["tidings", "aiohttp", "uvicorn", "starlette", "msgspec", "uvloop"]),
        f"load average (1, 5, 15 min): {load_start} at start, {_load()} at end",
        "",
    ]
    if len(res.contenders) == 2 and res.contenders[0][0].rates:
        (main, ts), (floor, fs) = res.contenders
        lines.append(f"webhooks.deliver: {main.summary()} · {main.versus(floor)}")
        lines.append(
            "webhooks.deliver.rounds: in run order (tidings' store grows by each round): tidings "
            f"{', '.join(fmt_rate(x) for x in main.rates)}; floor "
            f"{', '.join(fmt_rate(x) for x in floor.rates)}"
        )
        ingest = sorted(ts.ingest_rates)
        lines += [
            f"webhooks.deliver.ingest: POST /events accepted {fmt_rate(ingest[len(ingest) // 2])}"
            f"/s (min {fmt_rate(ingest[0])}, max {fmt_rate(ingest[-1])}), first POST sent to "
            "last 202, while delivery runs alongside",
            f"webhooks.deliver.cpu: CPU per event (share of one core) in tidings rounds: "
            f"{ts.cpu_line()}; in floor rounds: {fs.cpu_line()}",
            f"webhooks.floor.latency: aiohttp round trip at concurrency {CONCURRENCY} "
            f"(saturated): {_dist(sorted(fs.latencies))}",
        ]
    else:
        lines.append("webhooks.deliver: no figure")
    lat = res.latency
    if isinstance(lat, Latency):
        lines.append(
            f"webhooks.latency: offered {fmt_rate(opts.rate)}/s paced (achieved "
            f"{fmt_rate(lat.achieved)}/s), {lat.count:,} single-event POST /events; POST sent -> "
            f"first attempt arrives at the receiver (time.time() in both processes, same "
            f"machine): {_dist(lat.delays)}; POST /events round trip: {_dist(lat.round_trips)}"
        )
    else:
        lines.append(f"webhooks.latency: skipped ({lat})")
    f = res.failures
    if isinstance(f, Failures):
        rate = f.delivered / f.seconds if f.seconds > 0 else 0.0
        lines.append(
            f"webhooks.failures: {f.events:,} events, receiver answers 500 to {FAIL_RATE:.0%} at "
            f"random; retry_delay {RETRY['retry_delay']}s, max_delay {RETRY['max_delay']}s, "
            f"max_retries {RETRY['max_retries']}: delivered {f.delivered:,}, lost "
            f"{f.undelivered:,}, duplicate message ids among 200s {f.duplicate_ok:,}, attempts "
            f"{f.attempts:,} ({f.failed:,} answered 500; {f.attempts / max(1, f.events):.2f} per "
            f"event), message id changed across retries for {f.id_changed:,} events, dead in "
            f"tidings {f.dead:,}; all delivered in {f.seconds:.1f}s ({fmt_rate(rate)}/s), of "
            f"which {sum(f.pauses):.1f}s in {len(f.pauses)} pauses of >= 1 s with no request "
            "sent (an open circuit breaker holds an endpoint 5 s)"
        )
    else:
        lines.append(f"webhooks.failures: skipped ({f})")
    lines += ["", "goals (the webhook issue; printed, not asserted):"]
    if len(res.contenders) == 2 and res.contenders[0][0].rates and res.contenders[1][0].median:
        ratio = res.contenders[0][0].median / res.contenders[1][0].median
        lines.append(f"  tidings >= 0.5 of the aiohttp floor: {ratio:.2f} {_goal(ratio >= 0.5)}")
    else:
        lines.append("  tidings >= 0.5 of the aiohttp floor: no figure")
    if isinstance(lat, Latency) and lat.delays:
        p99 = percentile(lat.delays, 99)
        lines.append(
            f"  accept -> first attempt p99 < 50 ms at {fmt_rate(opts.rate)}/s: p50 "
            f"{fmt_duration(percentile(lat.delays, 50))}, p99 {fmt_duration(p99)} "
            f"{_goal(p99 < 0.050)}"
        )
    if isinstance(f, Failures):
        lines.append(f"  failure run, none lost, no duplicate 200s: {_goal(f.problem is None)}")
    lines.append("")
    if res.errors:
        lines.append(f"DELIVERY ERRORS ({len(res.errors)}): these figures are not valid")
        lines += [f"  {e}" for e in res.errors[:20]]
    else:
        lines.append(
            "delivery check: every event arrived exactly once with a 200 (failure run: one 200 "
            "per message id, none lost), every round"
        )
    return lines


def main(argv: Sequence[str] = ()) -> int:
    opts = parse(argv)
    t_start = perf_counter()
    load_start = _load()
    previous = signal.signal(signal.SIGTERM, _terminate)  # unwind: the finally stops children

    def progress(msg: str) -> None:
        if not opts.quick:
            print(f"{msg} (at {perf_counter() - t_start:.1f}s)", file=sys.stderr, flush=True)

    try:
        with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
            res = run(opts, Path(tmp), progress)
            lines = report(opts, res, Path(tmp), load_start)
    finally:
        signal.signal(signal.SIGTERM, previous)
    lines.append(f"total time {perf_counter() - t_start:.1f}s")
    print("\n".join(lines))
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
