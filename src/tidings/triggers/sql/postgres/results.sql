-- The action results' statements on PostgreSQL (tidings.triggers.results). The SQLite file
-- next door has the same names. Times are read back as epoch seconds.

-- name: record
-- One row per key: a later outcome of the same job replaces the earlier one, except on a row a
-- reorg has invalidated (or compensated): that stays as it is. Sent with executemany
-- (pipelined), like the job queue's enqueue.
INSERT INTO action_results (key, event_id, trigger_id, action_index, action_type, status,
    output, error, duration_ms, attempts)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)
ON CONFLICT (key) DO UPDATE SET status = excluded.status, output = excluded.output,
    error = excluded.error, duration_ms = excluded.duration_ms, attempts = excluded.attempts,
    updated_at = now()
WHERE action_results.status NOT IN ('invalidated', 'compensated')

-- name: columns
-- (a fragment) what every read returns, in ActionResult's order
SELECT seq, key, event_id, trigger_id, action_index, action_type, status, output::text, error,
    duration_ms, attempts, extract(epoch FROM created_at)::float8,
    extract(epoch FROM updated_at)::float8
FROM action_results

-- name: by_key
{columns} WHERE key = %s

-- name: for_event
{columns} WHERE event_id = %s ORDER BY trigger_id, action_index, key

-- name: list
-- Newest first; `before` is the seq of the last row of the previous page.
{columns}
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(trigger_id)s::text IS NULL OR trigger_id = %(trigger_id)s)
  AND (%(event_id)s::text IS NULL OR event_id = %(event_id)s)
  AND (%(before)s::bigint IS NULL OR seq < %(before)s)
ORDER BY seq DESC LIMIT %(limit)s

-- name: invalidate_for_events
UPDATE action_results SET status = 'invalidated', updated_at = now()
WHERE event_id = ANY(%s::text[]) AND status = 'succeeded'
RETURNING key

-- name: mark_compensated
UPDATE action_results SET status = 'compensated', updated_at = now()
WHERE key = ANY(%s::text[]) AND status = 'invalidated'

-- name: counts
SELECT status, count(*) FROM action_results GROUP BY status
