"""Dead letters of the PostgreSQL transport: writing, listing and replaying them."""

from __future__ import annotations

from tidings.transport import DeadMessage
from tidings.transports.postgres.connection import Conn, PostgresConnection


class PostgresDeadLetters(PostgresConnection):
    """Dead-letter methods of ``PostgresTransport``; rows live in the schema's ``dead_letters``."""

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
