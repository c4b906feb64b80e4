"""The outbox in SQLAlchemy 2.x sessions (sync and asyncio), and opt-in CRUD capture.

``outbox.add(session, event)`` checks and encodes the event at once (a bad event raises
``OutboxError`` at the call) and queues its row on the session; the rows are inserted by the
session's next flush, at the latest when it commits, on the session's own connection, so they
commit or roll back with the business rows. The same call works on ``AsyncSession``: nothing
is awaited until the session flushes. A savepoint that rolls back drops the events queued in it.

``capture(Model, outbox)`` emits ``schema.entity.create|update|delete`` events for every flushed
change of ``Model`` (seed 002's hooks): creates and deletes carry the row, updates the changed
fields with their old and new values. Reads (``schema.entity.read``, one per loaded object) are
off by default. User, tenant and request metadata come from ``tidings.context``.

A session whose outbox write failed cannot commit: its ``commit()`` raises OutboxError until it
is rolled back, so data never commits without its events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapper, Session, SessionTransaction
from sqlalchemy.orm.base import NO_VALUE as _NO_VALUE

from tidings.event import Event
from tidings.outbox.queries import named
from tidings.outbox.writer import Outbox, OutboxError, Row

__all__ = ["OPERATIONS", "capture", "captured", "pending_events", "uncapture"]

OPERATIONS = ("create", "update", "delete", "read")
_DEFAULT_OPERATIONS = ("create", "update", "delete")
_QUEUE = "tidings.outbox.queue"  # session.info: [(savepoint or None, rows)]
_DOOMED = "tidings.outbox.doomed"  # session.info: the error that forbids committing
_WROTE = "tidings.outbox.wrote"  # session.info: dialect and database of rows written this tx


def kind(conn: Any) -> str | None:
    if isinstance(conn, Session | AsyncSession):
        return "sa_session"
    if isinstance(conn, AsyncConnection):
        return "sa_async_connection"
    if isinstance(conn, Connection):
        return "sa_connection"
    return None


def _dialect(conn: Connection) -> str:
    name = conn.dialect.name
    if name not in ("postgresql", "sqlite"):
        raise OutboxError(
            f"outbox: the {name!r} database is not supported; the outbox runs on PostgreSQL "
            "and SQLite"
        )
    return name


# ---------------------------------------------------------------------------- writing


def add(outbox: Outbox, conn: Any, events: Iterable[Any], kind: str) -> None:
    if kind == "sa_async_connection":
        raise OutboxError(
            "outbox.add(): this is a SQLAlchemy AsyncConnection; use "
            "`await outbox.aadd(conn, event)` (or pass the AsyncSession)"
        )
    if kind == "sa_connection":
        try:
            rows = outbox.rows(events)
        except OutboxError as exc:
            _reject(conn, str(exc))
            raise
        _insert(conn, rows)
        return
    session: Session = conn.sync_session if isinstance(conn, AsyncSession) else conn
    _install()
    try:
        rows = outbox.rows(events)
    except OutboxError as exc:
        session.info[_DOOMED] = exc
        raise
    if rows:
        tx = session.get_nested_transaction()
        session.info.setdefault(_QUEUE, []).append((tx, rows))


async def aadd(outbox: Outbox, conn: AsyncConnection, events: Iterable[Any]) -> None:
    rows = outbox.rows(events)
    if rows:
        await conn.execute(text(named(_dialect(conn.sync_connection), "insert")), rows)  # type: ignore[arg-type]


def _insert(conn: Connection, rows: list[Row]) -> None:
    if rows:
        conn.execute(text(named(_dialect(conn), "insert")), rows)


def _reject(conn: Connection, reason: str) -> None:
    if conn.dialect.name != "postgresql" or not conn.in_transaction():
        return
    # the statement fails and aborts the transaction in the database: that is the point
    with contextlib.suppress(Exception):
        conn.execute(text(named("postgresql", "reject")), {"reason": reason})


def pending_events(session: Session | AsyncSession) -> int:
    """How many outbox rows this session has queued and not yet written (for tests)."""
    s = session.sync_session if isinstance(session, AsyncSession) else session
    return sum(len(rows) for _, rows in s.info.get(_QUEUE, ()))


# ---------------------------------------------------------------------------- session hooks


@functools.cache
def _install() -> None:
    """Listen on every Session once; the hooks do nothing for a session without outbox work."""
    sa_event.listen(Session, "after_flush", _after_flush)
    sa_event.listen(Session, "before_commit", _before_commit)
    sa_event.listen(Session, "after_commit", _after_commit)
    sa_event.listen(Session, "after_soft_rollback", _after_soft_rollback)


def _write_queue(session: Session) -> None:
    queue = session.info.pop(_QUEUE, None)
    if not queue:
        return
    conn = session.connection()
    rows = [row for _, batch in queue for row in batch]
    _insert(conn, rows)
    session.info[_WROTE] = (conn.dialect.name, conn.engine.url.database)


def _after_flush(session: Session, _flush_context: Any) -> None:
    if _captures:
        _capture_flush(session)
    _write_queue(session)


def _before_commit(session: Session) -> None:
    doomed = session.info.get(_DOOMED)
    if doomed is not None:
        raise OutboxError(
            f"this session cannot commit: an event of its transaction could not be written to "
            f"the outbox ({doomed}); roll back"
        )
    _write_queue(session)


def _after_commit(session: Session) -> None:
    wrote = session.info.pop(_WROTE, None)
    if wrote is not None and wrote[0] == "sqlite" and wrote[1]:
        from tidings.outbox.sqlite import wake  # noqa: PLC0415

        wake(wrote[1])


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    if previous.parent is None or not previous.nested:
        session.info.pop(_QUEUE, None)
        session.info.pop(_DOOMED, None)
        session.info.pop(_WROTE, None)
        return
    queue = session.info.get(_QUEUE)
    if queue:
        session.info[_QUEUE] = [(tx, rows) for tx, rows in queue if not _within(tx, previous)]


def _within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False


# ---------------------------------------------------------------------------- CRUD capture


@dataclasses.dataclass(frozen=True, slots=True)
class _Capture:
    outbox: Outbox
    schema: str
    entity: str
    operations: frozenset[str]
    exclude: frozenset[str]
    source: str | None


_captures: dict[type, _Capture] = {}


def capture(
    model: type,
    outbox: Outbox,
    *,
    schema: str | None = None,
    entity: str | None = None,
    operations: Sequence[str] = _DEFAULT_OPERATIONS,
    exclude: Sequence[str] = (),
    source: str | None = None,
) -> None:
    """Emit ``schema.entity.operation`` events for ``model`` through ``outbox``.

    ``schema`` defaults to the table's schema, else ``public``; ``entity`` to the table name.
    ``operations``: any of create, update, delete, read (reads are off unless named).
    ``exclude``: fields never put in an event (a password hash, a token).
    """
    mapper: Any = sa_inspect(model, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise OutboxError(
            f"capture(): {model!r} is not a mapped SQLAlchemy class; pass the ORM model class"
        )
    ops = frozenset(operations)
    unknown = ops - set(OPERATIONS)
    if unknown or not ops:
        raise OutboxError(
            f"capture({model.__name__}): operations {sorted(unknown) or '[]'} are not known; "
            f"expected some of {', '.join(OPERATIONS)}"
        )
    table = mapper.persist_selectable
    spec = _Capture(
        outbox=outbox,
        schema=schema or getattr(table, "schema", None) or "public",
        entity=entity or str(getattr(table, "name", None) or model.__name__.lower()),
        operations=ops,
        exclude=frozenset(exclude),
        source=source,
    )
    uncapture(model)
    _captures[model] = spec
    _install()
    if "read" in ops:
        sa_event.listen(model, "load", _on_load, propagate=True)


def uncapture(model: type) -> None:
    """Stop capturing ``model`` (tests, or switching capture off at runtime)."""
    spec = _captures.pop(model, None)
    if spec is not None and "read" in spec.operations:
        sa_event.remove(model, "load", _on_load)


def captured(model: type) -> bool:
    return _spec(model) is not None


def _spec(model: type) -> _Capture | None:
    for cls in model.__mro__:
        spec = _captures.get(cls)
        if spec is not None:
            return spec
    return None


def _capture_flush(session: Session) -> None:
    for obj, op in (
        *((o, "create") for o in session.new),
        *((o, "update") for o in session.dirty),
        *((o, "delete") for o in session.deleted),
    ):
        spec = _spec(type(obj))
        if spec is None or op not in spec.operations:
            continue
        built = _build(spec, obj, op)
        if built is not None:
            add(spec.outbox, session, [built], "sa_session")


def _on_load(obj: Any, context: Any) -> None:
    spec = _spec(type(obj))
    if spec is None or context.session is None:
        return
    built = _build(spec, obj, "read")
    if built is not None:
        add(spec.outbox, context.session, [built], "sa_session")


def _build(spec: _Capture, obj: Any, op: str) -> Event | None:
    state = sa_inspect(obj)
    mapper = state.mapper
    key = mapper.primary_key_from_instance(obj)
    names = [a.key for a in mapper.column_attrs if a.key not in spec.exclude]
    pk_names = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    if op == "update":
        changes: dict[str, Any] = {}
        for name in names:
            hist = state.attrs[name].history
            if not hist.has_changes():
                continue
            changes[name] = {
                "old": hist.deleted[0] if hist.deleted else None,
                "new": hist.added[0] if hist.added else None,
            }
        if not changes:
            return None
        data: dict[str, Any] = {
            "key": {n: getattr(obj, n) for n in pk_names},
            "changes": changes,
        }
    else:
        data = {name: state.attrs[name].loaded_value for name in names}
        data = {k: (None if v is _NO_VALUE else v) for k, v in data.items()}
    aggregate = ",".join("" if v is None else str(v) for v in key) if key else None
    return Event(
        type=f"{spec.schema}.{spec.entity}.{op}",
        source=spec.source or "tidings.outbox.sqlalchemy",
        aggregate_id=aggregate,
        aggregate_type=spec.entity,
        metadata={"schema": spec.schema, "entity": spec.entity, "operation": op},
        data=data,
    )
