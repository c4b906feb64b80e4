"""The durable webhook delivery queue, in the event store's own database (SQLite or PostgreSQL).

One row per (event, endpoint) in ``tidings_webhook_deliveries``; its id is the Standard Webhooks
message id and stays the same across retries, so receivers can deduplicate. ``accept`` writes
the events and their delivery rows in one transaction (``store.append(also=...)``): a delivery
exists exactly when its event does. Workers ``claim`` due rows under a lease (a time limit and a
token); a worker that dies loses its lease when it expires and another worker takes the row over
with a new token, so the old worker's late ``finish`` changes nothing. At-least-once: a request
may be sent twice around a takeover, never lost. The other sources of events (the store's own
subscription, a transport, a Bus; see ``tidings.webhooks.sources``) write deliveries with
``write_deliveries`` or ``ingest`` in their own transactions: at most one set per event.

Concurrency: on PostgreSQL claims lock rows ``FOR UPDATE SKIP LOCKED``, so any number of
processes claim at once without double-claiming; on SQLite each claim is one ``BEGIN IMMEDIATE``
transaction. The queue opens its own connection(s) to the store's database (a pool on
PostgreSQL, one locked connection on SQLite) and applies its schema (``sql/*.sql``) on open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import json
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from tidings.event import Event, decode, new_id
from tidings.store.base import Criteria, DuplicateEvent, Recorded, StoreError, StoreUnavailable
from tidings.store.sqlite import SqliteStore
from tidings.urls import redact_url
from tidings.webhooks.endpoint import Endpoint

if TYPE_CHECKING:
    from tidings.store.postgres import PostgresStore

__all__ = [
    "REPLAY_SHARE",
    "STATES",
    "Attempt",
    "Claimed",
    "DeliveryQueue",
    "Outcome",
    "QueueStats",
    "WebhookDelivery",
    "WebhookQueueFull",
    "replay_bound",
]

log = logging.getLogger("tidings.webhooks.queue")

State = Literal["pending", "delivering", "delivered", "dead", "cancelled"]
STATES: tuple[str, ...] = ("pending", "delivering", "delivered", "dead", "cancelled")
MAX_RESPONSE_BODY = 2048  # bytes of a response body kept in the attempts log
REMOVED_FROM_CONFIG = "removed from the config"
_LOCK_CLASS = 29803  # advisory lock namespace for the webhook schema (migrations use 29802)
_LOCK_EXISTING = 29804  # serializes "deliveries for an event that may have some" (PostgreSQL)

_DELIVERY_COLUMNS = (
    "id, event_id, position, endpoint_id, state, attempts, next_attempt_at, created_at, "
    "updated_at, last_status, last_error, delivered_at"
)
_ATTEMPT_COLUMNS = "delivery_id, number, started_at, duration, status_code, response_body, error"
_INSERT_DELIVERY = (
    "INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, "
    "attempts, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
)
_INSERT_LEASED = (
    "INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, "
    "attempts, next_attempt_at, created_at, updated_at, lease_until, lease_token) "
    "VALUES (?, ?, ?, ?, 'delivering', 0, ?, ?, ?, ?, ?)"
)
_INSERT_ATTEMPT = (
    f"INSERT INTO tidings_webhook_attempts ({_ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_FINISH = (
    "UPDATE tidings_webhook_deliveries SET state = ?, attempts = ?, last_status = ?, "
    "last_error = ?, next_attempt_at = ?, delivered_at = ?, lease_until = NULL, "
    "lease_token = NULL, updated_at = ? WHERE id = ? AND lease_token = ?"
)
_RELEASE = (
    "UPDATE tidings_webhook_deliveries SET state = 'pending', lease_until = NULL, "
    "lease_token = NULL, updated_at = ? WHERE id = ? AND lease_token = ?"
)
_RESCHEDULE = (
    "UPDATE tidings_webhook_deliveries SET state = 'pending', attempts = 0, "
    "next_attempt_at = ?, lease_until = NULL, lease_token = NULL, delivered_at = NULL, "
    "updated_at = ? WHERE "
)
_UPSERT_ENDPOINT = (
    "INSERT INTO tidings_webhook_endpoints (id, body, enabled, source, updated_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET body = excluded.body, "
    "enabled = excluded.enabled, source = excluded.source, updated_at = excluded.updated_at"
)
_EVENT_GONE = "the event is no longer in the store (retention?); nothing to deliver"

# Each enabled endpoint's due rows come from its own range of the partial index (at most
# `limit` each), so a backlog on a skipped or disabled endpoint costs a claim nothing. Leases
# that expired (a crashed worker) are few: the rows in flight.
_CLAIM_SQLITE = """
UPDATE tidings_webhook_deliveries
SET state = 'delivering', lease_until = :until, lease_token = :token, updated_at = :now
WHERE id IN (SELECT id FROM (
    SELECT d.id, d.next_attempt_at FROM tidings_webhook_endpoints e
    JOIN tidings_webhook_deliveries d ON d.rowid IN (
        SELECT x.rowid FROM tidings_webhook_deliveries x
        WHERE x.endpoint_id = e.id AND x.state = 'pending' AND x.next_attempt_at <= :now
        ORDER BY x.next_attempt_at LIMIT :n)
    WHERE e.enabled AND e.id NOT IN (SELECT value FROM json_each(:skip))
    UNION ALL
    SELECT d.id, d.next_attempt_at FROM tidings_webhook_deliveries d
    JOIN tidings_webhook_endpoints e ON e.id = d.endpoint_id
    WHERE d.state = 'delivering' AND d.lease_until < :now AND e.enabled
      AND e.id NOT IN (SELECT value FROM json_each(:skip))
    ORDER BY 2 LIMIT :n))
RETURNING id, event_id, position, endpoint_id, state, attempts, next_attempt_at, created_at,
    updated_at, last_status, last_error, delivered_at
"""
# Rows locked by another claimer are skipped, not waited for; a row another claimer changed
# since this statement's snapshot is re-checked against the WHERE when locked.
_CLAIM_POSTGRES = b"""
WITH due AS (
    SELECT c.id, c.next_attempt_at FROM tidings_webhook_endpoints e
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at FROM tidings_webhook_deliveries d
        WHERE d.endpoint_id = e.id AND d.state = 'pending' AND d.next_attempt_at <= %(now)s
        ORDER BY d.next_attempt_at LIMIT %(n)s
        FOR UPDATE SKIP LOCKED) c
    WHERE e.enabled AND e.id <> ALL(%(skip)s)
), expired AS (
    SELECT d.id, d.next_attempt_at FROM tidings_webhook_deliveries d
    JOIN tidings_webhook_endpoints e ON e.id = d.endpoint_id
    WHERE d.state = 'delivering' AND d.lease_until < %(now)s AND e.enabled
      AND e.id <> ALL(%(skip)s)
    FOR UPDATE OF d SKIP LOCKED
), picked AS (
    SELECT id FROM (SELECT * FROM due UNION ALL SELECT * FROM expired) AS u
    ORDER BY next_attempt_at LIMIT %(n)s
), claimed AS (
    UPDATE tidings_webhook_deliveries d
    SET state = 'delivering', lease_until = %(until)s, lease_token = %(token)s,
        updated_at = %(now)s
    FROM picked WHERE d.id = picked.id
    RETURNING d.id, d.event_id, d.position, d.endpoint_id, d.state, d.attempts,
        d.next_attempt_at, d.created_at, d.updated_at, d.last_status, d.last_error,
        d.delivered_at
)
SELECT c.*, ev.payload::text FROM claimed c LEFT JOIN events ev ON ev.position = c.position
"""


# ---------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event's delivery to one endpoint; ``id`` is the ``webhook-id`` header."""

    id: str
    event_id: str
    position: int
    endpoint_id: str
    state: State
    attempts: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker holds until its lease ends; ``finish`` needs ``lease_token``."""

    delivery: WebhookDelivery
    event: Event
    lease_token: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP request of a delivery, as the attempts log keeps it."""

    delivery_id: str
    number: int
    started_at: float
    duration: float
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker reports for a claimed delivery: the attempt and the state that follows."""

    delivery_id: str
    lease_token: str
    attempt: Attempt
    state: Literal["delivered", "pending", "dead"]
    next_attempt_at: float | None = None  # required with state "pending": when to retry


@dataclass(frozen=True)
class QueueStats:
    pending: int
    delivering: int
    delivered: int
    dead: int
    oldest_pending_age: float | None  # seconds the oldest due pending delivery has waited
    per_endpoint: dict[str, dict[str, int]]  # endpoint id -> state -> count


class WebhookQueueFull(StoreError):
    """``accept(max_pending=...)`` would exceed the bound; nothing was written (``redeliver``:
    ``written`` deliveries were, before the queue filled up).

    ``setting`` names the bound as the caller's user knows it (``tidings serve``: the config's
    ``events.queue_size``).
    """

    def __init__(
        self,
        pending: int,
        max_pending: int,
        adding: int,
        *,
        setting: str = "max_pending",
        written: int = 0,
        message: str | None = None,
    ) -> None:
        done = f"{written} were written first" if written else "nothing was written"
        super().__init__(
            message
            or f"webhook delivery queue is full: {pending} deliveries pending or in flight, "
            f"{adding} more would exceed {setting}={max_pending}; {done}. "
            f"Retry later, raise {setting}, or disable the endpoints that are failing"
        )
        self.pending = pending
        self.max_pending = max_pending
        self.adding = adding
        self.written = written


# A replay fills the queue to this share of its bound at most: the rest stays free for live
# events, which would otherwise be refused until the replay drains.
REPLAY_SHARE = 0.8


def replay_bound(queue_size: int) -> int:
    """Open deliveries a replay may bring the queue to, for a queue bounded at ``queue_size``."""
    return max(1, int(queue_size * REPLAY_SHARE))


# ---------------------------------------------------------------------- the two databases


class _Database:
    """What SQLite and PostgreSQL share; the subclasses hold what differs (connections,
    placeholders, the claim statement)."""

    where = ""
    body_column = "body"
    events_table = "tidings_events"

    def sql(self, text: str) -> Any:
        return text

    def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self.sql(sql), params)


class _Sqlite(_Database):
    """Writes in the store's own write transactions (one writer lock for the whole process);
    reads on a connection of our own."""

    def __init__(self, store: SqliteStore) -> None:
        self.where = store.path
        self._store = store
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                store.path,
                timeout=store.busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # used from worker threads (to_thread), under _lock
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            schema = _schema("sqlite.sql")
            with self._lock:
                self._conn.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"webhook queue: cannot use SQLite database {store.path!r}: {exc}"
            ) from exc

    def executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return int(conn.executemany(sql, rows).rowcount)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors(), self._store.transaction() as conn:
            yield conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailable(
                    f"webhook queue on SQLite {self.where!r}: timed out waiting for another "
                    f"writer: {exc}; raise the store's busy_timeout"
                ) from exc
            raise StoreError(f"webhook queue on SQLite {self.where!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"webhook queue on SQLite {self.where!r}: {exc}") from exc

    def claim(
        self, conn: Any, limit: int, until: float, token: str, now: float, skip: list[str]
    ) -> list[tuple[Any, ...]]:
        params = {"until": until, "token": token, "now": now, "n": limit, "skip": json.dumps(skip)}
        rows = conn.execute(_CLAIM_SQLITE, params).fetchall()
        if not rows:
            return []
        positions = json.dumps([r[2] for r in rows])
        bodies = dict(
            conn.execute(
                "SELECT position, body FROM tidings_events "
                "WHERE position IN (SELECT value FROM json_each(?))",
                (positions,),
            ).fetchall()
        )
        return [(*r, bodies.get(r[2])) for r in rows]

    def delivered(self, conn: Any, event_ids: list[str]) -> set[str]:
        rows = conn.execute(
            "SELECT DISTINCT event_id FROM tidings_webhook_deliveries "
            "WHERE event_id IN (SELECT value FROM json_each(?))",
            (json.dumps(event_ids),),
        ).fetchall()
        return {r[0] for r in rows}

    def serialize(self, conn: Any) -> None:
        """Nothing to do: SQLite has one writer at a time (BEGIN IMMEDIATE)."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Postgres(_Database):
    """A small pool of our own (autocommit; transactions are explicit)."""

    body_column = "body::text"
    events_table = "events"

    def __init__(self, store: PostgresStore, pool_size: int) -> None:
        # psycopg is the optional "postgres" extra: imported only when a PostgresStore exists
        import psycopg  # noqa: PLC0415
        from psycopg_pool import ConnectionPool, PoolTimeout  # noqa: PLC0415

        from tidings.store.migrate import describe  # noqa: PLC0415

        self._psycopg = psycopg
        self._pool_timeout = PoolTimeout
        self.where = describe(store.url)
        self._timeout = store.connect_timeout
        self._pool: ConnectionPool[Any] = ConnectionPool(
            store.url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self._timeout))},
            open=False,
            name=f"tidings-webhooks-{self.where}",
        )
        try:
            self._pool.open(wait=True, timeout=self._timeout + 1)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailable(
                f"webhook queue: PostgreSQL at {self.where}: no connection within {self._timeout}s"
            ) from None
        schema = _schema("postgres.sql").encode()
        try:
            with self.transaction() as conn:
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_LOCK_CLASS,)
                )
                conn.execute(schema)
        except BaseException:
            self._pool.close()
            raise

    def sql(self, text: str) -> bytes:
        return text.replace("?", "%s").encode()

    def executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with conn.cursor() as cur:
            cur.executemany(self.sql(sql), rows)
            return int(cur.rowcount)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def connection(self) -> Iterator[Any]:
        psycopg = self._psycopg
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except self._pool_timeout:
            raise StoreUnavailable(
                f"webhook queue: PostgreSQL at {self.where}: no connection available within "
                f"{self._timeout}s"
            ) from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"webhook queue: PostgreSQL at {self.where}: connection lost: {exc}"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"webhook queue: PostgreSQL at {self.where}: {exc}") from exc

    def claim(
        self, conn: Any, limit: int, until: float, token: str, now: float, skip: list[str]
    ) -> list[tuple[Any, ...]]:
        params = {"until": until, "token": token, "now": now, "n": limit, "skip": skip}
        return list(conn.execute(_CLAIM_POSTGRES, params).fetchall())

    def delivered(self, conn: Any, event_ids: list[str]) -> set[str]:
        rows = conn.execute(
            b"SELECT DISTINCT event_id FROM tidings_webhook_deliveries WHERE event_id = ANY(%s)",
            (event_ids,),
        ).fetchall()
        return {r[0] for r in rows}

    def serialize(self, conn: Any) -> None:
        """Two sources handing over the same stored event (say the store's subscription and a
        Bus that the store publishes to) must not both find it without deliveries."""
        conn.execute(
            b"SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_LOCK_EXISTING,)
        )

    def close(self) -> None:
        self._pool.close()


def _schema(name: str) -> str:
    return importlib.resources.files("tidings.webhooks").joinpath("sql", name).read_text("utf-8")


# ---------------------------------------------------------------------- the queue


def _delivery(row: Sequence[Any]) -> WebhookDelivery:
    return WebhookDelivery(*row[:12])


def _truncate(body: str | None) -> str | None:
    if body is None:
        return None
    raw = body.encode()
    if len(raw) <= MAX_RESPONSE_BODY:
        return body
    return raw[:MAX_RESPONSE_BODY].decode("utf-8", errors="ignore")


def _routes(route: Callable[[Event], Sequence[str]], event: Event) -> list[str]:
    ids = route(event)
    if isinstance(ids, str):
        raise TypeError(
            f"route({event.type!r}): expected a sequence of endpoint ids, got the string {ids!r}; "
            "return [endpoint_id]"
        )
    return list(dict.fromkeys(ids))


class DeliveryQueue:
    """Webhook deliveries in the store's database; see the module docstring.

    ``pool_size`` bounds the PostgreSQL connections of this queue (claims, finishes and reads
    of all workers in this process share them).
    """

    def __init__(self, store: SqliteStore | PostgresStore, *, pool_size: int = 4) -> None:
        pg = sys.modules.get("tidings.store.postgres")
        self._db: _Sqlite | _Postgres
        if isinstance(store, SqliteStore):
            self._db = _Sqlite(store)
        elif pg is not None and isinstance(store, pg.PostgresStore):
            self._db = _Postgres(store, pool_size)
        else:
            url = getattr(store, "url", None)
            raise StoreError(
                f"webhook delivery needs a durable store: sqlite:///file.db or postgresql://..., "
                f"got {type(store).__name__}"
                + (f" ({redact_url(url)})" if isinstance(url, str) else "")
                + "; open the store with one of those URLs"
            )
        self.store = store
        self._closed = False
        self._known: set[str] = set()  # endpoint ids known to exist (cache for accept)

    # ------------------------------------------------------------------ endpoints

    def save_endpoint(self, ep: Endpoint) -> None:
        """Insert or replace the endpoint with ``ep.id``."""
        if not isinstance(ep, Endpoint):
            raise TypeError(f"save_endpoint: expected an Endpoint, got {type(ep).__name__}")
        with self._db.transaction() as conn:
            self._upsert(conn, [ep])

    def _upsert(self, conn: Any, eps: Sequence[Endpoint]) -> None:
        now = time.time()
        rows = [(e.id, msgspec.json.encode(e).decode(), e.enabled, e.source, now) for e in eps]
        self._db.executemany(conn, _UPSERT_ENDPOINT, rows)

    def sync_config_endpoints(self, eps: Sequence[Endpoint]) -> None:
        """Make the stored config endpoints match ``eps`` (the config file), in one transaction.

        Endpoints no longer listed are disabled, not deleted (their deliveries refer to them).
        A runtime disable that carries a reason (auto-disable after failures, an operator's) is
        kept across a sync, so a restart does not re-enable an endpoint someone switched off;
        endpoints added at run time (source "api") are not touched.
        """
        seen: set[str] = set()
        for ep in eps:
            if not isinstance(ep, Endpoint):
                raise TypeError(f"sync_config_endpoints: expected Endpoints, got {ep!r}")
            if ep.id in seen:
                raise ValueError(f"sync_config_endpoints: endpoint id {ep.id!r} appears twice")
            seen.add(ep.id)
        with self._db.transaction() as conn:
            stored = {e.id: e for e in self._load_endpoints(conn)}
            out: list[Endpoint] = []
            for ep in eps:
                new = msgspec.structs.replace(ep, source="config")
                old = stored.get(ep.id)
                if old is not None and old.source == "api":
                    log.warning("webhook endpoint %r from the config replaces an API one", ep.id)
                reason = None if old is None or old.enabled else old.disabled_reason
                if reason not in (None, REMOVED_FROM_CONFIG) and new.enabled:
                    new = msgspec.structs.replace(new, enabled=False, disabled_reason=reason)
                out.append(new)
            for old in stored.values():
                if old.source == "config" and old.id not in seen and old.enabled:
                    out.append(
                        msgspec.structs.replace(
                            old, enabled=False, disabled_reason=REMOVED_FROM_CONFIG
                        )
                    )
            self._upsert(conn, out)

    def _load_endpoints(self, conn: Any, id: str | None = None) -> list[Endpoint]:
        sql = f"SELECT {self._db.body_column} FROM tidings_webhook_endpoints"
        params: tuple[str, ...] = ()
        if id is not None:
            sql += " WHERE id = ?"
            params = (id,)
        rows = self._db.execute(conn, sql + " ORDER BY id", params).fetchall()
        return [msgspec.json.decode(r[0], type=Endpoint) for r in rows]

    def endpoints(self) -> list[Endpoint]:
        with self._db.connection() as conn:
            return self._load_endpoints(conn)

    def endpoint(self, id: str) -> Endpoint | None:
        with self._db.connection() as conn:
            found = self._load_endpoints(conn, id)
        return found[0] if found else None

    def set_enabled(self, id: str, enabled: bool, reason: str | None = None) -> Endpoint:
        """Switch an endpoint on or off; ``reason`` is shown while it is off."""
        with self._db.transaction() as conn:
            found = self._load_endpoints(conn, id)
            if not found:
                raise KeyError(f"webhook endpoint {id!r} is not known; list them with endpoints()")
            ep = msgspec.structs.replace(
                found[0], enabled=enabled, disabled_reason=None if enabled else reason
            )
            self._upsert(conn, [ep])
        return ep

    def delete_endpoint(self, id: str) -> bool:
        """Remove an endpoint; its pending and in-flight deliveries become ``cancelled``."""
        now = time.time()
        with self._db.transaction() as conn:
            gone = self._db.execute(
                conn, "DELETE FROM tidings_webhook_endpoints WHERE id = ?", (id,)
            ).rowcount
            self._db.execute(
                conn,
                "UPDATE tidings_webhook_deliveries SET state = 'cancelled', lease_until = NULL, "
                "lease_token = NULL, next_attempt_at = NULL, updated_at = ? "
                "WHERE endpoint_id = ? AND state IN ('pending', 'delivering')",
                (now, id),
            )
        self._known.discard(id)
        return bool(gone)

    def _check_endpoints(self, ids: Iterable[str], what: str) -> None:
        wanted = sorted(set(ids))
        if not wanted or self._known.issuperset(wanted):
            return  # the hot path: endpoints seen before are not looked up per accept
        with self._db.connection() as conn:
            known = {
                r[0]
                for r in self._db.execute(
                    conn,
                    "SELECT id FROM tidings_webhook_endpoints "
                    f"WHERE id IN ({', '.join('?' * len(wanted))})",
                    wanted,
                ).fetchall()
            }
        self._known.update(known)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ValueError(
                f"{what}: route returned unknown endpoint id(s) {', '.join(map(repr, unknown))}; "
                "save_endpoint() them first; nothing was written"
            )

    # ------------------------------------------------------------------ accepting events

    def accept(
        self,
        events: Sequence[Event],
        route: Callable[[Event], Sequence[str]],
        *,
        max_pending: int | None = None,
    ) -> list[tuple[Recorded, list[str]]]:
        """Append ``events`` and one pending delivery per endpoint ``route(event)`` names, in one
        transaction; returns each recorded event with its delivery ids.

        ``max_pending`` bounds deliveries pending or in flight. The count runs before the
        append, outside its transaction: appends racing each other can overshoot the bound by
        what they add together, never by more.
        """
        return self.accept_and_claim(events, route, max_pending=max_pending)[0]

    def accept_and_claim(
        self,
        events: Sequence[Event],
        route: Callable[[Event], Sequence[str]],
        *,
        max_pending: int | None = None,
        take: Mapping[str, int] | None = None,
        lease: float = 60.0,
    ) -> tuple[list[tuple[Recorded, list[str]]], list[Claimed]]:
        """``accept``, and lease up to ``take[endpoint_id]`` of the new deliveries to the caller
        in the same transaction (returned as ``Claimed``).

        A worker in the accepting process starts those at once, without a claim round trip;
        if the process dies first, their leases run out and any worker takes them over.
        """
        batch = list(events)
        routes = [_routes(route, e) for e in batch]
        adding = sum(len(r) for r in routes)
        self._check_endpoints((i for r in routes for i in r), "accept")
        if max_pending is not None and adding:
            pending = self.count_open(max_pending + 1)
            if pending + adding > max_pending:
                raise WebhookQueueFull(pending, max_pending, adding)
        ids = [[new_id() for _ in r] for r in routes]
        now = time.time()
        token = new_id()
        left = dict(take or {})
        claimed: list[Claimed] = []
        db = self._db

        def also(conn: Any, recorded: list[Recorded]) -> None:
            claimed.clear()  # a retried transaction starts over
            room = dict(left)
            rows, leased = [], []
            for rec, eps, dids in zip(recorded, routes, ids, strict=True):
                for ep, did in zip(eps, dids, strict=True):
                    if room.get(ep, 0) > 0:
                        room[ep] -= 1
                        leased.append((did, rec.event.id, rec.position, ep, now, now, now))
                        delivery = WebhookDelivery(
                            did, rec.event.id, rec.position, ep, "delivering", 0, now, now, now,
                            None, None, None,
                        )  # fmt: skip
                        claimed.append(Claimed(delivery, rec.event, token))
                    else:
                        rows.append((did, rec.event.id, rec.position, ep, now, now, now))
            if rows:
                db.executemany(conn, _INSERT_DELIVERY, rows)
            if leased:
                until = now + lease
                db.executemany(conn, _INSERT_LEASED, [(*r, until, token) for r in leased])

        recorded = self.store.append(batch, also=also)
        return [(rec, dids) for rec, dids in zip(recorded, ids, strict=True)], claimed

    async def aaccept(
        self,
        events: Sequence[Event],
        route: Callable[[Event], Sequence[str]],
        *,
        max_pending: int | None = None,
    ) -> list[tuple[Recorded, list[str]]]:
        return await asyncio.to_thread(self.accept, events, route, max_pending=max_pending)

    # ------------------------------------------------------------------ other sources

    def write_deliveries(
        self,
        conn: Any,
        recorded: Sequence[Recorded],
        route: Callable[[Event], Sequence[str]],
        *,
        fresh: bool = False,
    ) -> int:
        """In the caller's open transaction on ``conn`` (a connection of the store): a pending
        delivery per endpoint ``route(event)`` names, for each event that has no delivery yet.
        Returns how many were written.

        The sources other than ``POST /events`` (the store's subscription, a transport, a Bus)
        use this; "no delivery yet" makes them idempotent towards each other and towards a
        redelivered message. ``fresh``: the events were appended in this same transaction, so
        none can have deliveries and the check is skipped. Endpoint ids that are gone (deleted
        since the router last looked) are left out.
        """
        if not recorded:
            return 0
        db = self._db
        done: set[str] = set()
        if not fresh:
            db.serialize(conn)
            done = db.delivered(conn, [rec.event.id for rec in recorded])
        known = {r[0] for r in db.execute(conn, "SELECT id FROM tidings_webhook_endpoints")}
        now = time.time()
        rows = [
            (new_id(), rec.event.id, rec.position, ep, now, now, now)
            for rec in recorded
            if rec.event.id not in done
            for ep in _routes(route, rec.event)
            if ep in known
        ]
        if rows:
            db.executemany(conn, _INSERT_DELIVERY, rows)
        return len(rows)

    def ingest(self, events: Sequence[Event], route: Callable[[Event], Sequence[str]]) -> int:
        """Append ``events`` and their deliveries in one transaction, like ``accept``; but an
        event already in the store (a redelivered message, or one another writer stored) is no
        error: it gets deliveries only if it has none. Returns how many deliveries were made.
        """
        batch = list(events)
        created = 0

        def also(conn: Any, recorded: list[Recorded]) -> None:
            nonlocal created
            created = self.write_deliveries(conn, recorded, route, fresh=True)

        try:
            self.store.append(batch, also=also)
            return created
        except DuplicateEvent:
            if len(batch) > 1:
                return sum(self.ingest([event], route) for event in batch)
        event = batch[0]
        with self._db.transaction() as conn:
            row = self._db.execute(
                conn, f"SELECT position FROM {self._db.events_table} WHERE id = ?", (event.id,)
            ).fetchone()
            if row is None:  # removed (retention) since the append found it: nothing to send
                return 0
            return self.write_deliveries(conn, [Recorded(int(row[0]), event)], route)

    def source_start(self, name: str) -> int:
        """The position after which the source ``name`` delivers: the end of the store when it
        first ran (recorded then), so turning a source on does not deliver the history."""
        with self._db.transaction() as conn:
            self._db.execute(
                conn,
                "INSERT INTO tidings_webhook_sources (name, start_position, created_at) "
                f"SELECT ?, COALESCE(MAX(position), 0), ? FROM {self._db.events_table} "
                "WHERE true ON CONFLICT (name) DO NOTHING",  # WHERE: SQLite's ON ambiguity
                (name, time.time()),
            )
            row = self._db.execute(
                conn,
                "SELECT start_position FROM tidings_webhook_sources WHERE name = ?",
                (name,),
            ).fetchone()
        return int(row[0])

    def count_open(self, cap: int) -> int:
        """Pending + delivering rows, counted up to ``cap`` (so a full queue costs ``cap``)."""
        with self._db.connection() as conn:
            row = self._db.execute(
                conn,
                "SELECT count(*) FROM (SELECT 1 FROM tidings_webhook_deliveries "
                "WHERE state IN ('pending', 'delivering') LIMIT ?) AS open_rows",
                (cap,),
            ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ work

    def claim(
        self, limit: int, lease: float, *, skip_endpoints: Collection[str] = ()
    ) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries for ``lease`` seconds, oldest due first.

        Due: pending with ``next_attempt_at`` reached, or in flight with an expired lease (its
        worker died), on an enabled endpoint not in ``skip_endpoints``. Deliveries whose event
        is no longer in the store become ``dead`` instead of being returned.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"claim(limit=): expected an int >= 1, got {limit!r}")
        if not lease > 0:
            raise ValueError(f"claim(lease=): expected seconds > 0, got {lease!r}")
        if isinstance(skip_endpoints, str):
            raise TypeError("claim(skip_endpoints=): expected a collection of ids, not a string")
        now = time.time()
        token = new_id()
        with self._db.transaction() as conn:
            rows = self._db.claim(conn, limit, now + lease, token, now, list(skip_endpoints))
            gone = [(now, _EVENT_GONE, r[0]) for r in rows if r[12] is None]
            if gone:
                self._db.executemany(
                    conn,
                    "UPDATE tidings_webhook_deliveries SET state = 'dead', lease_until = NULL, "
                    "lease_token = NULL, next_attempt_at = NULL, updated_at = ?, last_error = ? "
                    "WHERE id = ?",
                    gone,
                )
        for _, _, did in gone:
            log.error("webhook delivery %s is dead: %s", did, _EVENT_GONE)
        out = [Claimed(_delivery(r), decode(r[12]), token) for r in rows if r[12] is not None]
        out.sort(key=lambda c: (c.delivery.next_attempt_at or 0.0, c.delivery.id))
        return out

    async def aclaim(
        self, limit: int, lease: float, *, skip_endpoints: Collection[str] = ()
    ) -> list[Claimed]:
        return await asyncio.to_thread(self.claim, limit, lease, skip_endpoints=skip_endpoints)

    def finish(self, outcomes: Sequence[Outcome]) -> int:
        """Record a batch of attempts and their deliveries' new states in one transaction.

        Every attempt is logged (the request was made); a delivery changes only while the lease
        token still matches, so a worker whose lease was taken over cannot overwrite the new
        holder. Returns how many deliveries changed.
        """
        if not outcomes:
            return 0
        now = time.time()
        updates: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        for o in sorted(outcomes, key=lambda o: o.delivery_id):  # one lock order: no deadlocks
            a = o.attempt
            if o.state not in ("delivered", "pending", "dead"):
                raise ValueError(
                    f"Outcome.state: expected 'delivered', 'pending' or 'dead', got {o.state!r}"
                )
            if o.state == "pending" and o.next_attempt_at is None:
                raise ValueError(
                    f"Outcome.next_attempt_at: delivery {o.delivery_id} goes back to pending, "
                    "so it needs the time of its next attempt"
                )
            if a.delivery_id != o.delivery_id:
                raise ValueError(
                    f"Outcome.attempt.delivery_id: {a.delivery_id!r} is not the outcome's "
                    f"delivery {o.delivery_id!r}"
                )
            updates.append(
                (
                    o.state,
                    a.number,
                    a.status_code,
                    None if o.state == "delivered" else a.error,
                    o.next_attempt_at if o.state == "pending" else None,
                    now if o.state == "delivered" else None,
                    now,
                    o.delivery_id,
                    o.lease_token,
                )
            )
            attempts.append(
                (
                    a.delivery_id,
                    a.number,
                    a.started_at,
                    a.duration,
                    a.status_code,
                    _truncate(a.response_body),
                    a.error,
                )
            )
        with self._db.transaction() as conn:
            self._db.executemany(conn, _INSERT_ATTEMPT, attempts)
            return self._db.executemany(conn, _FINISH, updates)

    async def afinish(self, outcomes: Sequence[Outcome]) -> int:
        return await asyncio.to_thread(self.finish, outcomes)

    def release(self, claimed: Sequence[tuple[str, str]]) -> None:
        """Hand leased deliveries back unattempted (graceful shutdown): due again at once."""
        if not claimed:
            return
        now = time.time()
        with self._db.transaction() as conn:
            self._db.executemany(conn, _RELEASE, [(now, did, tok) for did, tok in claimed])

    # ------------------------------------------------------------------ inspection and replay

    def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        state: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[WebhookDelivery]:
        """Newest first; pass the last id of a page as ``before`` for the next one."""
        if state is not None and state not in STATES:
            raise ValueError(
                f"deliveries(state=): expected one of {', '.join(STATES)}, got {state!r}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"deliveries(limit=): expected an int >= 1, got {limit!r}")
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("endpoint_id", endpoint_id),
            ("state", state),
            ("event_id", event_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM tidings_webhook_deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit)
        with self._db.connection() as conn:
            rows = self._db.execute(conn, sql + " ORDER BY id DESC LIMIT ?", params).fetchall()
        return [_delivery(r) for r in rows]

    def delivery(self, id: str) -> WebhookDelivery | None:
        with self._db.connection() as conn:
            row = self._db.execute(
                conn,
                f"SELECT {_DELIVERY_COLUMNS} FROM tidings_webhook_deliveries WHERE id = ?",
                (id,),
            ).fetchone()
        return None if row is None else _delivery(row)

    def attempts(self, delivery_id: str) -> list[Attempt]:
        """The attempts log of one delivery, oldest first."""
        with self._db.connection() as conn:
            rows = self._db.execute(
                conn,
                f"SELECT {_ATTEMPT_COLUMNS} FROM tidings_webhook_attempts "
                "WHERE delivery_id = ? ORDER BY number, seq",
                (delivery_id,),
            ).fetchall()
        return [Attempt(*r) for r in rows]

    def retry(self, delivery_id: str) -> bool:
        """Send a delivery again now, same id, attempts from zero; False if it is unknown.

        A delivery in flight is left to its worker (True: it is being attempted)."""
        now = time.time()
        with self._db.transaction() as conn:
            changed = self._db.execute(
                conn, _RESCHEDULE + "id = ? AND state <> 'delivering'", (now, now, delivery_id)
            ).rowcount
            if changed:
                return True
            row = self._db.execute(
                conn, "SELECT 1 FROM tidings_webhook_deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        return row is not None

    def retry_dead(self, endpoint_id: str | None = None) -> int:
        """Send every dead delivery (of one endpoint, or all) again; returns how many."""
        now = time.time()
        sql = _RESCHEDULE + "state = 'dead'"
        params: tuple[Any, ...] = (now, now)
        if endpoint_id is not None:
            sql += " AND endpoint_id = ?"
            params += (endpoint_id,)
        with self._db.transaction() as conn:
            return int(self._db.execute(conn, sql, params).rowcount)

    def _replay_pages(
        self,
        criteria: Criteria,
        route: Callable[[Event], Sequence[str]],
        batch: int,
        what: str,
    ) -> Iterator[tuple[list[Recorded], list[list[str]]]]:
        """Stored events matching ``criteria`` by position, a page at a time, each with the
        endpoints ``route`` gives it."""
        if not isinstance(criteria, Criteria):
            raise TypeError(f"{what}: expected a Criteria, got {type(criteria).__name__}")
        if batch < 1:
            raise ValueError(f"{what}(batch=): expected >= 1, got {batch}")
        after = criteria.after_position
        remaining = criteria.limit
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            page = self.store.load(dataclasses.replace(criteria, after_position=after, limit=size))
            if not page:
                break
            routes = [_routes(route, rec.event) for rec in page]
            self._check_endpoints((i for r in routes for i in r), what)
            yield page, routes
            after = page[-1].position
            if remaining is not None:
                remaining -= len(page)
            if len(page) < size:
                break

    def plan_redeliver(
        self,
        criteria: Criteria,
        route: Callable[[Event], Sequence[str]],
        *,
        progress: Callable[[int], None] | None = None,
        batch: int = 1000,
    ) -> dict[str, int]:
        """What ``redeliver`` would create, per endpoint id; writes nothing (a dry run)."""
        counts: dict[str, int] = {}
        read = 0
        for page, routes in self._replay_pages(criteria, route, batch, "plan_redeliver"):
            for eps in routes:
                for ep in eps:
                    counts[ep] = counts.get(ep, 0) + 1
            read += len(page)
            if progress is not None:
                progress(read)
        return counts

    def redeliver(
        self,
        criteria: Criteria,
        route: Callable[[Event], Sequence[str]],
        *,
        progress: Callable[[int], None] | None = None,
        batch: int = 1000,
        max_pending: int | None = None,
        wait: Callable[[int, int], bool] | None = None,
    ) -> int:
        """New deliveries (new ids) for stored events matching ``criteria``; returns how many.

        Pages through the store by position, one transaction per page; ``progress`` gets the
        number of events read so far after each page (``store.count(criteria)`` is the total).

        ``max_pending`` bounds the deliveries pending or in flight: a page is written as far as
        there is room, and while there is none ``wait(open, max_pending)`` is called; it should
        block a while (deliveries drain meanwhile) and return True to look again, or False to
        give up with ``WebhookQueueFull`` (what was written stays). Without ``wait``, no room is
        ``WebhookQueueFull`` at once.
        """
        created = read = 0
        for page, routes in self._replay_pages(criteria, route, batch, "redeliver"):
            now = time.time()
            rows = [
                (new_id(), rec.event.id, rec.position, ep, now, now, now)
                for rec, eps in zip(page, routes, strict=True)
                for ep in eps
            ]
            while rows:
                room = len(rows)
                if max_pending is not None:
                    open_now = self.count_open(max_pending + 1)
                    room = min(room, max_pending - open_now)
                    if room <= 0:
                        if wait is None or not wait(open_now, max_pending):
                            raise WebhookQueueFull(
                                open_now, max_pending, len(rows), written=created
                            )
                        continue
                with self._db.transaction() as conn:
                    self._db.executemany(conn, _INSERT_DELIVERY, rows[:room])
                created += room
                rows = rows[room:]
            read += len(page)
            if progress is not None:
                progress(read)
        return created

    def stats(self) -> QueueStats:
        """Counts per state and endpoint. Counts every row: call it at scrape rate, not per
        request, on a table with millions of deliveries."""
        now = time.time()
        with self._db.connection() as conn:
            rows = self._db.execute(
                conn,
                "SELECT endpoint_id, state, count(*) FROM tidings_webhook_deliveries "
                "GROUP BY endpoint_id, state",
            ).fetchall()
            oldest = self._db.execute(
                conn,
                "SELECT min(next_attempt_at) FROM tidings_webhook_deliveries "
                "WHERE state = 'pending' AND next_attempt_at <= ?",
                (now,),
            ).fetchone()[0]
        totals = dict.fromkeys(STATES, 0)
        per_endpoint: dict[str, dict[str, int]] = {}
        for endpoint_id, state, count in rows:
            totals[state] += int(count)
            per_endpoint.setdefault(endpoint_id, dict.fromkeys(STATES, 0))[state] = int(count)
        return QueueStats(
            pending=totals["pending"],
            delivering=totals["delivering"],
            delivered=totals["delivered"],
            dead=totals["dead"],
            oldest_pending_age=None if oldest is None else max(0.0, now - float(oldest)),
            per_endpoint=per_endpoint,
        )

    async def astats(self) -> QueueStats:
        return await asyncio.to_thread(self.stats)

    def close(self) -> None:
        """Close the queue's own connections (the store stays open)."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __repr__(self) -> str:
        return f"<DeliveryQueue on {type(self.store).__name__} {self._db.where}>"
