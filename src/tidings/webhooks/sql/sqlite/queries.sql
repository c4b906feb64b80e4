-- The webhook delivery queue's statements on SQLite (tidings.webhooks.queue). The PostgreSQL
-- file next door has the same names; the two differ in placeholders, in the events table's
-- name, in how lists are passed (a JSON array through json_each here, an array there) and in
-- the claim, which PostgreSQL does with FOR UPDATE SKIP LOCKED.

-- name: wal
-- The queue's own connection, in the store's journal mode.
PRAGMA journal_mode = WAL

-- ---------------------------------------------------------------- endpoints

-- name: upsert_endpoint
INSERT INTO tidings_webhook_endpoints (id, body, enabled, source, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET body = excluded.body, enabled = excluded.enabled,
    source = excluded.source, updated_at = excluded.updated_at

-- name: endpoints
SELECT body FROM tidings_webhook_endpoints ORDER BY id

-- name: endpoint
SELECT body FROM tidings_webhook_endpoints WHERE id = ? ORDER BY id

-- name: endpoint_ids
SELECT id FROM tidings_webhook_endpoints

-- name: known_endpoints
-- Which of a JSON array of ids exist.
SELECT id FROM tidings_webhook_endpoints WHERE id IN (SELECT value FROM json_each(?))

-- name: delete_endpoint
DELETE FROM tidings_webhook_endpoints WHERE id = ?

-- name: cancel_endpoint_deliveries
UPDATE tidings_webhook_deliveries SET state = 'cancelled', lease_until = NULL,
    lease_token = NULL, next_attempt_at = NULL, updated_at = ?
WHERE endpoint_id = ? AND state IN ('pending', 'delivering')

-- ---------------------------------------------------------------- writing deliveries

-- name: insert_delivery
INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, attempts,
    next_attempt_at, created_at, updated_at)
VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)

-- name: insert_delivery_once
-- A delivery with an id the caller derived (a trigger's webhook action, from its job key): a
-- second insert of the same id adds nothing, so a job that runs twice delivers once.
INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, attempts,
    next_attempt_at, created_at, updated_at)
VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)
ON CONFLICT (id) DO NOTHING

-- name: insert_leased
-- A delivery handed to a worker of the accepting process in the same transaction.
INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, attempts,
    next_attempt_at, created_at, updated_at, lease_until, lease_token)
VALUES (?, ?, ?, ?, 'delivering', 0, ?, ?, ?, ?, ?)

-- name: delivered_events
-- Which of a JSON array of event ids already have deliveries.
SELECT DISTINCT event_id FROM tidings_webhook_deliveries
WHERE event_id IN (SELECT value FROM json_each(?))

-- name: event_position
SELECT position FROM tidings_events WHERE id = ?

-- name: record_source_start
-- WHERE true: without it SQLite would read ON CONFLICT as a join constraint of the SELECT.
INSERT INTO tidings_webhook_sources (name, start_position, created_at)
SELECT ?, COALESCE(MAX(position), 0), ? FROM tidings_events
WHERE true ON CONFLICT (name) DO NOTHING

-- name: source_start
SELECT start_position FROM tidings_webhook_sources WHERE name = ?

-- name: count_open
-- Pending + delivering rows, counted up to a cap (a full queue costs the cap, not the table).
SELECT count(*) FROM (SELECT 1 FROM tidings_webhook_deliveries
    WHERE state IN ('pending', 'delivering') LIMIT ?) AS open_rows

-- ---------------------------------------------------------------- work

-- name: claim
-- Each enabled endpoint's due rows come from its own range of the partial index (at most :n
-- each), so a backlog on a skipped or disabled endpoint costs a claim nothing. Leases that
-- expired (a crashed worker) are few: the rows in flight. :skip is a JSON array of ids.
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

-- name: event_bodies
-- The claimed rows' events, by a JSON array of positions.
SELECT position, body FROM tidings_events WHERE position IN (SELECT value FROM json_each(?))

-- name: mark_event_gone
UPDATE tidings_webhook_deliveries SET state = 'dead', lease_until = NULL, lease_token = NULL,
    next_attempt_at = NULL, updated_at = ?, last_error = ?
WHERE id = ?

-- name: insert_attempt
INSERT INTO tidings_webhook_attempts (delivery_id, number, started_at, duration, status_code,
    response_body, error)
VALUES (?, ?, ?, ?, ?, ?, ?)

-- name: finish
-- Only while the lease token matches: a worker whose lease was taken over changes nothing.
UPDATE tidings_webhook_deliveries SET state = ?, attempts = ?, last_status = ?,
    last_error = ?, next_attempt_at = ?, delivered_at = ?, lease_until = NULL,
    lease_token = NULL, updated_at = ?
WHERE id = ? AND lease_token = ?

-- name: release
UPDATE tidings_webhook_deliveries SET state = 'pending', lease_until = NULL,
    lease_token = NULL, updated_at = ?
WHERE id = ? AND lease_token = ?

-- ---------------------------------------------------------------- inspection and retries

-- name: deliveries
-- {conditions}: `true`, or some of the delivery_* fragments below joined by AND.
SELECT id, event_id, position, endpoint_id, state, attempts, next_attempt_at, created_at,
    updated_at, last_status, last_error, delivered_at
FROM tidings_webhook_deliveries WHERE {conditions} ORDER BY id DESC LIMIT ?

-- name: delivery_endpoint_id
endpoint_id = ?

-- name: delivery_state
state = ?

-- name: delivery_event_id
event_id = ?

-- name: delivery_before
id < ?

-- name: delivery
SELECT id, event_id, position, endpoint_id, state, attempts, next_attempt_at, created_at,
    updated_at, last_status, last_error, delivered_at
FROM tidings_webhook_deliveries WHERE id = ?

-- name: delivery_exists
SELECT 1 FROM tidings_webhook_deliveries WHERE id = ?

-- name: attempts
SELECT delivery_id, number, started_at, duration, status_code, response_body, error
FROM tidings_webhook_attempts WHERE delivery_id = ? ORDER BY number, seq

-- name: retry
-- Same id, attempts from zero; a delivery in flight is left to its worker.
UPDATE tidings_webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,
    lease_until = NULL, lease_token = NULL, delivered_at = NULL, updated_at = ?
WHERE id = ? AND state <> 'delivering'

-- name: retry_dead
UPDATE tidings_webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,
    lease_until = NULL, lease_token = NULL, delivered_at = NULL, updated_at = ?
WHERE state = 'dead'

-- name: retry_dead_of_endpoint
UPDATE tidings_webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,
    lease_until = NULL, lease_token = NULL, delivered_at = NULL, updated_at = ?
WHERE state = 'dead' AND endpoint_id = ?

-- name: state_counts
SELECT endpoint_id, state, count(*) FROM tidings_webhook_deliveries GROUP BY endpoint_id, state

-- name: oldest_due
SELECT min(next_attempt_at) FROM tidings_webhook_deliveries
WHERE state = 'pending' AND next_attempt_at <= ?

-- name: recent_attempts
-- The last ? attempts of all endpoints, newest first (the dashboard's latency and success figures).
SELECT d.endpoint_id, a.started_at, a.duration, a.status_code, a.error
FROM (SELECT delivery_id, started_at, duration, status_code, error
      FROM tidings_webhook_attempts ORDER BY seq DESC LIMIT ?) AS a
JOIN tidings_webhook_deliveries AS d ON d.id = a.delivery_id

-- name: oldest_pending_by_endpoint
-- When each endpoint's oldest pending delivery was created (pending rows only: the partial index).
SELECT endpoint_id, min(created_at) FROM tidings_webhook_deliveries
WHERE state = 'pending' GROUP BY endpoint_id
