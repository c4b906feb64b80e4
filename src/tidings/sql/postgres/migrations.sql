-- The migration runner's own statements on PostgreSQL (tidings.migrations). {schema} is the
-- schema that holds tidings_migrations: the connection's current schema, or the schema of a
-- component that lives in a schema of its own (filled with psycopg.sql.Identifier).

-- name: current_schema
SELECT current_schema()

-- name: table_columns
-- The columns of <schema>.tidings_migrations: none when it does not exist yet; no `component`
-- when an earlier release made it (one version column, the store's migrations only).
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass(quote_ident(%s) || '.tidings_migrations')
  AND a.attnum > 0 AND NOT a.attisdropped

-- name: lock
-- One migration run per schema at a time: a second process waits, then finds nothing to do.
SELECT pg_advisory_lock(29802, hashtext(%s))

-- name: unlock
SELECT pg_advisory_unlock(29802, hashtext(%s))

-- name: schema_exists
SELECT to_regnamespace(quote_ident(%s)) IS NOT NULL

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: create_table
-- One row per applied file of each component.
CREATE TABLE IF NOT EXISTS {schema}.tidings_migrations (
    component  text        NOT NULL,
    version    text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)

-- name: rename_legacy_table
-- The one-column table of earlier releases steps aside (with its primary key's name, which the
-- new table takes); its rows move over as component 'store', then it goes.
ALTER TABLE {schema}.tidings_migrations RENAME TO tidings_migrations_v1;
ALTER TABLE {schema}.tidings_migrations_v1
    RENAME CONSTRAINT tidings_migrations_pkey TO tidings_migrations_v1_pkey

-- name: copy_legacy_rows
INSERT INTO {schema}.tidings_migrations (component, version, applied_at)
SELECT 'store', version, applied_at FROM {schema}.tidings_migrations_v1

-- name: drop_legacy_table
DROP TABLE {schema}.tidings_migrations_v1

-- name: applied
SELECT component, version FROM {schema}.tidings_migrations

-- name: applied_legacy
SELECT 'store', version FROM {schema}.tidings_migrations

-- name: record
INSERT INTO {schema}.tidings_migrations (component, version) VALUES (%s, %s)

-- name: set_local
-- A setting a migration file reads (tidings.partition), for its own transaction only.
SELECT set_config(%s, %s, true)
