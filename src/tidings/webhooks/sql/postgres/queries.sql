-- The webhook delivery queue's statements on PostgreSQL (tidings.webhooks.queue). The SQLite
-- file next door has the same names (see there for what differs). Lists are passed as arrays.

-- ---------------------------------------------------------------- endpoints

-- name: upsert_endpoint
INSERT INTO tidings_webhook_endpoints (id, body, enabled, source, updated_at)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET body = excluded.body, enabled = excluded.enabled,
    source = excluded.source, updated_at = excluded.updated_at

-- name: endpoints
SELECT body::text FROM tidings_webhook_endpoints ORDER BY id

-- name: endpoint
SELECT body::text FROM tidings_webhook_endpoints WHERE id = %s ORDER BY id

-- name: endpoint_ids
SELECT id FROM tidings_webhook_endpoints

-- name: known_endpoints
SELECT id FROM tidings_webhook_endpoints WHERE id = ANY(%s)

-- name: delete_endpoint
DELETE FROM tidings_webhook_endpoints WHERE id = %s

-- name: cancel_endpoint_deliveries
UPDATE tidings_webhook_deliveries SET state = 'cancelled', lease_until = NULL,
    lease_token = NULL, next_attempt_at = NULL, updated_at = %s
WHERE endpoint_id = %s AND state IN ('pending', 'delivering')

-- ---------------------------------------------------------------- writing deliveries

-- name: insert_delivery
INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, attempts,
    next_attempt_at, created_at, updated_at)
VALUES (%s, %s, %s, %s, 'pending', 0, %s, %s, %s)

-- name: insert_delivery_once
-- A delivery with an id the caller derived (a trigger's webhook action, from its job key): a
-- second insert of the same id adds nothing, so a job that runs twice delivers once.
INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, attempts,
    next_attempt_at, created_at, updated_at)
VALUES (%s, %s, %s, %s, 'pending', 0, %s, %s, %s)
ON CONFLICT (id) DO NOTHING

-- name: insert_leased
-- A delivery handed to a worker of the accepting process in the same transaction.
INSERT INTO tidings_webhook_deliveries (id, event_id, position, endpoint_id, state, attempts,
    next_attempt_at, created_at, updated_at, lease_until, lease_token)
VALUES (%s, %s, %s, %s, 'delivering', 0, %s, %s, %s, %s, %s)

-- name: serialize_existing
-- Two sources handing over the same stored event (say the store's subscription and a Bus
-- that the store publishes to) must not both find it without deliveries: they take turns.
SELECT pg_advisory_xact_lock(29804, hashtext(current_schema()))

-- name: delivered_events
SELECT DISTINCT event_id FROM tidings_webhook_deliveries WHERE event_id = ANY(%s)

-- name: event_position
SELECT position FROM events WHERE id = %s

-- name: record_source_start
INSERT INTO tidings_webhook_sources (name, start_position, created_at)
SELECT %s, COALESCE(MAX(position), 0), %s FROM events
WHERE true ON CONFLICT (name) DO NOTHING

-- name: source_start
SELECT start_position FROM tidings_webhook_sources WHERE name = %s

-- name: count_open
-- Pending + delivering rows, counted up to a cap (a full queue costs the cap, not the table).
SELECT count(*) FROM (SELECT 1 FROM tidings_webhook_deliveries
    WHERE state IN ('pending', 'delivering') LIMIT %s) AS open_rows

-- ---------------------------------------------------------------- work

-- name: claim
-- Each enabled endpoint's due rows come from its own range of the partial index (at most
-- %(n)s each). Rows locked by another claimer are skipped, not waited for; a row another
-- claimer changed since this statement's snapshot is re-checked against the WHERE when
-- locked. The event's payload comes along (NULL: the event is gone).
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

-- name: mark_event_gone
UPDATE tidings_webhook_deliveries SET state = 'dead', lease_until = NULL, lease_token = NULL,
    next_attempt_at = NULL, updated_at = %s, last_error = %s
WHERE id = %s

-- name: insert_attempt
INSERT INTO tidings_webhook_attempts (delivery_id, number, started_at, duration, status_code,
    response_body, error)
VALUES (%s, %s, %s, %s, %s, %s, %s)

-- name: finish
-- Only while the lease token matches: a worker whose lease was taken over changes nothing.
UPDATE tidings_webhook_deliveries SET state = %s, attempts = %s, last_status = %s,
    last_error = %s, next_attempt_at = %s, delivered_at = %s, lease_until = NULL,
    lease_token = NULL, updated_at = %s
WHERE id = %s AND lease_token = %s

-- name: release
UPDATE tidings_webhook_deliveries SET state = 'pending', lease_until = NULL,
    lease_token = NULL, updated_at = %s
WHERE id = %s AND lease_token = %s

-- ---------------------------------------------------------------- inspection and retries

-- name: deliveries
-- {conditions}: `true`, or some of the delivery_* fragments below joined by AND.
SELECT id, event_id, position, endpoint_id, state, attempts, next_attempt_at, created_at,
    updated_at, last_status, last_error, delivered_at
FROM tidings_webhook_deliveries WHERE {conditions} ORDER BY id DESC LIMIT %s

-- name: delivery_endpoint_id
endpoint_id = %s

-- name: delivery_state
state = %s

-- name: delivery_event_id
event_id = %s

-- name: delivery_before
id < %s

-- name: delivery
SELECT id, event_id, position, endpoint_id, state, attempts, next_attempt_at, created_at,
    updated_at, last_status, last_error, delivered_at
FROM tidings_webhook_deliveries WHERE id = %s

-- name: delivery_exists
SELECT 1 FROM tidings_webhook_deliveries WHERE id = %s

-- name: attempts
SELECT delivery_id, number, started_at, duration, status_code, response_body, error
FROM tidings_webhook_attempts WHERE delivery_id = %s ORDER BY number, seq

-- name: retry
-- Same id, attempts from zero; a delivery in flight is left to its worker.
UPDATE tidings_webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = %s,
    lease_until = NULL, lease_token = NULL, delivered_at = NULL, updated_at = %s
WHERE id = %s AND state <> 'delivering'

-- name: retry_dead
UPDATE tidings_webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = %s,
    lease_until = NULL, lease_token = NULL, delivered_at = NULL, updated_at = %s
WHERE state = 'dead'

-- name: retry_dead_of_endpoint
UPDATE tidings_webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = %s,
    lease_until = NULL, lease_token = NULL, delivered_at = NULL, updated_at = %s
WHERE state = 'dead' AND endpoint_id = %s

-- name: state_counts
SELECT endpoint_id, state, count(*) FROM tidings_webhook_deliveries GROUP BY endpoint_id, state

-- name: oldest_due
SELECT min(next_attempt_at) FROM tidings_webhook_deliveries
WHERE state = 'pending' AND next_attempt_at <= %s

-- name: recent_attempts
-- The last %s attempts of all endpoints, newest first (the dashboard's latency and success figures).
SELECT d.endpoint_id, a.started_at, a.duration, a.status_code, a.error
FROM (SELECT delivery_id, started_at, duration, status_code, error
      FROM tidings_webhook_attempts ORDER BY seq DESC LIMIT %s) AS a
JOIN tidings_webhook_deliveries AS d ON d.id = a.delivery_id

-- name: oldest_pending_by_endpoint
-- When each endpoint's oldest pending delivery was created (pending rows only: the partial index).
SELECT endpoint_id, min(created_at) FROM tidings_webhook_deliveries
WHERE state = 'pending' GROUP BY endpoint_id
