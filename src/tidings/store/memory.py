"""The in-process event store: the full store semantics without a database, for tests and demos.

``memory://`` is a fresh store per ``open_store`` call; ``memory://name`` is shared by every
opener in the process (as a second process would share a database file), and lives as long as
the process. Events are stored as their decoded JSON round trip, so what a test reads back is
exactly what a database backend would return.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from tidings.event import Event, decode, encode
from tidings.retry import RetryPolicy
from tidings.store import AfterCommit, as_events
from tidings.store.base import (
    ConcurrencyError,
    Criteria,
    DuplicateEvent,
    Recorded,
    StoreError,
    StoreSubscription,
    check_criteria,
    check_page,
)
from tidings.store.chain import chain_values
from tidings.store.subscription import (
    DEFAULT_PAGE_SIZE,
    ErrorCallback,
    PageTxHandler,
    PollingSubscription,
    TxHandler,
    Wakeup,
)

__all__ = ["MemoryStore"]


class _Data:
    """One store's state; shared by every MemoryStore opened on the same ``memory://name``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.records: list[Recorded] = []  # position == index + 1
        self.streams: dict[str, list[Recorded]] = {}
        self.ids: set[str] = set()
        self.checkpoints: dict[str, int] = {}
        self.invalidated = 0  # events a reorg invalidated: while 0, read_all is a slice
        self.wakeup = Wakeup()


_named: dict[str, _Data] = {}
_named_lock = threading.Lock()


class MemoryStore:
    """Thread-safe, in-process EventStore. See the module docstring for ``memory://name``."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        publish: Callable[[Event], Any] | Any | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise StoreError(f"MemoryStore: expected a memory:// URL, got {url!r}")
        self.url = url
        name = (parts.netloc + parts.path).strip("/")
        if name:
            with _named_lock:
                self._data = _named.setdefault(name, _Data())
        else:
            self._data = _Data()
        self._publisher = AfterCommit(publish)
        self._poll_interval = poll_interval
        self._subscriptions: list[PollingSubscription] = []
        self._closed = False

    # ------------------------------------------------------------------ writes

    def append(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
    ) -> list[Recorded]:
        """Store ``events`` atomically: all or none, versions and positions without gaps."""
        batch = as_events(events)
        self._check_open()
        copies = [decode(encode(e)) for e in batch]  # validates and isolates before any write
        for e in batch:
            chain_values(e)  # a bad chain coordinate is refused here, as by the databases
        data = self._data
        with data.lock:
            if stream is not None:
                current = len(data.streams.get(stream, ()))
                if expected_version is not None and expected_version != current:
                    raise ConcurrencyError(stream, expected_version, current)
            elif expected_version is not None:
                raise ValueError("append(expected_version=...) needs a stream=")
            if not batch:
                return []
            seen: set[str] = set()
            for e in batch:
                if e.id in data.ids or e.id in seen:
                    raise DuplicateEvent(e.id)
                seen.add(e.id)
            now = datetime.now(UTC)
            base = len(data.records)
            version0 = len(data.streams.get(stream, ())) if stream is not None else 0
            out: list[Recorded] = []
            for i, (original, copy) in enumerate(zip(batch, copies, strict=True)):
                version = version0 + i + 1 if stream is not None else None
                stored = Recorded(base + i + 1, copy, stream, version, now)
                data.records.append(stored)
                if stream is not None:
                    data.streams.setdefault(stream, []).append(stored)
                data.ids.add(original.id)
                out.append(Recorded(base + i + 1, original, stream, version, now))
            self._publisher.enqueue(batch)
        data.wakeup.notify()
        self._publisher.drain()
        return out

    async def aappend(
        self,
        events: Event | Sequence[Event],
        *,
        stream: str | None = None,
        expected_version: int | None = None,
    ) -> list[Recorded]:
        return await asyncio.to_thread(
            self.append, events, stream=stream, expected_version=expected_version
        )

    # ------------------------------------------------------------------ reads

    def read_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]:
        check_page(after_position, limit)
        if not include_invalidated and self._data.invalidated:
            return self.load(Criteria(after_position=after_position, limit=limit))
        with self._data.lock:
            return self._data.records[after_position : after_position + limit]

    async def aread_all(
        self, after_position: int = 0, limit: int = 1000, *, include_invalidated: bool = False
    ) -> list[Recorded]:
        return self.read_all(after_position, limit, include_invalidated=include_invalidated)

    def load(self, criteria: Criteria) -> list[Recorded]:
        check_criteria(criteria)
        with self._data.lock:
            if criteria.stream is not None:
                candidates = self._data.streams.get(criteria.stream, [])
            else:
                candidates = self._data.records[criteria.after_position :]
            out: list[Recorded] = []
            for rec in candidates:
                if criteria.matches(rec):
                    out.append(rec)
                    if criteria.limit is not None and len(out) >= criteria.limit:
                        break
            return out

    async def aload(self, criteria: Criteria) -> list[Recorded]:
        return self.load(criteria)

    def load_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        with self._data.lock:
            recs = self._data.streams.get(stream, [])[max(from_version, 1) - 1 :]
            return [rec for rec in recs if not rec.invalidated]

    async def aload_stream(self, stream: str, from_version: int = 1) -> list[Recorded]:
        return self.load_stream(stream, from_version)

    def stream_version(self, stream: str) -> int:
        with self._data.lock:
            return len(self._data.streams.get(stream, ()))

    def count(self, criteria: Criteria | None = None) -> int:
        """How many events ``criteria`` matches (limit ignored); replay uses it for progress."""
        criteria = criteria or Criteria()
        with self._data.lock:
            return sum(1 for rec in self._data.records if criteria.matches(rec))

    def head(self) -> int:
        with self._data.lock:
            return len(self._data.records)

    # ------------------------------------------------------------------ chains

    def invalidate_chain(
        self, chain_id: int, after_block: int, before_position: int | None = None
    ) -> list[Recorded]:
        """Mark the events of ``chain_id`` above ``after_block`` (recorded before
        ``before_position`` when given) invalidated; return those newly marked."""
        data = self._data
        out: list[Recorded] = []
        with data.lock:
            end = len(data.records) if before_position is None else before_position - 1
            for i, rec in enumerate(data.records[: max(end, 0)]):
                chain, block = chain_values(rec.event)[:2]
                if rec.invalidated or chain != chain_id or block is None or block <= after_block:
                    continue
                marked = msgspec.structs.replace(rec, invalidated=True)
                data.records[i] = marked
                if rec.stream is not None and rec.version is not None:
                    data.streams[rec.stream][rec.version - 1] = marked
                out.append(marked)
            data.invalidated += len(out)
        return out

    def chain_blocks(
        self, chain_id: int, first: int, last: int, before_position: int | None = None
    ) -> list[tuple[int, str | None]]:
        """The blocks ``(number, hash)`` of ``chain_id``'s valid events from ``first`` to
        ``last`` (recorded before ``before_position`` when given), in block order."""
        found: set[tuple[int, str | None]] = set()
        with self._data.lock:
            end = len(self._data.records) if before_position is None else before_position - 1
            for rec in self._data.records[: max(end, 0)]:
                chain, block, block_hash = chain_values(rec.event)[:3]
                if chain != chain_id or block is None or rec.invalidated:
                    continue
                if first <= block <= last:
                    found.add((block, block_hash))
        return sorted(found, key=lambda b: (b[0], b[1] or ""))

    # ------------------------------------------------------------------ subscriptions

    def subscribe(
        self,
        criteria: Criteria,
        handler: Callable[..., Any],
        *,
        name: str,
        retry: RetryPolicy | None = None,
        on_error: ErrorCallback | None = None,
        transactional: bool = False,
        batch: bool = False,
        poll_interval: float | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> PollingSubscription:
        """Catch up from ``name``'s checkpoint, then follow live (see tidings.store.subscription).

        With ``transactional=True`` the handler gets ``(recorded, None)``: there is no database
        connection, but the checkpoint still only moves when the handler returns.
        ``batch=True`` hands it a list of events (a page) instead of one.
        """
        self._check_open()
        self._subscriptions = [s for s in self._subscriptions if s.running]
        if any(s.name == name for s in self._subscriptions):
            raise StoreError(
                f"subscription {name!r} is already running on this store; stop it first "
                "(two consumers of one checkpoint would overwrite each other)"
            )
        sub = PollingSubscription(
            self,
            criteria,
            handler,
            name=name,
            wakeup=self._data.wakeup,
            retry=retry,
            on_error=on_error,
            transactional=transactional,
            batch=batch,
            poll_interval=self._poll_interval if poll_interval is None else poll_interval,
            page_size=page_size,
        )
        self._subscriptions.append(sub)
        return sub

    def subscriptions(self) -> list[StoreSubscription]:
        return list(self._subscriptions)

    def checkpoint(self, name: str) -> int:
        with self._data.lock:
            return self._data.checkpoints.get(name, 0)

    def save_checkpoint(self, name: str, position: int) -> None:
        with self._data.lock:
            self._data.checkpoints[name] = position

    def reset_subscription(self, name: str, position: int = 0) -> None:
        """Move ``name``'s checkpoint (stop the subscription first; it re-reads on start)."""
        if position < 0:
            raise ValueError(f"reset_subscription: position must be >= 0, got {position}")
        self.save_checkpoint(name, position)

    def handle_in_transaction(self, name: str, rec: Recorded, handler: TxHandler) -> None:
        with self._data.lock:
            handler(rec, None)
            self._data.checkpoints[name] = rec.position

    def handle_page_in_transaction(
        self, name: str, page: list[Recorded], handler: PageTxHandler
    ) -> None:
        with self._data.lock:
            done = self._data.checkpoints.get(name, 0)
            todo = [rec for rec in page if rec.position > done]
            if todo:
                handler(todo, None)
                self._data.checkpoints[name] = todo[-1].position

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop this store's subscriptions. Named data stays for other openers."""
        self._closed = True
        for sub in self._subscriptions:
            sub.stop()
        self._subscriptions.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url!r} is closed; open_store() it again")

    def __repr__(self) -> str:
        return f"<MemoryStore {self.url!r} events={len(self._data.records)}>"
