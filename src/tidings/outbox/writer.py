"""The writing half of the outbox: events go into ``tidings_outbox`` in the caller's transaction.

``Outbox.add(conn, event)`` takes the application's own connection (psycopg, sqlite3, a
SQLAlchemy ``Connection``) or SQLAlchemy ``Session`` / ``AsyncSession``, so the event commits
with the business rows or not at all. Everything that can be wrong with an event (not an Event,
a type this outbox does not carry, data that is not JSON) is found before anything is written
and raised as ``OutboxError`` naming the event; on PostgreSQL the transaction is also failed in
the database, and a Session refuses to commit, so a caller that swallows the exception still
cannot commit its data without the event.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from tidings import context
from tidings.event import Event, EventError, encode
from tidings.outbox.queries import query
from tidings.topics import PatternError, compile_pattern

__all__ = ["Outbox", "OutboxError", "Row"]

Row = dict[str, Any]  # the insert's parameters: event_id, type, key, payload
_DIALECT = {"sqlite": "sqlite", "psycopg": "postgresql"}


class OutboxError(ValueError):
    """An event could not be written to the outbox; the message names the event."""


def _describe(event: Event) -> str:
    return f"event {event.type!r} (id {event.id})"


class Outbox:
    """Writes events in the application's transaction; see the module docstring.

    ``types`` (glob patterns) limits which event types this outbox carries: any other type is
    refused with an OutboxError, as a typo in a type name would otherwise publish to nowhere.
    ``metadata`` (default on) fills unset correlation, request, user, tenant and trace
    attributes from ``tidings.context`` (what the FastAPI middleware sets per request).
    """

    def __init__(self, *, types: Sequence[str] | None = None, metadata: bool = True) -> None:
        if isinstance(types, str):
            types = (types,)
        try:
            self._patterns = tuple(compile_pattern(t) for t in types or ())
        except PatternError as exc:
            raise OutboxError(f"Outbox(types=...): {exc}") from None
        self.types = tuple(types or ())
        self.metadata = metadata

    # ------------------------------------------------------------------ rows

    def row(self, event: Any) -> Row:
        """Check and encode one event as the insert's parameters, or raise OutboxError."""
        if not isinstance(event, Event):
            raise OutboxError(
                f"outbox: expected a tidings Event, got {type(event).__name__} ({event!r:.80}); "
                "declare it as class MyEvent(Event, type='my.event') with typed fields; "
                "nothing was written"
            )
        if self._patterns and not any(p.matches(event.type) for p in self._patterns):
            raise OutboxError(
                f"outbox: {_describe(event)} is not a type this outbox carries "
                f"(types={list(self.types)}); add its type to Outbox(types=...) or fix the "
                "type name; nothing was written"
            )
        if self.metadata:
            context.apply(event)
        try:
            payload = encode(event).decode()
        except EventError as exc:
            raise OutboxError(
                f"outbox: {_describe(event)} cannot be serialized: {exc}; nothing was written "
                "and the transaction must not commit"
            ) from None
        return {"event_id": event.id, "type": event.type, "key": event.key, "payload": payload}

    def rows(self, events: Iterable[Any]) -> list[Row]:
        return [self.row(e) for e in _flatten(events)]

    # ------------------------------------------------------------------ writing

    def add(self, conn: Any, *events: Event | Iterable[Event]) -> None:
        """Write ``events`` in ``conn``'s current transaction (see the module docstring).

        With a SQLAlchemy Session or AsyncSession the rows are written at its next flush (at
        the latest when it commits), so this call is the same for sync and asyncio sessions.
        """
        kind = _kind(conn)
        if kind in ("sa_session", "sa_connection", "sa_async_connection"):
            from tidings.outbox import sqlalchemy as sa_outbox  # noqa: PLC0415

            sa_outbox.add(self, conn, events, kind)
            return
        if kind == "psycopg_async":
            raise OutboxError(
                "outbox.add(): this is an asyncio psycopg connection; use "
                "`await outbox.aadd(conn, event)`"
            )
        try:
            rows = self.rows(events)
        except OutboxError as exc:
            if kind == "psycopg":
                _reject(conn, str(exc))
            raise
        if not rows:
            return
        _check_transaction(conn, kind)
        if len(rows) == 1:  # the common case: one statement, no executemany set-up
            conn.execute(query(_DIALECT[kind], "insert"), rows[0])
        elif kind == "sqlite":
            conn.executemany(query("sqlite", "insert"), rows)
        else:
            with conn.cursor() as cur:
                cur.executemany(query("postgresql", "insert"), rows)

    async def aadd(self, conn: Any, *events: Event | Iterable[Event]) -> None:
        """``add`` for asyncio connections: psycopg ``AsyncConnection``, SQLAlchemy
        ``AsyncConnection`` or ``AsyncSession`` (sync connections work too)."""
        kind = _kind(conn)
        if kind == "sa_async_connection":
            from tidings.outbox import sqlalchemy as sa_outbox  # noqa: PLC0415

            await sa_outbox.aadd(self, conn, events)
            return
        if kind != "psycopg_async":
            self.add(conn, *events)
            return
        try:
            rows = self.rows(events)
        except OutboxError as exc:
            await _areject(conn, str(exc))
            raise
        if not rows:
            return
        _check_transaction(conn, kind)
        async with conn.cursor() as cur:
            await cur.executemany(query("postgresql", "insert"), rows)


def _check_transaction(conn: Any, kind: str) -> None:
    """Refuse a connection in autocommit mode outside a transaction: the event would commit on
    its own, not with the business rows."""
    if kind == "sqlite":
        outside = conn.isolation_level is None and not conn.in_transaction
    else:
        import psycopg  # noqa: PLC0415

        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        outside = conn.autocommit and idle
    if outside:
        raise OutboxError(
            "outbox.add(): the connection is in autocommit mode and not in a transaction, so "
            "the event would commit on its own, apart from your data; write both inside one "
            "transaction (`with conn.transaction():` on psycopg, BEGIN on sqlite3)"
        )


def _flatten(events: Iterable[Any]) -> Iterable[Any]:
    for item in events:
        if isinstance(item, Event) or not isinstance(item, Iterable) or isinstance(item, str):
            yield item
        else:
            yield from item


def _kind(conn: Any) -> str:
    """Which family of connection ``conn`` is, by its class (drivers imported only if used)."""
    if isinstance(conn, sqlite3.Connection):
        return "sqlite"
    module = type(conn).__module__
    if module.startswith("psycopg"):
        import psycopg  # noqa: PLC0415

        if isinstance(conn, psycopg.AsyncConnection):
            return "psycopg_async"
        if isinstance(conn, psycopg.Connection):
            return "psycopg"
    if module.startswith("sqlalchemy"):
        from tidings.outbox import sqlalchemy as sa_outbox  # noqa: PLC0415

        kind = sa_outbox.kind(conn)
        if kind is not None:
            return kind
    raise OutboxError(
        f"outbox: cannot write through a {type(conn).__module__}.{type(conn).__name__}; pass "
        "the connection of your transaction: a psycopg or sqlite3 connection, or a SQLAlchemy "
        "Session, AsyncSession or Connection"
    )


def _reject(conn: Any, reason: str) -> None:
    """Fail the caller's PostgreSQL transaction in the database too (see the module docstring)."""
    import psycopg  # noqa: PLC0415

    if conn.autocommit:
        return
    # the statement fails and aborts the transaction in the database: that is the point
    with contextlib.suppress(psycopg.Error):
        conn.execute(query("postgresql", "reject"), {"reason": reason})


async def _areject(conn: Any, reason: str) -> None:
    import psycopg  # noqa: PLC0415

    if conn.autocommit:
        return
    with contextlib.suppress(psycopg.Error):
        await conn.execute(query("postgresql", "reject"), {"reason": reason})
