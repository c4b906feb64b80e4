-- The saved triggers' statements on SQLite (tidings.triggers.saved): the names of the
-- PostgreSQL file. Times are epoch seconds (REAL).

-- name: columns
SELECT id, definition, enabled, version, created_at, updated_at FROM tidings_triggers

-- name: get_trigger
{columns} WHERE id = ?

-- name: lock_trigger
-- (a write transaction holds SQLite's one writer lock already)
{columns} WHERE id = ?

-- name: page_triggers
{columns} WHERE (:after IS NULL OR id > :after) ORDER BY id LIMIT :limit

-- name: all_triggers
{columns} ORDER BY id

-- name: count_triggers
SELECT count(*) FROM tidings_triggers

-- name: insert_trigger
INSERT INTO tidings_triggers (id, definition, enabled, created_at, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING

-- name: update_trigger
UPDATE tidings_triggers SET definition = ?, enabled = ?, version = version + 1, updated_at = ?
WHERE id = ?

-- name: delete_trigger
DELETE FROM tidings_triggers WHERE id = ?

-- name: bump_version
UPDATE tidings_triggers_version SET version = version + 1 WHERE one = 1 RETURNING version

-- name: saved_version
SELECT version FROM tidings_triggers_version WHERE one = 1
