"""Sending webhook requests: in the worker's process, or in a child process of its own.

The HTTP client is most of a delivery's CPU time. In one process it shares one core (one GIL)
with ingestion, the store and the delivery bookkeeping; ``ProcessSender`` moves it to a child
process, so a second core sends while the first accepts and records. The worker does not care
which it has: both take a ``Request`` and give back a ``Response``, never an exception.

The child speaks length-prefixed msgpack frames on its stdin and stdout: a frame holds a list of
requests (or responses) so a busy loop pays one write per batch. If the child dies, every request
it held comes back as a failed attempt (retried later with the same message id: at-least-once),
and the next request starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import msgspec

from tidings.webhooks.guard import GuardedResolver, UnsafeURL, resolve_checked

__all__ = ["LocalSender", "ProcessSender", "Request", "Response", "Sender"]

log = logging.getLogger("tidings.webhooks.sender")

RESPONSE_BODY_MAX = 2048
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Request(msgspec.Struct, array_like=True, frozen=True):
    id: int
    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float
    guarded: bool  # API endpoints: the SSRF guard checks every address before connecting
    endpoint: str = ""  # requests of one endpoint share its in-flight bound ...
    limit: int = 0  # ... of this many (0: none)


class Response(msgspec.Struct, array_like=True, frozen=True):
    id: int
    status: int | None = None
    text: str | None = None
    error: str | None = None
    retry_after: str | None = None  # the header as sent; the worker interprets it
    permanent: bool = False  # retrying cannot help (the SSRF guard refused the address)
    duration: float = 0.0
    ours: bool = False  # the failure was tidings' (its sender died), not the endpoint's
    unsent: bool = False  # never sent (the sender was closing): hand the delivery back


class Sender:
    """What the worker needs: ``start``, ``send``, ``close``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def send(self, request: Request) -> Response:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def stop_sending(self) -> None:
        """From now on, requests not yet on the wire come back ``unsent``."""
        raise NotImplementedError


class LocalSender(Sender):
    """aiohttp in this process: keep-alive connections, redirects never followed."""

    def __init__(self, concurrency: int, allow_networks: Sequence[Network] = ()) -> None:
        self.concurrency = concurrency
        self.allow_networks = tuple(allow_networks)
        self._session: aiohttp.ClientSession | None = None
        self._guarded: aiohttp.ClientSession | None = None
        # Per endpoint: the worker queues requests ahead (so the next starts the moment one
        # ends, without a round trip to it); this bound keeps what is on the wire to the limit.
        self._slots: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self.closing = False  # set: requests still waiting for a slot are not sent

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector)
        guarded = aiohttp.TCPConnector(
            limit=self.concurrency, resolver=GuardedResolver(self.allow_networks)
        )
        self._guarded = aiohttp.ClientSession(connector=guarded)

    def stop_sending(self) -> None:
        self.closing = True

    async def close(self) -> None:
        self.closing = True
        for session in (self._session, self._guarded):
            if session is not None:
                await session.close()

    async def send(self, request: Request) -> Response:
        """One request; every way it can go wrong becomes an error text."""
        if not request.limit:
            return await self._send(request)
        slot = self._slots.get(request.endpoint)
        if slot is None or slot[0] != request.limit:
            slot = self._slots[request.endpoint] = (request.limit, asyncio.Semaphore(request.limit))
        async with slot[1]:
            if self.closing:
                return Response(request.id, unsent=True)
            return await self._send(request)

    async def _send(self, request: Request) -> Response:
        session = self._guarded if request.guarded else self._session
        assert session is not None, "LocalSender.start() was not called"
        t0 = time.perf_counter()
        try:
            if request.guarded:  # IP literals skip the resolver: check them here
                await resolve_checked(request.url, self.allow_networks)
            async with session.post(
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=request.timeout),
                allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(RESPONSE_BODY_MAX)
                return Response(
                    request.id,
                    status=resp.status,
                    text=raw.decode("utf-8", "replace") or None,
                    retry_after=resp.headers.get("Retry-After"),
                    duration=time.perf_counter() - t0,
                )
        except UnsafeURL as exc:
            error, permanent = str(exc), True
        except TimeoutError:
            error, permanent = f"timed out after {request.timeout:g}s", False
        except aiohttp.ClientConnectorError as exc:
            error, permanent = f"cannot connect: {exc.os_error or exc}", False
        except (aiohttp.ClientError, OSError) as exc:
            error, permanent = f"{type(exc).__name__}: {exc}", False
        except Exception as exc:  # anything else (a header the client refuses, a bug) is a
            # failed attempt too: the worker records and retries it, it never hangs
            error, permanent = f"{type(exc).__name__}: {exc}", False
        return Response(
            request.id, error=error, permanent=permanent, duration=time.perf_counter() - t0
        )


_HEAD = struct.Struct(">I")
_MAX_FRAME = 256 * 1024 * 1024
_requests = msgspec.msgpack.Decoder(list[Request])
_responses = msgspec.msgpack.Decoder(list[Response])
_pack = msgspec.msgpack.Encoder()


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readexactly(_HEAD.size)
        (size,) = _HEAD.unpack(head)
        if size > _MAX_FRAME:
            raise ValueError(f"sender frame of {size} bytes")
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None


class _Batcher:
    """Collects outgoing messages and writes them as one frame per loop iteration.

    A message that cannot be encoded goes to ``unsendable`` instead of taking the rest of its
    frame down with it; once the pipe is closed (the other side is gone) messages are dropped,
    as there is no one left to read them.
    """

    def __init__(
        self,
        write: asyncio.StreamWriter | asyncio.WriteTransport,
        unsendable: Callable[[Any, Exception], None] | None = None,
    ) -> None:
        self._write = write
        self._unsendable = unsendable
        self._items: list[Request] | list[Response] = []
        self._scheduled = False

    def add(self, item: Request | Response) -> None:
        self._items.append(item)  # type: ignore[arg-type]
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        items, self._items = self._items, []
        if not items or self._write.is_closing():
            return
        try:
            frame = _pack.encode(items)
        except Exception:  # find the culprit(s), send the rest
            good = []
            for item in items:
                try:
                    _pack.encode(item)
                except Exception as exc:
                    if self._unsendable is not None:
                        self._unsendable(item, exc)
                else:
                    good.append(item)
            if not good:
                return
            frame = _pack.encode(good)
        try:
            self._write.write(_HEAD.pack(len(frame)) + frame)
        except (OSError, RuntimeError):  # closed under us (uvloop raises RuntimeError)
            return


class ProcessSender(Sender):
    """A child process running a ``LocalSender``; restarted on demand if it dies."""

    def __init__(self, concurrency: int, allow_networks: Sequence[Network] = ()) -> None:
        self.concurrency = concurrency
        self.allow_networks = tuple(allow_networks)
        self._proc: asyncio.subprocess.Process | None = None
        self._out: _Batcher | None = None
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._closing = False

    async def start(self) -> None:
        self._starting = asyncio.Lock()
        await self._spawn()

    async def _spawn(self) -> None:
        args = [sys.executable, "-m", "tidings.webhooks.sender", str(self.concurrency)]
        args += [str(n) for n in self.allow_networks]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None
        # The child says it is ready (an empty frame) once its HTTP client is up, so the first
        # requests do not wait on its start-up and a child that cannot start is an error here.
        try:
            hello = await asyncio.wait_for(_read_frame(proc.stdout), 30)
        except TimeoutError:
            hello = None
        if hello != b"":
            proc.kill()
            await proc.wait()
            raise RuntimeError(
                f"the webhook sender process did not start (exit {proc.returncode}); see its "
                "error above, or set server.sender_process: false"
            )
        self._proc = proc
        self._out = _Batcher(proc.stdin, self._unsendable)
        self._reader = asyncio.ensure_future(self._read(proc))
        log.info("webhook sender process %d started", proc.pid)

    def _unsendable(self, request: Request, exc: Exception) -> None:
        """A request the pipe cannot carry is a failed attempt, not a request waiting forever."""
        future = self._pending.pop(request.id, None)
        if future is not None and not future.done():
            error = f"cannot be handed to the sender process: {type(exc).__name__}: {exc}"
            future.set_result(Response(request.id, error=error))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                frame = await _read_frame(proc.stdout)
                if frame is None:
                    break
                for response in _responses.decode(frame):
                    future = self._pending.pop(response.id, None)
                    if future is not None and not future.done():
                        future.set_result(response)
        except Exception as exc:  # a garbled frame: start over with a new child
            log.error("webhook sender process %d: unreadable answer: %s", proc.pid, exc)
            if proc.returncode is None:
                proc.kill()
        finally:
            # However reading ended, every request the child held is answered (failed, retried
            # later with the same message id) so that no delivery waits for good.
            code = await proc.wait()
            if not self._closing:
                log.error("webhook sender process %d exited (%s); starting another", proc.pid, code)
            lost, self._pending = self._pending, {}
            for request_id, future in lost.items():
                if not future.done():
                    future.set_result(
                        Response(
                            request_id,
                            error="the sender process died during the request",
                            ours=True,
                        )
                    )
            if self._proc is proc:
                self._proc = None

    async def send(self, request: Request) -> Response:
        if self._proc is None:
            assert self._starting is not None, "ProcessSender.start() was not called"
            async with self._starting:
                if self._proc is None and not self._closing:
                    await self._spawn()
        if self._proc is None or self._out is None or self._closing:
            return Response(request.id, unsent=True)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        self._out.add(request)
        return await future

    def stop_sending(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()  # the child finishes what is on the wire and sends nothing new

    async def close(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        if not proc.stdin.is_closing():
            proc.stdin.close()  # the child finishes what is on the wire, answers, and exits
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class _ParentPipe(asyncio.Protocol):
    """Our stdout; the event loop reports the parent closing its end (it died) as a lost
    connection."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()


async def _child(concurrency: int, allow: list[Network]) -> None:
    """The sender process: requests in on stdin, responses out on stdout, until stdin closes.

    Stdin closes in two cases. The parent is stopping: it still reads stdout, so requests on the
    wire are finished and answered. Or the parent died (``kill -9``): nobody will read an
    answer, so requests in flight are dropped (their leases run out and a new service sends
    them again) and the process exits at once, quietly.
    """
    parent = os.getppid()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_MAX_FRAME)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, pipe = await loop.connect_write_pipe(_ParentPipe, sys.stdout.buffer)
    out = _Batcher(transport)
    sender = LocalSender(concurrency, allow)
    await sender.start()
    transport.write(_HEAD.pack(0))  # ready
    tasks: set[asyncio.Task[None]] = set()

    def parent_gone() -> bool:
        return pipe.gone.is_set() or os.getppid() != parent

    async def one(request: Request) -> None:
        try:
            response = await sender.send(request)
        except Exception as exc:  # never leave the parent waiting for an answer
            error = f"the sender process failed: {type(exc).__name__}: {exc}"
            response = Response(request.id, error=error, ours=True)
        out.add(response)

    while True:
        frame = await _read_frame(reader)
        if frame is None:
            sender.closing = True  # the parent is done: finish what is on the wire, no more
            break
        for request in _requests.decode(frame):
            task = asyncio.ensure_future(one(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    gone = asyncio.ensure_future(pipe.gone.wait())
    while tasks and not parent_gone():
        # getppid() is checked as well: the pipe may close a moment after stdin does
        await asyncio.wait({*tasks, gone}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if tasks:  # the parent is gone: nobody to answer
        for task in tasks:
            task.cancel()
        await asyncio.wait(set(tasks))
    else:
        await asyncio.sleep(0)  # let the last responses be written
    await sender.close()
    transport.close()


def main(argv: Sequence[str]) -> None:
    # Ctrl-C (and a service manager's SIGTERM) reach the whole process group; the parent
    # decides when this child ends by closing its stdin (or by dying: the pipe closes too),
    # so requests in flight still get their answers recorded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    concurrency = int(argv[0])
    allow = [ipaddress.ip_network(a, strict=False) for a in argv[1:]]
    try:
        import uvloop  # noqa: PLC0415 - optional, faster when installed
    except ImportError:
        asyncio.run(_child(concurrency, allow))
    else:
        uvloop.run(_child(concurrency, allow))


if __name__ == "__main__":
    main(sys.argv[1:])
