-- The action job queue's statements on PostgreSQL (tidings.triggers.jobs.sql). The SQLite file
-- next door has the same names. A batch is one transaction: rows by executemany (enqueue), or
-- keys and tokens passed as arrays and unnested (complete, fail, release).

-- name: enqueue
-- A key seen before, in any state, is left alone: the idempotency of replays. Sent with
-- executemany, which psycopg pipelines: measured 2-3x faster here than one INSERT ... SELECT
-- FROM unnest(...) of the same batch (10,000 jobs: ~0.4 s against ~1.1-1.8 s).
INSERT INTO action_jobs (key, event_id, trigger_id, action_index, action_type, compensation,
    partition_key, position, action, event, state, attempts, available_at, created_at,
    updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', 0, %s, %s, %s)
ON CONFLICT (key) DO NOTHING

-- name: claim
-- Due pending jobs and expired leases (their worker died), oldest first. Rows another claimer
-- holds are skipped, not waited for; a row changed since this statement's snapshot is
-- re-checked against the WHERE when locked.
WITH due AS (
    SELECT key, available_at AS at FROM action_jobs
    WHERE state = 'pending' AND available_at <= %(now)s
    ORDER BY available_at LIMIT %(n)s FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT key, lease_until AS at FROM action_jobs
    WHERE state = 'running' AND lease_until < %(now)s
    ORDER BY lease_until LIMIT %(n)s FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT key FROM (SELECT * FROM expired UNION ALL SELECT * FROM due) AS u
    ORDER BY at LIMIT %(n)s
)
UPDATE action_jobs j SET state = 'running', attempts = j.attempts + 1,
    lease_until = %(until)s, lease_token = %(token)s, worker_id = %(worker)s,
    updated_at = %(now)s
FROM picked WHERE j.key = picked.key
RETURNING j.key, j.event_id, j.trigger_id, j.action_index, j.compensation, j.partition_key,
    j.position, j.action, j.event, j.attempts, j.last_error

-- name: complete
-- Only while the lease token matches: a worker whose lease was taken over changes nothing.
UPDATE action_jobs j SET state = 'done', lease_until = NULL, lease_token = NULL,
    action = NULL, event = NULL, last_error = NULL, updated_at = %(now)s
FROM unnest(%(keys)s::text[], %(tokens)s::text[]) AS u(key, token)
WHERE j.key = u.key AND j.lease_token = u.token AND j.state = 'running'

-- name: fail
-- retry_at NULL: the last attempt failed, the job is dead (kept, with its error, for a retry).
UPDATE action_jobs j SET
    state = CASE WHEN u.retry_at IS NULL THEN 'dead' ELSE 'pending' END,
    available_at = COALESCE(u.retry_at, j.available_at), last_error = u.error,
    lease_until = NULL, lease_token = NULL, updated_at = %(now)s
FROM unnest(%(keys)s::text[], %(tokens)s::text[], %(errors)s::text[],
    %(retry_ats)s::float8[]) AS u(key, token, error, retry_at)
WHERE j.key = u.key AND j.lease_token = u.token AND j.state = 'running'

-- name: release
-- Handed back unattempted (a worker stopping): due at once, the attempt not counted.
UPDATE action_jobs j SET state = 'pending', attempts = GREATEST(j.attempts - 1, 0),
    available_at = %(now)s, lease_until = NULL, lease_token = NULL, updated_at = %(now)s
FROM unnest(%(keys)s::text[], %(tokens)s::text[]) AS u(key, token)
WHERE j.key = u.key AND j.lease_token = u.token AND j.state = 'running'

-- name: cancel_for_events
UPDATE action_jobs SET state = 'cancelled', action = NULL, event = NULL, updated_at = %(now)s
WHERE event_id = ANY(%(event_ids)s::text[]) AND state = 'pending'

-- name: state
SELECT state FROM action_jobs WHERE key = %s

-- name: depth
SELECT (SELECT count(*) FROM action_jobs WHERE state = 'pending')
     + (SELECT count(*) FROM action_jobs WHERE state = 'running')

-- name: dead_count
-- The DLQ's size (the monitoring figures; partial index action_jobs_dead).
SELECT count(*) FROM action_jobs WHERE state = 'dead'

-- name: dead
SELECT key, event_id, trigger_id, action_index, compensation, partition_key, position, action,
    event, attempts, last_error
FROM action_jobs WHERE state = 'dead' ORDER BY updated_at DESC, key LIMIT %s

-- name: retry_dead
UPDATE action_jobs SET state = 'pending', attempts = 0, available_at = %(now)s,
    updated_at = %(now)s
WHERE state = 'dead'

-- name: retry_dead_key
UPDATE action_jobs SET state = 'pending', attempts = 0, available_at = %(now)s,
    updated_at = %(now)s
WHERE state = 'dead' AND key = %(key)s
