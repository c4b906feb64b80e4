-- The PostgreSQL transport's statements (tidings.transports.postgres). Read once by queries.py;
-- {schema} is the transport's ?schema= filled in as a quoted identifier, {channel} its
-- LISTEN/NOTIFY channel as a string literal (psycopg.sql), so write a literal brace as {{ }}.
-- The tables come from the migration files next door.

-- ---------------------------------------------------------------- publishing

-- name: fan_out
-- The tail of both publishes (a fragment, not a statement). Patterns are matched once per
-- distinct type of the batch, not once per event. The publish returns the subscriptions it
-- queued work for; the NOTIFY payload names them (with too many names it is empty, which wakes
-- every subscription).
hit AS (
    SELECT t.type, sub.name
    FROM (SELECT DISTINCT type FROM m) t
    JOIN {schema}.subscriptions sub ON t.type ~ sub.regex),
d AS (
    INSERT INTO {schema}.deliveries (subscription, message_id, key)
    SELECT hit.name, m.id, m.key FROM m JOIN hit ON hit.type = m.type
    RETURNING subscription),
names AS (SELECT string_agg(DISTINCT subscription, ',') AS n FROM d)
SELECT n FROM names

-- name: publish_one
WITH m AS (
    INSERT INTO {schema}.messages (event_id, type, key, body) VALUES (%s, %s, %s, %s)
    RETURNING id, type, key),
{fan_out}

-- name: publish_batch
WITH m AS (
    INSERT INTO {schema}.messages (event_id, type, key, body)
    SELECT e, t, k, b
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::bytea[])
        WITH ORDINALITY AS u(e, t, k, b, n)
    ORDER BY n
    RETURNING id, type, key),
{fan_out}

-- name: notify
-- Sent right after COMMIT, not inside the publishing transaction: a NOTIFY inside it would hold
-- PostgreSQL's global notify lock across the commit's WAL flush, which serialises every
-- publisher. Alone, and without waiting for a flush, it is brief.
SELECT set_config('synchronous_commit', 'off', true),
       pg_notify({channel}, %s)

-- name: xid
SELECT txid_current()

-- name: xid_status
-- Whether a publish whose connection dropped around COMMIT did commit.
SELECT txid_status(%s)

-- ---------------------------------------------------------------- subscribing

-- name: register
-- A new subscription, or a sign of life of one that exists; true when it is new.
INSERT INTO {schema}.subscriptions (name, pattern, regex, group_name)
VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET last_seen = now()
RETURNING (xmax = 0)

-- name: backfill_lock
-- Taken after the subscription row is committed: SHARE waits for every publish in flight (they
-- hold ROW EXCLUSIVE) so none can slip between the two.
LOCK TABLE {schema}.messages IN SHARE MODE

-- name: backfill
INSERT INTO {schema}.deliveries (subscription, message_id, key)
SELECT %s, m.id, m.key FROM {schema}.messages m WHERE m.type ~ %s
ON CONFLICT DO NOTHING

-- name: listen
LISTEN {listen_channel}

-- name: ping
SELECT 1

-- ---------------------------------------------------------------- consuming

-- name: claim_lock
-- The claim's best plan walks the primary key in order and stops at LIMIT; a fresh (not yet
-- analysed) queue table tempts the planner into scanning and sorting the whole backlog instead,
-- so this transaction rules those plans out.
SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s)),
       set_config('enable_seqscan', 'off', true),
       set_config('enable_bitmapscan', 'off', true),
       set_config('enable_sort', 'off', true),
       set_config('synchronous_commit', 'off', true)

-- name: async_commit
-- Claims and acks commit without waiting for the WAL flush: if the server crashes and forgets
-- one, the message is simply delivered again (at-least-once holds). Publishes and dead letters
-- keep the server's synchronous_commit: they must last.
SELECT set_config('synchronous_commit', 'off', true)

-- name: claim
-- Up to %(limit)s deliveries in order, skipping keys another consumer holds a lease on.
WITH busy AS (
    SELECT coalesce(array_agg(DISTINCT key), '{{}}') AS keys
    FROM {schema}.deliveries
    WHERE subscription = %(sub)s AND lease_until > now() AND key IS NOT NULL
      AND owner IS DISTINCT FROM %(owner)s),
picked AS (
    SELECT d.message_id FROM {schema}.deliveries d, busy
    WHERE d.subscription = %(sub)s
      AND (d.lease_until IS NULL OR d.lease_until <= now())
      AND (d.key IS NULL OR NOT d.key = ANY(busy.keys))
    ORDER BY d.message_id
    LIMIT %(limit)s)
UPDATE {schema}.deliveries d
SET lease_until = now() + %(lease)s * interval '1 second',
    owner = %(owner)s, attempts = d.attempts + 1
FROM {schema}.messages m
WHERE d.subscription = %(sub)s
  AND d.message_id = ANY(ARRAY(SELECT message_id FROM picked))
  AND m.id = d.message_id
  AND (d.lease_until IS NULL OR d.lease_until <= now())
RETURNING d.message_id, d.attempts, m.body

-- name: next_expiry
-- Seconds until the first lease another consumer holds runs out.
SELECT extract(epoch FROM min(lease_until) - now()) FROM {schema}.deliveries
WHERE subscription = %s AND lease_until > now() AND owner IS DISTINCT FROM %s

-- name: ack
DELETE FROM {schema}.deliveries WHERE subscription = %s AND message_id = ANY(%b)

-- name: nack
-- Release the leases now and wake the subscription's consumers.
WITH u AS (
    UPDATE {schema}.deliveries SET lease_until = NULL, owner = NULL
    WHERE subscription = %(sub)s AND owner = %(owner)s AND message_id = ANY(%(ids)s)
    RETURNING 1)
SELECT pg_notify({channel}, %(sub)s) WHERE EXISTS (SELECT 1 FROM u)

-- name: renew
UPDATE {schema}.deliveries SET lease_until = now() + %s * interval '1 second'
WHERE subscription = %s AND owner = %s AND message_id = ANY(%s)

-- name: touch
UPDATE {schema}.subscriptions SET last_seen = now() WHERE name = %s

-- name: lag
SELECT count(*) FROM {schema}.deliveries WHERE subscription = %s

-- name: drop_subscription
DELETE FROM {schema}.subscriptions WHERE name = %s

-- name: drop_subscription_deliveries
DELETE FROM {schema}.deliveries WHERE subscription = %s

-- ---------------------------------------------------------------- dead letters

-- name: bury
INSERT INTO {schema}.dead_letters (subscription, event_id, type, key, body, error, attempts)
VALUES (%s, %s, %s, %s, %s, %s, %s)

-- name: dead
SELECT subscription, body, error, attempts, extract(epoch FROM failed_at), event_id, type
FROM {schema}.dead_letters WHERE subscription = %s ORDER BY id LIMIT %s

-- name: replay
-- Replay goes to the one subscription it died in (not to every subscriber again).
WITH dl AS (
    DELETE FROM {schema}.dead_letters WHERE subscription = %(sub)s
    RETURNING id, event_id, type, key, body),
m AS (
    INSERT INTO {schema}.messages (event_id, type, key, body)
    SELECT event_id, coalesce(type, ''), key, body FROM dl ORDER BY id
    RETURNING id, key),
d AS (
    INSERT INTO {schema}.deliveries (subscription, message_id, key)
    SELECT %(sub)s, m.id, m.key FROM m
    RETURNING 1)
SELECT count(*), pg_notify({channel}, %(sub)s) FROM d

-- ---------------------------------------------------------------- housekeeping

-- name: housekeeping_lock
-- One process of the queue at a time.
SELECT pg_try_advisory_xact_lock(hashtext(%s), 0)

-- name: expire_broadcast
-- Broadcast subscribers not seen for the TTL crashed without closing; groups never expire.
DELETE FROM {schema}.subscriptions
WHERE group_name IS NULL AND last_seen < now() - %s * interval '1 second'
RETURNING name

-- name: drop_deliveries
DELETE FROM {schema}.deliveries WHERE subscription = ANY(%s)

-- name: retention
-- Fully acked messages older than the retention, 10,000 at a time.
DELETE FROM {schema}.messages WHERE id IN (
    SELECT m.id FROM {schema}.messages m
    WHERE m.created_at < now() - %s * interval '1 second'
      AND m.id NOT IN (SELECT message_id FROM {schema}.deliveries)
    ORDER BY m.id LIMIT 10000)
