-- Named queries of the SQLite outbox (tidings.outbox.queries loads them by name).
-- Parameters are :name (sqlite3 and SQLAlchemy both take that form).

-- name: insert
INSERT INTO tidings_outbox (event_id, type, key, payload)
VALUES (:event_id, :type, :key, :payload)

-- The claim (inside BEGIN IMMEDIATE): lease the oldest pending rows whose lease is free or
-- expired, skipping every key on which another relay holds a live lease, so order per key holds
-- with several relays. LIMIT over the id order takes a prefix of each key's rows.
-- name: claim
UPDATE tidings_outbox SET lease_owner = :owner, lease_until = :until
WHERE id IN (
    SELECT o.id FROM tidings_outbox AS o
    WHERE o.published_at IS NULL
      AND (o.lease_until IS NULL OR o.lease_until < :now)
      AND (o.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM tidings_outbox AS p
            WHERE p.key = o.key AND p.published_at IS NULL AND p.lease_until >= :now))
    ORDER BY o.id
    LIMIT :limit)
RETURNING id, payload

-- name: delete
DELETE FROM tidings_outbox
WHERE lease_owner = :owner AND id IN (SELECT value FROM json_each(:ids))

-- name: mark
UPDATE tidings_outbox SET published_at = :now, lease_owner = NULL, lease_until = NULL
WHERE lease_owner = :owner AND id IN (SELECT value FROM json_each(:ids))

-- name: release
UPDATE tidings_outbox SET lease_owner = NULL, lease_until = NULL
WHERE lease_owner = :owner AND id IN (SELECT value FROM json_each(:ids))

-- name: purge
DELETE FROM tidings_outbox WHERE id IN (
    SELECT id FROM tidings_outbox WHERE published_at < :before LIMIT :limit)

-- name: pending
SELECT count(*), :now - min(created_at) FROM tidings_outbox WHERE published_at IS NULL
