"""The relay: publishes committed outbox rows to a target, then deletes (or marks) them.

One background thread per relay runs the cycle: claim a batch (oldest first; see
``tidings.outbox.postgres`` and ``tidings.outbox.sqlite`` for how claims keep order per key
with any number of relays), publish it, finish it. When nothing is left it waits for a commit
(LISTEN on PostgreSQL, an in-process wake-up on SQLite) or ``poll_interval``, whichever comes
first. Delivery is at-least-once: a relay that dies between its publish and its finish leaves
the rows to be published again, with the same event ids for consumers to de-duplicate on.

A target that fails (down broker, timeout) gets the batch back unpublished; the relay waits
with exponential backoff and tries again, keeping every row. It logs once when the target goes
down and once when it is back, not on every attempt; a lost database connection is handled the
same way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from tidings.outbox.claims import Batch, Claims
from tidings.outbox.targets import Target, resolve
from tidings.retry import RetryPolicy
from tidings.urls import redact_url

__all__ = ["DEFAULT_BACKOFF", "Relay", "RelayStats"]

log = logging.getLogger("tidings.outbox")

#: Waits after a failed publish or a lost database: quick at first, then every few seconds.
DEFAULT_BACKOFF = RetryPolicy(max_retries=0, initial_delay=0.1, max_delay=5.0, jitter=0.2)
PURGE_EVERY = 60.0  # seconds between retention sweeps (mark mode)
PURGE_BATCH = 10_000
WAIT_SLICE = 0.25  # a waiting relay checks its stop flag this often

State = Literal["starting", "running", "target down", "database down", "stopped"]


@dataclass(slots=True)
class RelayStats:
    published: int = 0  # events handed to the target (and their rows finished)
    batches: int = 0
    failures: int = 0  # failed attempts (publish or database)


class Relay:
    """Publish committed outbox rows of the database at ``url`` to ``target``.

    ``target``: a Bus, an event store, a Transport or ``tidings.publishers`` publisher, a URL
    (``logging``, ``memory``, ``redis://…``, ``kafka://…``; ``store+sqlite:///events.db`` for a
    store), a callable taking one event, or a list of these (each gets every batch, in
    order). ``on_publish`` deletes published rows (``"delete"``) or marks them (``"mark"``),
    kept ``retention`` seconds. ``lease`` (SQLite) is how long a claim stays with a relay that
    stopped answering. ``migrate=True`` creates the outbox table first (tests, single-process
    tools); deployments create it with their migrations (see ``tidings.outbox.schema``).
    """

    def __init__(
        self,
        url: str,
        target: Any,
        *,
        batch_size: int = 500,
        poll_interval: float | None = None,
        on_publish: Literal["delete", "mark"] = "delete",
        retention: float = 7 * 86400.0,
        backoff: RetryPolicy = DEFAULT_BACKOFF,
        publish_timeout: float = 30.0,
        lease: float = 60.0,
        connect_timeout: float = 5.0,
        migrate: bool = False,
        name: str | None = None,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"Relay url: expected postgresql://… or sqlite:///…, got {url!r:.80}")
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres", "sqlite"):
            raise ValueError(
                f"Relay url {redact_url(url)!r}: the outbox lives in PostgreSQL "
                "(postgresql://…) or SQLite (sqlite:///file.db)"
            )
        if on_publish not in ("delete", "mark"):
            raise ValueError(f"Relay on_publish: expected 'delete' or 'mark', got {on_publish!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Relay batch_size: expected a whole number >= 1, got {batch_size!r}")
        if publish_timeout <= 0 or (scheme == "sqlite" and lease <= publish_timeout):
            raise ValueError(
                f"Relay: lease ({lease}s) must be longer than publish_timeout "
                f"({publish_timeout}s) > 0, or a slow publish would lose its claim"
            )
        self.url = url
        self.dialect = "sqlite" if scheme == "sqlite" else "postgresql"
        self.target: Target = resolve(target)
        self.batch_size = batch_size
        self.poll_interval = (
            poll_interval if poll_interval is not None else (0.1 if scheme == "sqlite" else 1.0)
        )
        self.mark = on_publish == "mark"
        self.retention = retention
        self.backoff = backoff
        self.publish_timeout = publish_timeout
        self.lease = lease
        self.connect_timeout = connect_timeout
        self.name = name or f"outbox-relay-{redact_url(url)}"
        self.stats = RelayStats()
        self.state: State = "stopped"
        self.last_error: str | None = None
        self._migrate = migrate
        self._claims: Claims | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._draining = threading.Event()
        self._drained = threading.Event()
        self._failures = 0
        self._down_since: float | None = None
        self._last_purge = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Relay:
        """Start the target and the background thread; raises if the target cannot start."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already started")
        if self._migrate:
            self._apply_schema()
        self.target.start()  # a broker that cannot be reached fails here, at start-up
        self.state = "starting"
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    async def astart(self) -> Relay:
        return await asyncio.to_thread(self.start)

    def stop(self, timeout: float = 5.0, *, drain: bool = True) -> bool:
        """Stop; with ``drain`` first publish what is pending (up to ``timeout`` seconds).

        Returns True when nothing committed before the call was left unpublished.
        """
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        drained = False
        if drain:
            self._draining.set()
            self._wake()
            drained = self._drained.wait(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        self._wake()
        thread.join(max(0.1, deadline - time.monotonic()))
        try:
            self.target.close(max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # the rows are finished or kept either way
            log.warning("%s: closing %s failed: %s", self.name, self.target.name, exc)
        self._thread = None
        self.state = "stopped"
        if drain and not drained:
            log.warning(
                "%s stopped before it published everything pending (%s); the rows stay in "
                "the outbox for the next relay",
                self.name,
                self.last_error or "time ran out",
            )
        return drained

    async def astop(self, timeout: float = 5.0, *, drain: bool = True) -> bool:
        return await asyncio.to_thread(self.stop, timeout, drain=drain)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        """State, counters and the last error, for /health endpoints and logs."""
        return {
            "relay": self.name,
            "target": self.target.name,
            "state": self.state,
            "ok": self.state in ("running", "starting"),
            "published": self.stats.published,
            "failures": self.stats.failures,
            "down_since": self._down_since,
            "last_error": self.last_error,
        }

    def pending(self) -> tuple[int, float]:
        """Rows not yet published, and the age in seconds of the oldest (a new connection)."""
        claims = self._open()
        try:
            return claims.pending()
        finally:
            claims.close()

    # ------------------------------------------------------------------ the cycle

    def _open(self) -> Claims:
        if self.dialect == "sqlite":
            from tidings.outbox.sqlite import SqliteClaims  # noqa: PLC0415

            return SqliteClaims(self.url, lease=self.lease, busy_timeout=self.connect_timeout)
        from tidings.outbox.postgres import PostgresClaims  # noqa: PLC0415

        return PostgresClaims(self.url, connect_timeout=self.connect_timeout)

    def _apply_schema(self) -> None:
        from tidings.outbox import schema  # noqa: PLC0415

        if self.dialect == "sqlite":
            import sqlite3  # noqa: PLC0415

            from tidings.store.sqlite import path_of  # noqa: PLC0415

            conn = sqlite3.connect(path_of(self.url))
            try:
                schema.apply(conn)
            finally:
                conn.close()
            return
        from tidings.store.migrate import connect  # noqa: PLC0415

        with connect(self.url, connect_timeout=self.connect_timeout) as pg:
            schema.apply(pg)

    def run_once(self) -> int:
        """One claim, publish and finish, in the calling thread (no background thread);
        returns how many events were published. The target must be started."""
        if self._claims is None:
            self._claims = self._open()
        return self._cycle(self._claims)

    def _cycle(self, claims: Claims) -> int:
        batch = claims.claim(self.batch_size)
        if batch is None:
            return 0
        try:
            if batch.events:
                self.target.publish(batch.events, self.publish_timeout)
        except Exception as exc:
            self._release(claims, batch)
            raise _TargetFailed(exc) from exc
        claims.finish(batch, self.mark)
        self.stats.published += len(batch.events)
        self.stats.batches += 1
        return len(batch.ids)

    @staticmethod
    def _release(claims: Claims, batch: Batch) -> None:
        try:
            claims.release(batch)
        except Exception as exc:  # the claim ends anyway (rollback on close, lease expiry)
            log.debug("outbox: releasing a claim failed: %s", exc)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never die silently
            log.critical("%s stopped on an unexpected error: %s", self.name, exc, exc_info=exc)
            self.state = "stopped"
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._claims is not None:
                self._claims.close()
                self._claims = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._claims is None:
                    self._claims = self._open()
                done = self._cycle(self._claims)
                self._maybe_purge(self._claims)
                self._ok()
                if done >= self.batch_size:
                    continue  # more is waiting
                if self._draining.is_set() and done == 0:
                    self._drained.set()
                    if self._stopping.wait(WAIT_SLICE):
                        return
                    continue
                self._wait(self._claims)  # a dead LISTEN connection raises here too
            except _TargetFailed as exc:
                self._failed("target down", exc.__cause__ or exc)
            except Exception as exc:
                if self._claims is not None:
                    self._claims.close()
                    self._claims = None
                self._failed("database down", exc)

    def _wait(self, claims: Claims) -> None:
        deadline = time.monotonic() + self.poll_interval
        while not self._stopping.is_set() and not self._draining.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or claims.wait(min(left, WAIT_SLICE)):
                return

    def _wake(self) -> None:
        claims = self._claims
        if claims is not None:
            claims.wake()

    def _ok(self) -> None:
        if self.state != "running":
            if self.state in ("target down", "database down"):
                log.warning(
                    "%s: %s is back after %.1fs; publishing what was kept",
                    self.name,
                    "the target" if self.state == "target down" else "the database",
                    time.monotonic() - (self._down_since or time.monotonic()),
                )
            self.state = "running"
            self._down_since = None
            self._failures = 0

    def _failed(self, state: State, exc: BaseException) -> None:
        self.stats.failures += 1
        self._failures += 1
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.last_error = f"{type(exc).__name__}: {reason}"
        delay = self.backoff.delay(min(self._failures, 30))
        if self.state != state:
            what = self.target.name if state == "target down" else self.url
            log.error(
                "%s: %s (%s: %s); rows stay in the outbox, retrying with backoff "
                "(next in %.2fs, at most every %.1fs); this is logged once until it recovers",
                self.name,
                state,
                redact_url(what),
                self.last_error,
                delay,
                self.backoff.max_delay,
            )
            self.state = state
            self._down_since = time.monotonic()
        self._stopping.wait(delay)

    def _maybe_purge(self, claims: Claims) -> None:
        if not self.mark:
            return
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        removed = claims.purge(self.retention, PURGE_BATCH)
        if removed:
            log.info(
                "%s: removed %d published rows older than %gs", self.name, removed, self.retention
            )


class _TargetFailed(Exception):
    """The target refused or failed a batch (the batch was released)."""
