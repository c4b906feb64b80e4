"""Every statement of the PostgreSQL transport, written once per schema and channel."""

from __future__ import annotations


class _Sql:
    """Every statement, written once per schema (the schema name is validated, then quoted).
    The tables come from the migration files in ``transports/postgres/sql/postgres/``."""

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
