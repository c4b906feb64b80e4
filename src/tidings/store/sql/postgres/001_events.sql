-- tidings event store, PostgreSQL schema 001: events, streams, checkpoints, the writer fence.
-- Applied by `tidings migrate URL` (tidings.store.migrate), which records it in
-- tidings_migrations under a pg_advisory_lock. Needs PostgreSQL >= 13 (xid8).
--
-- Partitioning: when the migration runner sets `tidings.partition` to day | week | month,
-- `events` is created PARTITIONED BY RANGE (recorded_at); see docs/store-postgres.md.

-- The global position. A plain sequence (what an identity column is underneath) so that the
-- same definition serves the plain and the partitioned table (PostgreSQL 15 cannot put an
-- identity column on a partitioned table).
CREATE SEQUENCE IF NOT EXISTS events_position_seq AS bigint;

DO $$
DECLARE
    part text := nullif(current_setting('tidings.partition', true), '');
BEGIN
    IF to_regclass('events') IS NOT NULL THEN
        RETURN;
    END IF;
    IF part IS NOT NULL AND part NOT IN ('day', 'week', 'month') THEN
        RAISE EXCEPTION 'tidings.partition must be day, week or month, not %', part;
    END IF;
    -- txid comes first on purpose: column defaults are evaluated in column order, so even a
    -- plain external INSERT has its transaction id before it draws a position.
    EXECUTE format($f$
        CREATE TABLE events (
            txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
            position       bigint      NOT NULL DEFAULT nextval('events_position_seq'),
            id             text        NOT NULL,
            type           text        NOT NULL,
            source         text        NOT NULL,
            stream         text,
            version        bigint,
            time           timestamptz NOT NULL,
            subject        text,
            correlation_id text,
            causation_id   text,
            aggregate_id   text,
            aggregate_type text,
            payload        json        NOT NULL,
            recorded_at    timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT events_stream_version_check CHECK ((stream IS NULL) = (version IS NULL)),
            %s
        ) %s
    $f$,
        CASE WHEN part IS NULL THEN
            'CONSTRAINT events_pkey PRIMARY KEY (position),
             CONSTRAINT events_id_key UNIQUE (id),
             CONSTRAINT events_stream_version_key UNIQUE (stream, version)'
        ELSE
            -- a partitioned table's unique constraints must contain the partition key, so
            -- global uniqueness of id and (stream, version) cannot be declared: versions stay
            -- unique through tidings_streams, ids are UUIDv7 (see the docs)
            'CONSTRAINT events_pkey PRIMARY KEY (position, recorded_at)'
        END,
        CASE WHEN part IS NULL THEN '' ELSE 'PARTITION BY RANGE (recorded_at)' END);
    ALTER SEQUENCE events_position_seq OWNED BY events.position;
    IF part IS NOT NULL THEN
        CREATE INDEX events_id_idx ON events (id);
        CREATE INDEX events_stream_version_idx ON events (stream, version)
            WHERE stream IS NOT NULL;
        -- rows whose recorded_at has no partition yet land here instead of failing
        CREATE TABLE events_default PARTITION OF events DEFAULT;
        COMMENT ON TABLE events IS 'tidings events, partitioned by recorded_at';
        CREATE TABLE IF NOT EXISTS tidings_settings (key text PRIMARY KEY, value text NOT NULL);
        INSERT INTO tidings_settings VALUES ('partition', part) ON CONFLICT (key) DO NOTHING;
    END IF;
END
$$;

-- The index plan: read_all / subscriptions page by position (the primary key); load_stream by
-- (stream, version) (the unique key); load(criteria) by type, correlation, aggregate or time,
-- each ending in position so that "after position N, in order, limit L" is one index range.
CREATE INDEX IF NOT EXISTS events_type_position_idx ON events (type, position);
CREATE INDEX IF NOT EXISTS events_correlation_position_idx
    ON events (correlation_id, position) WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_aggregate_position_idx
    ON events (aggregate_id, position) WHERE aggregate_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_time_idx ON events (time);

-- One row per stream: its version. Appends update it under the row lock, which serialises the
-- writers of one stream (and only of that stream) and makes expected_version a single atomic
-- UPDATE ... WHERE version = expected.
CREATE TABLE IF NOT EXISTS tidings_streams (
    stream     text        PRIMARY KEY,
    version    bigint      NOT NULL CHECK (version >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Durable subscription checkpoints: the last position a named subscription finished.
CREATE TABLE IF NOT EXISTS tidings_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The writer fence. Every transaction that inserts into events holds this shared advisory
-- lock from before it draws its first position until it ends. A reader reads the sequence,
-- then lists the fence holders (tidings_horizon); once those transactions are gone, every
-- position up to the value read is final: committed and visible, or never to appear. Shared
-- locks never block each other, so writers stay concurrent.
CREATE OR REPLACE FUNCTION tidings_fence_key() RETURNS integer
LANGUAGE sql STABLE AS $$ SELECT ('events'::regclass::oid::bigint & 2147483647)::integer $$;

-- TG_RELID rather than tidings_fence_key(): an external writer may insert into
-- myschema.events with another search_path, where neither name would resolve.
CREATE OR REPLACE FUNCTION tidings_fence() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(29801, (TG_RELID::bigint & 2147483647)::integer);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tidings_fence ON events;
CREATE TRIGGER tidings_fence BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tidings_fence();

-- What a reader may return: every position <= last_position is final once the transactions
-- in `writers` (virtual transaction ids holding the fence) have ended. The sequence is read
-- before the lock table, which is what makes the pair safe.
CREATE OR REPLACE FUNCTION tidings_horizon(OUT last_position bigint, OUT writers text[])
LANGUAGE plpgsql AS $$
BEGIN
    last_position := coalesce(pg_sequence_last_value('events_position_seq'), 0);
    SELECT coalesce(array_agg(l.virtualtransaction), '{}') INTO writers
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.classid = 29801 AND l.objid = tidings_fence_key()::oid AND l.objsubid = 2
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.pid <> pg_backend_pid();
END
$$;

-- True while any of `writers` still holds the fence.
CREATE OR REPLACE FUNCTION tidings_writers_active(writers text[]) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.classid = 29801 AND l.objid = tidings_fence_key()::oid AND l.objsubid = 2
           AND l.virtualtransaction = ANY (writers))
$$;

-- Reserve positions (and stream versions) for a batch before COPY: take the fence, check and
-- bump the stream's version, draw `n` positions. ok = false means expected_version did not
-- match; `actual` is the stream's version then, and nothing was changed.
CREATE OR REPLACE FUNCTION tidings_reserve(
    p_stream text, p_expected bigint, p_count integer,
    OUT ok boolean, OUT actual bigint, OUT first_version bigint, OUT positions bigint[],
    OUT recorded_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    last_version bigint;
BEGIN
    recorded_at := now();
    IF p_stream IS NOT NULL THEN
        IF p_expected IS NULL THEN
            INSERT INTO tidings_streams AS s (stream, version) VALUES (p_stream, p_count)
            ON CONFLICT (stream) DO UPDATE
                SET version = s.version + p_count, updated_at = now()
            RETURNING s.version INTO last_version;
        ELSIF p_expected = 0 THEN
            INSERT INTO tidings_streams AS s (stream, version) VALUES (p_stream, p_count)
            ON CONFLICT (stream) DO UPDATE
                SET version = s.version + p_count, updated_at = now()
                WHERE s.version = 0
            RETURNING s.version INTO last_version;
        ELSE
            UPDATE tidings_streams AS s SET version = s.version + p_count, updated_at = now()
             WHERE s.stream = p_stream AND s.version = p_expected
            RETURNING s.version INTO last_version;
        END IF;
        IF last_version IS NULL THEN
            ok := false;
            SELECT s.version INTO actual FROM tidings_streams s WHERE s.stream = p_stream;
            actual := coalesce(actual, 0);
            RETURN;
        END IF;
        first_version := last_version - p_count + 1;
    END IF;
    ok := true;
    PERFORM pg_advisory_xact_lock_shared(29801, tidings_fence_key());
    PERFORM pg_current_xact_id();
    positions := ARRAY(SELECT nextval('events_position_seq') FROM generate_series(1, p_count));
END
$$;
