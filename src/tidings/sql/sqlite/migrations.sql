-- The migration runner's own statements on SQLite (tidings.migrations). Every file is applied
-- inside BEGIN IMMEDIATE, which is SQLite's one-writer lock: the runner's advisory lock.

-- name: table_columns
-- No rows: no table yet; no `component`: the one-column table of earlier releases.
SELECT name FROM pragma_table_info('tidings_migrations')

-- name: create_table
CREATE TABLE IF NOT EXISTS tidings_migrations (
    component  TEXT NOT NULL,
    version    TEXT NOT NULL,
    applied_at TEXT NOT NULL,  -- UTC, 'YYYY-MM-DDTHH:MM:SS.ffffffZ'
    PRIMARY KEY (component, version)
)

-- name: rename_legacy_table
ALTER TABLE tidings_migrations RENAME TO tidings_migrations_v1

-- name: copy_legacy_rows
INSERT INTO tidings_migrations (component, version, applied_at)
SELECT 'store', version, applied_at FROM tidings_migrations_v1

-- name: drop_legacy_table
DROP TABLE tidings_migrations_v1

-- name: applied
SELECT component, version FROM tidings_migrations

-- name: applied_legacy
SELECT 'store', version FROM tidings_migrations

-- name: record
INSERT INTO tidings_migrations (component, version, applied_at) VALUES (?, ?, ?)
