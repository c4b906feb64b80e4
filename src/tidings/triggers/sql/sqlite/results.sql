-- The action results' statements on SQLite (tidings.triggers.results): the names of the
-- PostgreSQL file. Times are epoch seconds (REAL).

-- name: record
INSERT INTO action_results (key, event_id, trigger_id, action_index, action_type, status,
    output, error, duration_ms, attempts, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET status = excluded.status, output = excluded.output,
    error = excluded.error, duration_ms = excluded.duration_ms, attempts = excluded.attempts,
    updated_at = excluded.updated_at
WHERE action_results.status NOT IN ('invalidated', 'compensated')

-- name: columns
SELECT seq, key, event_id, trigger_id, action_index, action_type, status, output, error,
    duration_ms, attempts, created_at, updated_at
FROM action_results

-- name: by_key
{columns} WHERE key = ?

-- name: for_event
{columns} WHERE event_id = ? ORDER BY trigger_id, action_index, key

-- name: list
{columns}
WHERE (:status IS NULL OR status = :status)
  AND (:trigger_id IS NULL OR trigger_id = :trigger_id)
  AND (:event_id IS NULL OR event_id = :event_id)
  AND (:before IS NULL OR seq < :before)
ORDER BY seq DESC LIMIT :limit

-- name: invalidate_for_events
UPDATE action_results SET status = 'invalidated', updated_at = ?
WHERE event_id IN (SELECT value FROM json_each(?)) AND status = 'succeeded'
RETURNING key

-- name: mark_compensated
UPDATE action_results SET status = 'compensated', updated_at = ?
WHERE key IN (SELECT value FROM json_each(?)) AND status = 'invalidated'

-- name: counts
SELECT status, count(*) FROM action_results GROUP BY status
