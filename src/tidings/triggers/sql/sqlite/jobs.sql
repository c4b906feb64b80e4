-- The action job queue's statements on SQLite (tidings.triggers.jobs.sql): the names of the
-- PostgreSQL file. Writers take turns (BEGIN IMMEDIATE), so no row locks are needed; batches
-- are executemany over one prepared statement, or a JSON array read with json_each.

-- name: enqueue
INSERT INTO action_jobs (key, event_id, trigger_id, action_index, action_type, compensation,
    partition_key, position, action, event, state, attempts, available_at, created_at,
    updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)
ON CONFLICT (key) DO NOTHING

-- name: claim
UPDATE action_jobs SET state = 'running', attempts = attempts + 1, lease_until = :until,
    lease_token = :token, worker_id = :worker, updated_at = :now
WHERE key IN (
    SELECT key FROM (
        SELECT * FROM (SELECT key, lease_until AS at FROM action_jobs
            WHERE state = 'running' AND lease_until < :now ORDER BY lease_until LIMIT :n)
        UNION ALL
        SELECT * FROM (SELECT key, available_at AS at FROM action_jobs
            WHERE state = 'pending' AND available_at <= :now ORDER BY available_at LIMIT :n)
    ) ORDER BY at LIMIT :n)
RETURNING key, event_id, trigger_id, action_index, compensation, partition_key, position,
    action, event, attempts, last_error

-- name: complete
UPDATE action_jobs SET state = 'done', lease_until = NULL, lease_token = NULL, action = NULL,
    event = NULL, last_error = NULL, updated_at = ?
WHERE key = ? AND lease_token = ? AND state = 'running'

-- name: fail
UPDATE action_jobs SET state = CASE WHEN ?1 IS NULL THEN 'dead' ELSE 'pending' END,
    available_at = COALESCE(?1, available_at), last_error = ?2, lease_until = NULL,
    lease_token = NULL, updated_at = ?3
WHERE key = ?4 AND lease_token = ?5 AND state = 'running'

-- name: release
UPDATE action_jobs SET state = 'pending', attempts = max(attempts - 1, 0), available_at = ?1,
    lease_until = NULL, lease_token = NULL, updated_at = ?1
WHERE key = ?2 AND lease_token = ?3 AND state = 'running'

-- name: cancel_for_events
UPDATE action_jobs SET state = 'cancelled', action = NULL, event = NULL, updated_at = ?
WHERE event_id IN (SELECT value FROM json_each(?)) AND state = 'pending'

-- name: state
SELECT state FROM action_jobs WHERE key = ?

-- name: depth
SELECT (SELECT count(*) FROM action_jobs WHERE state = 'pending')
     + (SELECT count(*) FROM action_jobs WHERE state = 'running')

-- name: dead_count
-- The DLQ's size (the monitoring figures; partial index action_jobs_dead).
SELECT count(*) FROM action_jobs WHERE state = 'dead'

-- name: dead
SELECT key, event_id, trigger_id, action_index, compensation, partition_key, position, action,
    event, attempts, last_error
FROM action_jobs WHERE state = 'dead' ORDER BY updated_at DESC, key LIMIT ?

-- name: retry_dead
UPDATE action_jobs SET state = 'pending', attempts = 0, available_at = :now, updated_at = :now
WHERE state = 'dead'

-- name: retry_dead_key
UPDATE action_jobs SET state = 'pending', attempts = 0, available_at = :now, updated_at = :now
WHERE state = 'dead' AND key = :key
