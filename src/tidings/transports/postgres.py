"""PostgreSQL transport: a durable message queue in plain tables, woken by LISTEN/NOTIFY.

Why tables and not NOTIFY alone: a NOTIFY sent while nobody listens is gone, and its payload
is limited to 8 kB. Here every message is a row, so it survives a crash, a dropped connection
or a restart of the consumer; NOTIFY only wakes consumers early and a poll at ``poll_interval``
covers any lost notification.

Layout, all in one schema (``?schema=``, default ``tidings_queue``; the event store keeps its
own tables elsewhere):

- ``messages``: one row per published event (body kept as the exact encoded bytes).
- ``subscriptions``: every durable consumer (a group, or one broadcast subscriber) with the
  POSIX regex of its glob pattern, so a publish can match it inside PostgreSQL.
- ``deliveries``: one row per (subscription, message) still to be handled. The row is created
  *at publish time* in the same statement that inserts the message (fan-out on write). A
  per-subscription cursor over ``messages.id`` would be cheaper to write but is unsafe:
  sequence values are not committed in order, so a cursor can step past a row that commits
  later and lose it. A delivery row cannot be skipped; ack deletes it.
- ``dead_letters``: per subscription, with the error and attempt count; replay re-queues them.

Claims lease rows (``lease_until = now() + ack_wait``, renewed while the handler runs); an
expired lease is claimable again, which is the redelivery after a consumer crash. Claims of one
subscription are serialised by a transaction advisory lock and skip every key that still has a
row leased by another consumer, so two members of a group never work on the same key at once and
a key's messages are handed out in publish order (a consumer may take more of a key it already
holds: its Dispatcher runs them in order behind the first). Acks are buffered and deleted in
batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tidings.event import Event, EventError, decode, encode
from tidings.migrations import MigrationError, postgres_apply
from tidings.topics import Pattern, compile_pattern
from tidings.transport import (
    AsyncHandler,
    Capabilities,
    DeadMessage,
    Inbound,
    SubscribeOptions,
    TransportError,
    TransportHealth,
    TransportState,
    TransportStats,
    TransportSubscription,
    subscription_name,
)
from tidings.transports.common import Backoff, ConnectionReporter, ErrorCallback, Options
from tidings.transports.dispatch import Dispatcher, DispatchStats
from tidings.urls import redact_url

__all__ = ["PostgresSubscription", "PostgresTransport", "glob_to_regex"]

log = logging.getLogger("tidings.transports.postgres")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_REGEX_SPECIAL = set("\\^$.|?*+()[]{}")
_OPT = Options("PostgreSQL transport")
# Options this transport reads from the URL query (and keywords), each with its reader; every
# other query parameter goes to libpq.
_URL_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "schema": lambda _name, value: str(value),
    "channel": lambda _name, value: str(value),
    "poll_interval": _OPT.duration,
    "batch_size": _OPT.integer,
    "retention": _OPT.number,  # 0 or less: keep forever
    "housekeeping_interval": _OPT.duration,
    "broadcast_ttl": _OPT.duration,
    "pool_size": _OPT.integer,
    "connect_timeout": _OPT.duration,
    "reconnect_timeout": _OPT.number,
}


def glob_to_regex(pattern: Pattern) -> str:
    """The POSIX regex (PostgreSQL ``~``) that matches exactly what ``pattern.matches`` does.

    ``*`` is one segment (possibly empty), ``**`` zero or more; each ``**`` absorbs the dot
    next to it so ``a.**.z`` matches ``a.z`` as well as ``a.b.c.z``.
    """
    segs = pattern.segments
    if segs == ("**",):
        return "^.*$"
    out: list[str] = ["^"]
    dot_needed = False
    for i, seg in enumerate(segs):
        if seg == "**":
            out.append(r"([^.]*\.)*" if i == 0 else r"(\.[^.]*)*")
            dot_needed = i != 0
            continue
        atom = (
            "[^.]*" if seg == "*" else "".join("\\" + c if c in _REGEX_SPECIAL else c for c in seg)
        )
        out.append((r"\." if dot_needed else "") + atom)
        dot_needed = True
    out.append("$")
    return "".join(out)


_PIPELINE = psycopg.AsyncPipeline.is_supported()
_Row = tuple[str | None, str, str | None, bytes]  # event id, type, key, body


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return  # the caller was cancelled; the outcome is theirs no more
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


def _pipeline(conn: Conn) -> contextlib.AbstractAsyncContextManager[Any]:
    """Pipeline mode (several statements, one round trip) where libpq has it (>= 14)."""
    return conn.pipeline() if _PIPELINE else contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class _Settings:
    conninfo: str
    redacted: str
    where: str  # host:port, for error messages
    schema: str
    channel: str
    poll_interval: float
    batch_size: int
    retention: float | None
    housekeeping_interval: float
    broadcast_ttl: float
    pool_size: int
    connect_timeout: float
    reconnect_timeout: float
    application_name: str


def _parse(url: str, options: dict[str, Any]) -> _Settings:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise TransportError(
            f"PostgreSQL transport: expected a postgresql:// URL, got {parts.scheme!r}"
        )
    ours: dict[str, Any] = {}
    libpq: list[tuple[str, str]] = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _URL_OPTIONS:
            ours[k] = _URL_OPTIONS[k](k, v)
        else:
            libpq.append((k, v))
    _OPT.unknown(options, [*_URL_OPTIONS, "application_name", "on_error"])
    ours.update({k: _URL_OPTIONS[k](k, v) for k, v in options.items() if k in _URL_OPTIONS})
    app = options.get("application_name") or dict(libpq).get("application_name")
    if not app:
        app = f"tidings-transport-{uuid.uuid4().hex[:8]}"
    libpq = [(k, v) for k, v in libpq if k != "application_name"]
    libpq.append(("application_name", app))
    schema = ours.get("schema", "tidings_queue")
    if not _SCHEMA_RE.match(schema):
        raise TransportError(
            f"PostgreSQL transport: schema {schema!r} must be lower-case letters, digits and "
            "underscores, starting with a letter or underscore (at most 63 characters)"
        )
    channel = ours.get("channel") or f"tidings_q_{schema}"[:63]
    if not _SCHEMA_RE.match(channel):
        raise TransportError(
            f"PostgreSQL transport: channel {channel!r} must be lower-case letters, digits and "
            "underscores, starting with a letter or underscore (at most 63 characters)"
        )
    retention = float(ours.get("retention", 7 * 86400.0))
    host = unquote(parts.hostname or "localhost")
    where = f"{host}:{parts.port or 5432}"
    conninfo = urlunsplit(parts._replace(query=urlencode(libpq)))
    return _Settings(
        conninfo=conninfo,
        redacted=redact_url(url),
        where=where,
        schema=schema,
        channel=channel,
        poll_interval=float(ours.get("poll_interval", 1.0)),
        batch_size=int(ours.get("batch_size", 256)),
        retention=retention if retention > 0 else None,
        housekeeping_interval=float(ours.get("housekeeping_interval", 60.0)),
        broadcast_ttl=float(ours.get("broadcast_ttl", 3600.0)),
        pool_size=int(ours.get("pool_size", 4)),
        connect_timeout=float(ours.get("connect_timeout", 5.0)),
        reconnect_timeout=float(ours.get("reconnect_timeout", 30.0)),
        application_name=app,
    )


class _Sql:
    """Every statement, written once per schema (the schema name is validated, then quoted).
    The tables come from the migration files in ``transports/sql/postgres/``."""

    def __init__(self, schema: str, channel: str) -> None:
        s = f'"{schema}"'
        self.channel = channel
        # Patterns are matched once per distinct type of the batch, not once per event.
        # The publish returns the subscriptions it queued work for; the NOTIFY payload names
        # them (with too many names it is empty, which wakes every subscription).
        fan_out = f"""
            hit AS (
                SELECT t.type, sub.name
                FROM (SELECT DISTINCT type FROM m) t
                JOIN {s}.subscriptions sub ON t.type ~ sub.regex),
            d AS (
                INSERT INTO {s}.deliveries (subscription, message_id, key)
                SELECT hit.name, m.id, m.key FROM m JOIN hit ON hit.type = m.type
                RETURNING subscription),
            names AS (SELECT string_agg(DISTINCT subscription, ',') AS n FROM d)
            SELECT n FROM names"""
        # Sent right after COMMIT, not inside the publishing transaction: a NOTIFY inside it
        # would hold PostgreSQL's global notify lock across the commit's WAL flush, which
        # serialises every publisher. Alone, and without waiting for a flush, it is brief.
        self.notify = f"""
            SELECT set_config('synchronous_commit', 'off', true),
                   pg_notify('{self.channel}', %s)"""
        self.xid = "SELECT txid_current()"
        self.xid_status = "SELECT txid_status(%s)"
        self.publish_one = f"""
            WITH m AS (
                INSERT INTO {s}.messages (event_id, type, key, body) VALUES (%s, %s, %s, %s)
                RETURNING id, type, key),
            {fan_out}"""
        self.publish_batch = f"""
            WITH m AS (
                INSERT INTO {s}.messages (event_id, type, key, body)
                SELECT e, t, k, b
                FROM unnest(%b::text[], %b::text[], %b::text[], %b::bytea[])
                    WITH ORDINALITY AS u(e, t, k, b, n)
                ORDER BY n
                RETURNING id, type, key),
            {fan_out}"""
        self.register = f"""
            INSERT INTO {s}.subscriptions (name, pattern, regex, group_name)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (name) DO UPDATE SET last_seen = now()
            RETURNING (xmax = 0)"""
        # Taken after the subscription row is committed: SHARE waits for every publish in
        # flight (they hold ROW EXCLUSIVE) so none can slip between the two.
        self.backfill_lock = f"LOCK TABLE {s}.messages IN SHARE MODE"
        self.backfill = f"""
            INSERT INTO {s}.deliveries (subscription, message_id, key)
            SELECT %s, m.id, m.key FROM {s}.messages m WHERE m.type ~ %s
            ON CONFLICT DO NOTHING"""
        # The claim's best plan walks the primary key in order and stops at LIMIT; a fresh
        # (not yet analysed) queue table tempts the planner into scanning and sorting the
        # whole backlog instead, so this transaction rules those plans out.
        self.claim_lock = """
            SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s)),
                   set_config('enable_seqscan', 'off', true),
                   set_config('enable_bitmapscan', 'off', true),
                   set_config('enable_sort', 'off', true),
                   set_config('synchronous_commit', 'off', true)"""
        # Claims and acks commit without waiting for the WAL flush: if the server crashes
        # and forgets one, the message is simply delivered again (at-least-once holds).
        # Publishes and dead letters keep the server's synchronous_commit: they must last.
        self.async_commit = "SELECT set_config('synchronous_commit', 'off', true)"
        self.claim = f"""
            WITH busy AS (
                SELECT coalesce(array_agg(DISTINCT key), '{{}}') AS keys
                FROM {s}.deliveries
                WHERE subscription = %(sub)s AND lease_until > now() AND key IS NOT NULL
                  AND owner IS DISTINCT FROM %(owner)s),
            picked AS (
                SELECT d.message_id FROM {s}.deliveries d, busy
                WHERE d.subscription = %(sub)s
                  AND (d.lease_until IS NULL OR d.lease_until <= now())
                  AND (d.key IS NULL OR NOT d.key = ANY(busy.keys))
                ORDER BY d.message_id
                LIMIT %(limit)s)
            UPDATE {s}.deliveries d
            SET lease_until = now() + %(lease)s * interval '1 second',
                owner = %(owner)s, attempts = d.attempts + 1
            FROM {s}.messages m
            WHERE d.subscription = %(sub)s
              AND d.message_id = ANY(ARRAY(SELECT message_id FROM picked))
              AND m.id = d.message_id
              AND (d.lease_until IS NULL OR d.lease_until <= now())
            RETURNING d.message_id, d.attempts, m.body"""
        self.next_expiry = f"""
            SELECT extract(epoch FROM min(lease_until) - now()) FROM {s}.deliveries
            WHERE subscription = %s AND lease_until > now() AND owner IS DISTINCT FROM %s"""
        self.ack = f"DELETE FROM {s}.deliveries WHERE subscription = %s AND message_id = ANY(%b)"
        self.nack = f"""
            WITH u AS (
                UPDATE {s}.deliveries SET lease_until = NULL, owner = NULL
                WHERE subscription = %(sub)s AND owner = %(owner)s AND message_id = ANY(%(ids)s)
                RETURNING 1)
            SELECT pg_notify('{self.channel}', %(sub)s) WHERE EXISTS (SELECT 1 FROM u)"""
        self.renew = f"""
            UPDATE {s}.deliveries SET lease_until = now() + %s * interval '1 second'
            WHERE subscription = %s AND owner = %s AND message_id = ANY(%s)"""
        self.touch = f"UPDATE {s}.subscriptions SET last_seen = now() WHERE name = %s"
        self.lag = f"SELECT count(*) FROM {s}.deliveries WHERE subscription = %s"
        self.drop_sub = [
            f"DELETE FROM {s}.subscriptions WHERE name = %s",
            f"DELETE FROM {s}.deliveries WHERE subscription = %s",
        ]
        self.bury = f"""
            INSERT INTO {s}.dead_letters (subscription, event_id, type, key, body, error, attempts)
            VALUES (%s, %s, %s, %s, %s, %s, %s)"""
        self.dead = f"""
            SELECT subscription, body, error, attempts, extract(epoch FROM failed_at),
                   event_id, type
            FROM {s}.dead_letters WHERE subscription = %s ORDER BY id LIMIT %s"""
        # Replay goes to the one subscription it died in (not to every subscriber again).
        self.replay = f"""
            WITH dl AS (
                DELETE FROM {s}.dead_letters WHERE subscription = %(sub)s
                RETURNING id, event_id, type, key, body),
            m AS (
                INSERT INTO {s}.messages (event_id, type, key, body)
                SELECT event_id, coalesce(type, ''), key, body FROM dl ORDER BY id
                RETURNING id, key),
            d AS (
                INSERT INTO {s}.deliveries (subscription, message_id, key)
                SELECT %(sub)s, m.id, m.key FROM m
                RETURNING 1)
            SELECT count(*), pg_notify('{self.channel}', %(sub)s) FROM d"""
        self.housekeeping_lock = "SELECT pg_try_advisory_xact_lock(hashtext(%s), 0)"
        self.expire_broadcast = f"""
            DELETE FROM {s}.subscriptions
            WHERE group_name IS NULL AND last_seen < now() - %s * interval '1 second'
            RETURNING name"""
        self.drop_deliveries = f"DELETE FROM {s}.deliveries WHERE subscription = ANY(%s)"
        self.retention = f"""
            DELETE FROM {s}.messages WHERE id IN (
                SELECT m.id FROM {s}.messages m
                WHERE m.created_at < now() - %s * interval '1 second'
                  AND m.id NOT IN (SELECT message_id FROM {s}.deliveries)
                ORDER BY m.id LIMIT 10000)"""


_CAPABILITIES = Capabilities(
    ordering=True, persistent=True, consumer_groups=True, replay=True, redelivery=True
)


class PostgresTransport:
    """A Transport over PostgreSQL tables (see the module docstring for the design).

    URL: ``postgresql://user:pass@host:5432/db?schema=tidings_queue&poll_interval=1.0``; the
    options below may also be passed as keyword arguments (keywords win). Other query
    parameters (``sslmode``, ``application_name``, ...) go to libpq unchanged.

    - ``schema``: where the queue tables live (created on ``start``).
    - ``channel``: the LISTEN/NOTIFY channel (default ``tidings_q_<schema>``); every process
      of one queue must use the same one.
    - ``poll_interval``: seconds between polls when no NOTIFY arrives (the fallback).
    - ``batch_size``: most messages one claim takes.
    - ``retention``: seconds a fully acked message is kept for ``start="earliest"``
      subscribers; ``0`` keeps them forever.
    - ``housekeeping_interval``: how often retention and stale-subscriber cleanup run.
    - ``broadcast_ttl``: a broadcast subscriber not seen for this long (crashed without
      ``close``) is removed with its backlog; groups are durable and never expire.
    - ``pool_size``, ``connect_timeout``, ``reconnect_timeout``: connection handling; a
      publish keeps retrying a lost connection for ``reconnect_timeout`` seconds.
    - ``on_error``: callable given every error a background task meets (also logged).
    """

    capabilities = _CAPABILITIES

    def __init__(self, url: str, *, on_error: ErrorCallback | None = None, **options: Any) -> None:
        self._cfg = _parse(url, options)
        self._raw_url = url
        self.url = self._cfg.redacted  # public and printable: the password shows as ***
        self._sql = _Sql(self._cfg.schema, self._cfg.channel)
        self._on_error = on_error
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._link = ConnectionReporter(
            log,
            "postgres transport",
            self._cfg.where,
            on_error=on_error,
            state=TransportState.CLOSED,
            render=str,
        )
        self._subs: list[PostgresSubscription] = []
        self.stats = TransportStats()  # read by exporters
        self._listener: asyncio.Task[None] | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._outbox: list[tuple[_Row, asyncio.Future[None]]] = []
        self._publisher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def application_name(self) -> str:
        """The ``application_name`` of every connection this transport opens."""
        return self._cfg.application_name

    async def start(self) -> None:
        if self._started:
            return
        self._link.state = TransportState.CONNECTING
        try:
            conn = await asyncio.to_thread(self._connect_sync)
        except psycopg.Error as exc:
            self._link.state = TransportState.DISCONNECTED
            raise self._error("cannot connect", exc) from None
        try:
            await asyncio.to_thread(self._migrate, conn)
        except (psycopg.Error, MigrationError) as exc:
            self._link.state = TransportState.DISCONNECTED
            raise self._error(
                f"cannot create the queue tables in schema {self._cfg.schema!r}", exc
            ) from None
        self._pool = AsyncConnectionPool(
            self._cfg.conninfo,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=self._cfg.pool_size,
            open=False,
            timeout=self._cfg.reconnect_timeout,
            reconnect_timeout=self._cfg.reconnect_timeout,
            name=self._cfg.application_name,
        )
        try:
            await self._pool.open(wait=True, timeout=self._cfg.connect_timeout)
        except psycopg.Error as exc:
            await self._pool.close()
            self._link.state = TransportState.DISCONNECTED
            raise self._error("cannot open the connection pool", exc) from None
        self._started = True
        self._link.state = TransportState.CONNECTED
        self._housekeeper = asyncio.create_task(self._housekeeping_loop())

    def _connect_sync(self) -> psycopg.Connection[Any]:
        timeout = max(1, round(self._cfg.connect_timeout))
        return psycopg.connect(self._cfg.conninfo, autocommit=True, connect_timeout=timeout)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or update the queue tables: migration component ``transport_postgres``,
        recorded in the schema itself (see tidings.migrations); up to date costs two reads."""
        with conn:
            postgres_apply(conn, ("transport_postgres",), schema=self._cfg.schema)

    async def close(self, timeout: float = 5.0) -> None:
        if self._closing:
            return
        self._closing = True
        subs = list(self._subs)
        if subs:
            await asyncio.gather(*(s.close(timeout) for s in subs), return_exceptions=True)
        if self._publisher is not None and not self._publisher.done():
            # Publishes already called get their chance to commit before the pool goes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._publisher), timeout)
        for task in (self._publisher, self._listener, self._housekeeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for _, fut in self._outbox:
            _settle(fut, TransportError("PostgreSQL transport closed before the publish"))
        self._outbox.clear()
        if self._pool is not None:
            await self._pool.close(timeout=timeout)
        self._link.state = TransportState.CLOSED

    # ------------------------------------------------------------------ publish

    async def publish(self, event: Event) -> None:
        await self.publish_raw(encode(event), event.type, key=event.key, event_id=event.id)

    async def publish_raw(
        self, body: bytes, type: str, *, key: str | None = None, event_id: str | None = None
    ) -> None:
        """Publish bytes that are already encoded (a relay, or a test of undecodable input).

        Concurrent publishes share a transaction (group commit): while one commit waits for
        the server's disk, the publishes that arrive meanwhile queue up and go in the next
        one, in call order. Each call still returns only once its event is committed.
        """
        self._require_started()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append(((event_id, type, key, body), fut))
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish_loop())
        await fut
        self.stats.published += 1

    async def _publish_loop(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox[:5000], self._outbox[5000:]
            try:
                await self._store([row for row, _ in batch], "publish")
            except Exception as exc:
                if len(batch) > 1 and not isinstance(exc.__cause__, psycopg.OperationalError):
                    # A bad event (say, a NUL in its type) must fail only its own publish.
                    for row, fut in batch:
                        try:
                            await self._store([row], "publish")
                        except Exception as one:
                            _settle(fut, one)
                        else:
                            _settle(fut, None)
                    continue
                for _, fut in batch:
                    _settle(fut, exc)
            else:
                for _, fut in batch:
                    _settle(fut, None)

    async def publish_many(self, events: Sequence[Event]) -> None:
        """One statement per 5,000 events, one transaction: all are stored or none."""
        if not events:
            return
        await self._store([(e.id, e.type, e.key, encode(e)) for e in events], "publish_many")
        self.stats.published += len(events)

    async def _store(self, rows: list[_Row], what: str) -> None:
        """Insert and fan out ``rows`` exactly once, even when the connection drops at commit.

        The transaction id is read before COMMIT is sent. If the connection is lost after that,
        the commit may or may not have happened; ``txid_status`` on a fresh connection says
        which, so a retry never stores the events twice and a failure never loses them.
        """
        sql = self._sql
        chunks = [rows[i : i + 5000] for i in range(0, len(rows), 5000)]
        sent: list[int] = []  # xid of an attempt whose COMMIT went out

        async def run(conn: Conn) -> None:
            if sent and await self._committed(conn, sent[-1]):
                return
            names: set[str] = set()
            async with _pipeline(conn) as pipe:
                async with conn.transaction():
                    xid_cur = await conn.execute(sql.xid)
                    curs = []
                    for chunk in chunks:
                        if len(chunk) == 1:
                            curs.append(await conn.execute(sql.publish_one, chunk[0]))
                        else:
                            # Binary parameters (%b): dumping arrays as text costs 6x more.
                            cols = (list(col) for col in zip(*chunk, strict=True))
                            curs.append(await conn.execute(sql.publish_batch, tuple(cols)))
                    if pipe is not None:
                        await pipe.sync()  # one round trip: BEGIN, xid and the inserts
                    row = await xid_cur.fetchone()
                    if row is None:
                        raise TransportError(f"{what}: the server returned no transaction id")
                    sent.append(int(row[0]))
                    for cur in curs:
                        got = await cur.fetchone()
                        if got and got[0]:
                            names.update(got[0].split(","))
                # COMMIT is on its way (the only ambiguous moment); NOTIFY travels with it.
                if names:
                    payload = ",".join(sorted(names))
                    await conn.execute(sql.notify, (payload if len(payload) < 7000 else "",))

        await self._run(run, what)

    async def _committed(self, conn: Conn, xid: int) -> bool:
        """Did the transaction ``xid`` (whose connection was lost at COMMIT) commit?"""
        deadline = time.monotonic() + self._cfg.connect_timeout
        while True:
            cur = await conn.execute(self._sql.xid_status, (xid,))
            row = await cur.fetchone()
            status = row[0] if row else None
            if status == "committed":
                return True
            if status != "in progress":
                return False  # aborted (or unknown): store them now
            if time.monotonic() > deadline:
                raise TransportError(
                    f"PostgreSQL transport at {self._cfg.where}: a publish lost its connection "
                    f"at commit and transaction {xid} is still in progress; "
                    "its outcome is unknown"
                )
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ subscribe

    async def subscribe(
        self,
        pattern: str,
        handler: AsyncHandler,
        options: SubscribeOptions | None = None,
    ) -> PostgresSubscription:
        compiled = compile_pattern(pattern)  # PatternError before anything touches the server
        opts = options or SubscribeOptions()
        self._require_started()
        name = subscription_name(pattern, opts.group)
        regex = glob_to_regex(compiled)

        async def register(conn: Conn) -> bool:
            cur = await conn.execute(self._sql.register, (name, pattern, regex, opts.group))
            row = await cur.fetchone()
            return bool(row and row[0])

        created = await self._run(register, "subscribe")
        if created and opts.start == "earliest":

            async def backfill(conn: Conn) -> None:
                async with conn.transaction():
                    await conn.execute(self._sql.backfill_lock)
                    await conn.execute(self._sql.backfill, (name, regex))

            await self._run(backfill, "subscribe (backfill)")
        sub = PostgresSubscription(self, name, pattern, opts, handler)
        self._subs.append(sub)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen_loop())
        sub._start()
        return sub

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadMessage]:
        async def run(conn: Conn) -> list[DeadMessage]:
            cur = await conn.execute(self._sql.dead, (subscription, limit), binary=True)
            return [
                DeadMessage(
                    subscription=r[0],
                    raw=bytes(r[1]),
                    error=r[2],
                    attempts=r[3],
                    failed_at=float(r[4]),
                    event_id=r[5],
                    event_type=r[6],
                )
                for r in await cur.fetchall()
            ]

        return await self._run(run, "dead_letters")

    async def replay_dead_letters(self, subscription: str) -> int:
        """Queue the dead messages again for ``subscription`` only, in their original order."""

        async def run(conn: Conn) -> int:
            cur = await conn.execute(self._sql.replay, {"sub": subscription})
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._run(run, "replay_dead_letters")

    async def _write_dead_letter(self, dead: DeadMessage, key: str | None) -> None:
        params = (
            dead.subscription,
            dead.event_id,
            dead.event_type,
            key,
            dead.raw,
            dead.error,
            dead.attempts,
        )

        async def run(conn: Conn) -> None:
            await conn.execute(self._sql.bury, params)

        await self._run(run, "dead letter", retry_for=self._cfg.connect_timeout)

    # ------------------------------------------------------------------ health

    async def ping(self) -> float:
        self._require_started()
        t0 = time.perf_counter()

        async def run(conn: Conn) -> None:
            await conn.execute("SELECT 1")

        await self._run(run, "ping", retry_for=self._cfg.connect_timeout)
        return time.perf_counter() - t0

    def subscriptions(self) -> list[TransportSubscription]:
        return list(self._subs)

    def health(self) -> TransportHealth:
        lags = {s.name: s.lag for s in self._subs if s.lag is not None}
        return TransportHealth(
            state=self._link.state,
            last_error=self._link.last_error,
            lag=sum(lags.values()) if lags else (0 if self._subs else None),
            detail={
                "server": self._cfg.where,
                "schema": self._cfg.schema,
                "application_name": self._cfg.application_name,
                "subscriptions": lags,
                "listening": self._listener is not None and not self._listener.done(),
            },
        )

    async def purge(self) -> int:
        """Run retention now: delete fully acked messages older than ``retention``."""
        if self._cfg.retention is None:
            return 0
        retention = self._cfg.retention

        async def run(conn: Conn) -> int:
            total = 0
            while True:
                cur = await conn.execute(self._sql.retention, (retention,))
                total += cur.rowcount
                if cur.rowcount < 10000:
                    return total

        return await self._run(run, "retention")

    # ------------------------------------------------------------------ internals

    def _require_started(self) -> None:
        if not self._started or self._pool is None:
            raise TransportError("PostgreSQL transport: call `await transport.start()` first")
        if self._closing:
            raise TransportError("PostgreSQL transport: the transport is closed")

    def _error(self, what: str, exc: BaseException) -> TransportError:
        detail = str(exc).strip().replace(self._raw_url, self._cfg.redacted) or type(exc).__name__
        return TransportError(
            f"PostgreSQL transport: {what} at {self._cfg.where} ({self._cfg.redacted}): {detail}"
        )

    def _report(self, where: str, exc: BaseException) -> None:
        """Background failures: remember, log and hand to ``on_error`` (never silent)."""
        self._link.report(exc, where, lost=isinstance(exc, psycopg.OperationalError))

    def _connected(self) -> None:
        if not self._closing:
            self._link.connected()

    async def _run(
        self, op: Callable[[Conn], Awaitable[T]], what: str, *, retry_for: float | None = None
    ) -> T:
        """Run ``op`` on a pooled connection; retry lost connections for reconnect_timeout.

        A statement that fails because its connection was dropped is retried on a fresh one
        (``op`` must be safe to repeat; publishes make sure with ``txid_status``).
        """
        pool = self._pool
        if pool is None:
            raise TransportError("PostgreSQL transport: call `await transport.start()` first")
        patience = self._cfg.reconnect_timeout if retry_for is None else retry_for
        deadline = time.monotonic() + patience
        attempt = 0
        backoff = Backoff(0.05, cap=1.0)
        while True:
            try:
                async with pool.connection() as conn:
                    result = await op(conn)
            except psycopg.OperationalError as exc:
                self._report(what, exc)
                attempt += 1
                if self._closing or time.monotonic() >= deadline:
                    raise self._error(f"{what} failed", exc) from exc
                if attempt == 1:
                    # A dropped server drops every idle connection too: test and discard
                    # them all at once instead of failing on each in turn.
                    with contextlib.suppress(Exception):
                        await pool.check()
                else:
                    await backoff.sleep()
                continue
            except psycopg.Error as exc:
                raise self._error(f"{what} failed", exc) from exc
            self._connected()
            return result

    async def _listen_loop(self) -> None:
        """LISTEN on the schema's channel; on any loss reconnect, re-LISTEN and wake everyone."""
        backoff = Backoff(0.1, cap=2.0)
        while not self._closing:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._cfg.conninfo,
                    autocommit=True,
                    connect_timeout=max(1, round(self._cfg.connect_timeout)),
                )
                async with conn:
                    await conn.execute(f'LISTEN "{self._sql.channel}"')
                    backoff.reset()
                    self._connected()
                    self._wake_all()  # anything published while we were away
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._is_closing():
                    return
                self._report("listen", exc)
                self._wake_all()
                await backoff.sleep()

    def _is_closing(self) -> bool:
        return self._closing

    def _wake(self, payload: str) -> None:
        """Wake the subscriptions a NOTIFY names (all of them for an empty payload)."""
        if not payload:
            self._wake_all()
            return
        names = set(payload.split(","))
        for sub in self._subs:
            if sub.name in names:
                sub._wake.set()

    def _wake_all(self) -> None:
        for sub in self._subs:
            sub._wake.set()

    async def _housekeeping_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._cfg.housekeeping_interval)
            try:
                await self._housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._report("housekeeping", exc)

    async def _housekeeping(self) -> None:
        """Retention and removal of crashed broadcast subscribers; one process at a time."""
        ttl = self._cfg.broadcast_ttl

        async def run(conn: Conn) -> None:
            async with conn.transaction():
                cur = await conn.execute(self._sql.housekeeping_lock, [self._cfg.schema])
                row = await cur.fetchone()
                if not row or not row[0]:
                    return
                cur = await conn.execute(self._sql.expire_broadcast, (ttl,))
                gone = [r[0] for r in await cur.fetchall()]
                if gone:
                    log.warning("removed %d stale broadcast subscription(s): %s", len(gone), gone)
                    await conn.execute(self._sql.drop_deliveries, (gone,))

        await self._run(run, "housekeeping", retry_for=0)
        await self.purge()


class PostgresSubscription:
    """One consumer: claims leased batches, hands them to the shared Dispatcher, acks in bulk."""

    def __init__(
        self,
        transport: PostgresTransport,
        name: str,
        pattern: str,
        options: SubscribeOptions,
        handler: AsyncHandler,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.group = options.group
        self.options = options
        self.lag: int | None = None
        self._t = transport
        self._owner = f"{transport.application_name}-{uuid.uuid4().hex[:8]}"
        self._unsettled: set[int] = set()  # claimed, handler not finished
        self._held: set[int] = set()  # claimed, row not yet deleted or handed back
        self._acks: list[int] = []
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._ack_ready = asyncio.Event()
        self._stopping = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.dispatcher = Dispatcher(
            name, handler, options, self._write_dead_letter, on_error=transport._on_error
        )

    @property
    def stats(self) -> DispatchStats:
        """The dispatcher's counters: received, handled, retried, dead, undecodable, ..."""
        return self.dispatcher.stats

    def _is_stopping(self) -> bool:
        return self._stopping

    def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._consume()),
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self._heartbeat()),
        ]

    async def _write_dead_letter(self, dead: DeadMessage) -> None:
        key = None
        with contextlib.suppress(Exception):
            ev = dead.event()
            key = ev.key if ev is not None else None
        await self._t._write_dead_letter(dead, key)

    # ---------------------------------------------------------------- consume

    async def _consume(self) -> None:
        t, sql = self._t, self._t._sql
        # Claim up to one batch ahead of the handlers (prefetch), so the next claim's round
        # trip overlaps the current batch's handling; the Dispatcher still bounds how many
        # handlers run at once.
        ahead = min(self.options.max_in_flight, t._cfg.batch_size)
        cap = self.options.max_in_flight + ahead
        min_claim = max(1, ahead // 4)
        backoff = Backoff(0.05, cap=2.0)
        while not self._stopping:
            free = cap - len(self._unsettled)
            if free < min_claim:
                # Let a few finish so claims stay batches, not one row per round trip.
                self._capacity.clear()
                await self._capacity.wait()
                for _ in range(3):
                    await asyncio.sleep(0)
                continue
            self._wake.clear()
            limit = min(free, t._cfg.batch_size)
            try:
                rows = await self._claim(limit)
            except Exception as exc:
                if self._is_stopping():
                    return
                t._report(f"claim for {self.name}", exc)
                await backoff.sleep()
                continue
            backoff.reset()
            if rows:
                rows.sort()
                for mid, attempts, body in rows:
                    if mid in self._unsettled:
                        continue  # our own lease lapsed and we claimed it again; still running
                    await self.dispatcher.submit(self._inbound(mid, attempts, bytes(body)))
                continue
            wait = t._cfg.poll_interval
            try:
                async with t._pool.connection() as conn:  # type: ignore[union-attr]
                    cur = await conn.execute(sql.next_expiry, (self.name, self._owner))
                    row = await cur.fetchone()
                if row and row[0] is not None:
                    wait = min(wait, max(float(row[0]), 0.0) + 0.01)
            except psycopg.Error:
                pass  # the next claim reports it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _claim(self, limit: int) -> list[tuple[int, int, bytes]]:
        t, sql = self._t, self._t._sql
        params = {
            "sub": self.name,
            "limit": limit,
            "lease": self.options.ack_wait,
            "owner": self._owner,
        }

        async def run(conn: Conn) -> list[tuple[int, int, bytes]]:
            # Pipelined: BEGIN, lock, claim and COMMIT travel in one network round trip.
            async with _pipeline(conn), conn.transaction():
                # One claimer per subscription at a time: SKIP LOCKED alone cannot see that a
                # concurrent claimer just took an earlier message of the same key.
                await conn.execute(sql.claim_lock, (t._cfg.schema, self.name))
                cur = await conn.execute(sql.claim, params, binary=True)
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

        rows = await t._run(run, "claim", retry_for=1.0)
        for mid, _, _ in rows:
            self._held.add(mid)
        return rows

    def _inbound(self, mid: int, attempts: int, body: bytes) -> Inbound:
        try:
            event: Event | None = decode(body)
            error = None
        except EventError as exc:
            event, error = None, str(exc)
        except Exception as exc:  # a body that is not even text
            event, error = None, f"{type(exc).__name__}: {exc}"
        self._unsettled.add(mid)

        async def ack() -> None:
            if mid in self._unsettled:
                self._unsettled.discard(mid)
                self._acks.append(mid)
                self._ack_ready.set()
                self._capacity.set()

        async def nack() -> None:
            self._unsettled.discard(mid)
            self._capacity.set()
            await self._hand_back([mid])

        return Inbound(
            raw=body,
            event=event,
            ack=ack,
            nack=nack,
            delivery_count=attempts,
            decode_error=error,
        )

    async def _hand_back(self, ids: list[int]) -> None:
        """Nack: clear our lease so any member may claim the messages at once."""
        t = self._t
        for mid in ids:
            self._held.discard(mid)

        async def run(conn: Conn) -> None:
            await conn.execute(t._sql.nack, {"sub": self.name, "owner": self._owner, "ids": ids})

        await t._run(run, "nack", retry_for=0)
        self._wake.set()

    # ---------------------------------------------------------------- acks and leases

    async def _flush_loop(self) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            try:
                await self._flush()
            except Exception as exc:
                self._t._report(f"ack for {self.name}", exc)
                self._ack_ready.set()
                await asyncio.sleep(0.2)

    async def _flush(self) -> None:
        """Delete acked rows in one statement; on failure they stay queued for the next try."""
        if not self._acks:
            return
        ids, self._acks = self._acks, []
        t = self._t

        async def run(conn: Conn) -> None:
            async with _pipeline(conn), conn.transaction():
                await conn.execute(t._sql.async_commit)
                await conn.execute(t._sql.ack, (self.name, ids))

        try:
            await t._run(run, "ack", retry_for=1.0)
        except BaseException:
            self._acks[:0] = ids
            raise
        self._held.difference_update(ids)
        self._wake.set()  # the keys of these messages are free again

    async def _heartbeat(self) -> None:
        """Renew leases of work in progress, refresh last_seen and the lag figure."""
        t, sql = self._t, self._t._sql
        renew_every = max(0.05, min(self.options.ack_wait / 3, 5.0))
        tick = min(renew_every, 1.0)
        last_renew = last_touch = last_lag = time.monotonic()
        lag_every = 0.99
        while True:
            await asyncio.sleep(tick)
            try:
                now = time.monotonic()
                held = list(self._held) if now - last_renew >= renew_every * 0.99 else []
                async with t._pool.connection() as conn:  # type: ignore[union-attr]
                    if held:
                        await conn.execute(
                            sql.renew, (self.options.ack_wait, self.name, self._owner, held)
                        )
                        last_renew = now
                    if now - last_touch >= 30.0:
                        await conn.execute(sql.touch, (self.name,))
                        last_touch = now
                    if now - last_lag >= lag_every:
                        cur = await conn.execute(sql.lag, (self.name,))
                        row = await cur.fetchone()
                        self.lag = int(row[0]) if row else None
                        last_lag = time.monotonic()
                        # count(*) grows with the backlog: keep it under ~2% of the time.
                        lag_every = max(0.99, 50 * (last_lag - now))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                t._report(f"lease renewal for {self.name}", exc)

    # ---------------------------------------------------------------- close

    async def close(self, timeout: float = 5.0) -> None:
        """Stop claiming, let in-flight handlers finish within ``timeout``, hand back the rest.

        Nothing unfinished is acked: it is released (or its lease runs out) and another
        member gets it. A broadcast subscription is removed with its backlog; a group stays.
        """
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake.set()
        self._capacity.set()
        consumer, flusher, heartbeat = self._tasks
        try:
            await asyncio.wait_for(asyncio.shield(consumer), min(timeout, 1.0))
        except (TimeoutError, Exception):
            consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer
        left = await self.dispatcher.close(timeout)
        if left:
            log.warning(
                "subscription %s: %d message(s) unfinished at close, handed back", self.name, left
            )
        flusher.cancel()
        heartbeat.cancel()
        for task in (flusher, heartbeat):
            with contextlib.suppress(BaseException):
                await task
        try:
            await self._flush()
            pending_acks = set(self._acks)
            unfinished = [m for m in self._held if m not in pending_acks]
            if unfinished:
                await self._hand_back(unfinished)
            if self.group is None:
                await self._drop()
        except Exception as exc:
            # Leases run out by themselves; a broadcast row expires after broadcast_ttl.
            self._t._report(f"close of {self.name}", exc)
        if self in self._t._subs:
            self._t._subs.remove(self)

    async def _drop(self) -> None:
        t = self._t

        async def run(conn: Conn) -> None:
            async with conn.transaction():
                for stmt in t._sql.drop_sub:
                    await conn.execute(stmt, (self.name,))

        await t._run(run, "unsubscribe", retry_for=0)
