-- Seed 001's monitoring queries (tidings.triggers.monitoring) on the store's SQLite file: the
-- names of the PostgreSQL file. Event times are fixed-width UTC text (compared as text), the
-- results' epoch seconds. tidings_events has no index on recorded_at, but one writer commits
-- in position order, so "stored after T" is "after the newest position stored at or before
-- T": found walking back from the end, it costs the rows of the window, not the table.

-- name: ingested
SELECT count(*) FROM tidings_events WHERE position > coalesce(
    (SELECT position FROM tidings_events WHERE recorded_at <= ? ORDER BY position DESC LIMIT 1),
    0)

-- name: match_window
SELECT
    (SELECT COUNT(DISTINCT event_id) FROM action_results WHERE created_at > :since_epoch),
    (SELECT count(*) FROM tidings_events WHERE position > coalesce(
        (SELECT position FROM tidings_events WHERE recorded_at <= :since_text
         ORDER BY position DESC LIMIT 1),
        0))
