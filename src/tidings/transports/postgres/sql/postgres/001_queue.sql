-- The PostgreSQL transport's queue, schema 001 (component `transport_postgres`). Applied by
-- PostgresTransport.start() and by `tidings migrate URL --transport-schema NAME`, recorded in
-- {schema}.tidings_migrations. {schema} is the transport's ?schema= (default tidings_queue),
-- filled in as a quoted identifier when the file is applied (the runner creates the schema).
-- Every statement is idempotent: schemas made by earlier releases, which ran these statements
-- on every start, already have the tables and adopt the file as applied.

-- One row per published event (body kept as the exact encoded bytes).
CREATE TABLE IF NOT EXISTS {schema}.messages (
    id bigserial PRIMARY KEY,
    event_id text,
    type text NOT NULL,
    key text,
    body bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());

-- Every durable consumer (a group, or one broadcast subscriber) with the POSIX regex of its
-- glob pattern, so a publish can match it inside PostgreSQL.
CREATE TABLE IF NOT EXISTS {schema}.subscriptions (
    name text PRIMARY KEY,
    pattern text NOT NULL,
    regex text NOT NULL,
    group_name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now());

-- One row per (subscription, message) still to be handled, created at publish time.
CREATE TABLE IF NOT EXISTS {schema}.deliveries (
    subscription text NOT NULL,
    message_id bigint NOT NULL,
    key text,
    lease_until timestamptz,
    owner text,
    attempts integer NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription, message_id));

-- Only leased rows: small, and the claim's scan for unleased rows then walks the primary key in
-- message order and stops at LIMIT.
CREATE INDEX IF NOT EXISTS deliveries_leased
    ON {schema}.deliveries (subscription, lease_until) WHERE lease_until IS NOT NULL;

CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
    id bigserial PRIMARY KEY,
    subscription text NOT NULL,
    event_id text,
    type text,
    key text,
    body bytea NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now());

CREATE INDEX IF NOT EXISTS dead_letters_sub
    ON {schema}.dead_letters (subscription, id);
