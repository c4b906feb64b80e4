"""Publishing on the PostgreSQL transport: group commit, batches, exactly-once on a lost COMMIT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import psycopg

from tidings.event import Event, encode
from tidings.transport import TransportError
from tidings.transports.postgres.connection import Conn, PostgresConnection, _pipeline

_Row = tuple[str | None, str, str | None, bytes]  # event id, type, key, body


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return  # the caller was cancelled; the outcome is theirs no more
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class PostgresPublisher(PostgresConnection):
    """``publish``, ``publish_raw`` and ``publish_many`` of ``PostgresTransport``."""

    _outbox: list[tuple[_Row, asyncio.Future[None]]]
    _publisher: asyncio.Task[None] | None

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
