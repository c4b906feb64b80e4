-- Seed 001's monitoring queries (tidings.triggers.monitoring) on the store's SQLite file: the
-- names of the PostgreSQL file. Event times are fixed-width UTC text (compared as text), the
-- results' epoch seconds.

-- name: ingested
SELECT COUNT(*) FROM tidings_events WHERE recorded_at > ?

-- name: match_window
SELECT
    (SELECT COUNT(DISTINCT event_id) FROM action_results WHERE created_at > :since_epoch),
    (SELECT COUNT(*) FROM tidings_events WHERE recorded_at > :since_text)

