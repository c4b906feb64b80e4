-- The saved triggers' statements on PostgreSQL (tidings.triggers.saved). The SQLite file next
-- door has the same names. Times are read back as epoch seconds.

-- name: columns
-- (a fragment) what every read returns, in SavedTrigger's order
SELECT id, definition::text, enabled, version, extract(epoch FROM created_at)::float8,
    extract(epoch FROM updated_at)::float8
FROM tidings_triggers

-- name: get_trigger
{columns} WHERE id = %s

-- name: lock_trigger
{columns} WHERE id = %s FOR UPDATE

-- name: page_triggers
-- By id; `after` is the id of the last row of the previous page.
{columns} WHERE (%(after)s::text IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s

-- name: all_triggers
{columns} ORDER BY id

-- name: count_triggers
SELECT count(*) FROM tidings_triggers

-- name: insert_trigger
INSERT INTO tidings_triggers (id, definition, enabled) VALUES (%s, %s::jsonb, %s)
ON CONFLICT (id) DO NOTHING

-- name: update_trigger
UPDATE tidings_triggers SET definition = %s::jsonb, enabled = %s, version = version + 1,
    updated_at = now()
WHERE id = %s

-- name: delete_trigger
DELETE FROM tidings_triggers WHERE id = %s

-- name: bump_version
UPDATE tidings_triggers_version SET version = version + 1 WHERE one RETURNING version

-- name: saved_version
SELECT version FROM tidings_triggers_version WHERE one
