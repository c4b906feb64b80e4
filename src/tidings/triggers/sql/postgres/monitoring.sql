-- Seed 001's monitoring queries (tidings.triggers.monitoring), on the store's PostgreSQL
-- database. The SQLite file next door has the same names.

-- name: ingested
-- Seed 001's "event ingestion rate", as written: events stored in the last minute.
SELECT COUNT(*) FROM events WHERE created_at > NOW() - INTERVAL '1 minute'

-- name: match_window
-- Seed 001's "trigger match rate" over one hour: events that started at least one action, and
-- events stored, both in the last hour. (The seed divides by every event ever stored, which
-- makes the rate fall as the table grows; the same window on both sides keeps it a rate.)
SELECT
    (SELECT COUNT(DISTINCT event_id) FROM action_results
        WHERE created_at > NOW() - INTERVAL '1 hour'),
    (SELECT COUNT(*) FROM events WHERE created_at > NOW() - INTERVAL '1 hour')

