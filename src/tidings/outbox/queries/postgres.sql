-- Named queries of the PostgreSQL outbox (tidings.outbox.queries loads them by name).
-- Parameters are psycopg's %(name)s; SQLAlchemy callers get them rewritten as :name.

-- name: insert
INSERT INTO tidings_outbox (event_id, type, key, payload)
VALUES (%(event_id)s, %(type)s, %(key)s, CAST(%(payload)s AS json))

-- name: reject
SELECT tidings_outbox_reject(%(reason)s)

-- The claim, in one transaction that stays open while the batch is published:
-- 1. scan: the oldest pending rows (no locks) to learn which keys come first;
-- name: scan
SELECT id, key FROM tidings_outbox
WHERE published_at IS NULL
ORDER BY id
LIMIT %(limit)s

-- 2. lock_keys: a transaction-level advisory lock per key (class 29803). While one relay holds
--    a key, no other relay publishes any row of that key, so order per key holds with any
--    number of relays, even for a row of the key that commits late with a lower id;
-- name: lock_keys
SELECT k FROM unnest(CAST(%(keys)s AS text[])) AS t(k)
WHERE pg_try_advisory_xact_lock(29803, hashtext(k))

-- 3. take: the pending rows of the locked keys, and the scanned rows without a key, in id
--    order; FOR UPDATE SKIP LOCKED makes each row without a key one relay's alone.
-- name: take
SELECT id, CAST(payload AS text) FROM tidings_outbox
WHERE published_at IS NULL
  AND (key = ANY(CAST(%(keys)s AS text[])) OR (key IS NULL AND id = ANY(CAST(%(loose)s AS bigint[]))))
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- 4. after the publish, in the same transaction:
-- name: delete
DELETE FROM tidings_outbox WHERE id = ANY(CAST(%(ids)s AS bigint[]))

-- name: mark
UPDATE tidings_outbox SET published_at = now() WHERE id = ANY(CAST(%(ids)s AS bigint[]))

-- name: purge
DELETE FROM tidings_outbox WHERE id IN (
    SELECT id FROM tidings_outbox
    WHERE published_at < now() - %(retention)s * interval '1 second'
    LIMIT %(limit)s)

-- name: pending
SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))
FROM tidings_outbox WHERE published_at IS NULL
