-- The processor groups' start positions (tidings.triggers.starts), on 005_starts.sql.

-- name: record_start
-- The first caller wins; a second process starting at once keeps the first one's position.
INSERT INTO tidings_trigger_starts (group_name, start_position, created_at)
VALUES (:group_name, :position, :now)
ON CONFLICT (group_name) DO NOTHING

-- name: start
SELECT start_position FROM tidings_trigger_starts WHERE group_name = :group_name
