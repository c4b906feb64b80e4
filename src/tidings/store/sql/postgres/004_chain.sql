-- tidings event store, PostgreSQL schema 004: seed 001's chain columns, and invalidation.
--
-- Seed 001's indexers write `INSERT INTO events (id, chain_id, block_number, block_hash,
-- transaction_hash, log_index, event_type, registry, timestamp, created_at)`. These columns
-- make that statement work unchanged; tidings fills them from the envelope's extensions
-- (chainid, blocknumber, blockhash, parenthash, transactionhash, logindex, registry; see
-- tidings.store.chain). `invalidated` marks the events of blocks a chain reorganisation
-- replaced: they are kept, never deleted, and readers skip them unless asked (docs/reorgs.md).
-- Adding nullable columns and a constant default rewrites nothing, on a plain or a
-- partitioned table alike. Rows stored before this file keep event_type and timestamp NULL.
ALTER TABLE events
    ADD COLUMN IF NOT EXISTS chain_id bigint,
    ADD COLUMN IF NOT EXISTS block_number bigint,
    ADD COLUMN IF NOT EXISTS block_hash text,
    ADD COLUMN IF NOT EXISTS parent_hash text,
    ADD COLUMN IF NOT EXISTS transaction_hash text,
    ADD COLUMN IF NOT EXISTS log_index integer,
    ADD COLUMN IF NOT EXISTS registry text,
    ADD COLUMN IF NOT EXISTS event_type text,
    ADD COLUMN IF NOT EXISTS "timestamp" bigint,
    ADD COLUMN IF NOT EXISTS created_at timestamptz DEFAULT now(),
    ADD COLUMN IF NOT EXISTS invalidated boolean NOT NULL DEFAULT false;

-- The reorg queries (`WHERE chain_id = ? AND block_number > ?`) and partitioning by chain or
-- registry. Partial: events without chain coordinates cost these indexes nothing.
CREATE INDEX IF NOT EXISTS events_chain_block_idx
    ON events (chain_id, block_number) WHERE chain_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_registry_idx
    ON events (registry) WHERE registry IS NOT NULL;
-- Seed 001's monitoring queries count `created_at > now() - interval ...`: a BRIN index
-- answers them for a few pages of upkeep (created_at follows the table's physical order).
CREATE INDEX IF NOT EXISTS events_created_at_brin ON events USING brin (created_at);

-- A row from a plain SQL writer (seed 001's INSERT) names event_type, registry and timestamp
-- but not tidings' type, source, time and payload. Fill them: type from event_type (and the
-- other way round), source from registry ('sql' without one), time from timestamp (epoch
-- seconds), else created_at, else now(); the payload is the structured-mode CloudEvents JSON
-- of the row with the chain columns as extensions. A payload the writer gave keeps its own
-- attributes; missing chain extensions are added to it. tidings' own writes fill every column
-- themselves, so the WHEN clause keeps this trigger off their path.
CREATE OR REPLACE FUNCTION tidings_fill_row() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    body jsonb;
    chain jsonb;
BEGIN
    NEW.type := coalesce(NEW.type, NEW.event_type);
    IF NEW.type IS NULL OR NEW.type = '' OR NEW.type ~ '\s' THEN
        RAISE EXCEPTION 'events: row % needs event_type (or type): a non-empty name without '
                        'whitespace, got %', left(NEW.id, 200), coalesce(quote_literal(NEW.type), 'NULL')
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.event_type := coalesce(NEW.event_type, NEW.type);
    NEW.source := coalesce(nullif(NEW.source, ''), nullif(NEW.registry, ''), 'sql');
    NEW.time := coalesce(NEW.time, to_timestamp(NEW."timestamp"), NEW.created_at, now());
    NEW."timestamp" := coalesce(NEW."timestamp", floor(extract(epoch FROM NEW.time))::bigint);
    IF NEW.payload IS NULL THEN
        body := jsonb_build_object(
            'specversion', '1.0',
            'id', NEW.id,
            'source', NEW.source,
            'type', NEW.type,
            'time', to_char(NEW.time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
    ELSE
        body := NEW.payload::jsonb;
        IF jsonb_typeof(body) <> 'object' THEN
            RAISE EXCEPTION 'events: row % has a payload that is a JSON %, expected the '
                            'CloudEvents JSON object (or no payload: tidings builds it)',
                            left(NEW.id, 200), jsonb_typeof(body)
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    chain := jsonb_strip_nulls(jsonb_build_object(
        'chainid', NEW.chain_id,
        'blocknumber', NEW.block_number,
        'blockhash', NEW.block_hash,
        'parenthash', NEW.parent_hash,
        'transactionhash', NEW.transaction_hash,
        'logindex', NEW.log_index,
        'registry', NEW.registry));
    NEW.payload := (chain || body)::json;  -- the payload's own attributes win
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS tidings_fill_row ON events;
CREATE TRIGGER tidings_fill_row BEFORE INSERT ON events
    FOR EACH ROW WHEN (NEW.payload IS NULL OR NEW.event_type IS NULL OR NEW."timestamp" IS NULL)
    EXECUTE FUNCTION tidings_fill_row();

-- Seed 001's notification (002_notify.sql) now reads chain_id, block_number and registry from
-- their columns; events written before those columns existed still give chain_id and
-- block_number from their metadata, registry from their source.
CREATE OR REPLACE FUNCTION notify_new_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    meta json;
    chain json;  -- json, so a numeric chain_id stays a number as seed 001's listeners expect
    block json;
    msg text;
BEGIN
    chain := to_json(NEW.chain_id);
    block := to_json(NEW.block_number);
    IF (chain IS NULL OR block IS NULL) AND octet_length(NEW.payload::text) < 8192 THEN
        meta := NEW.payload -> 'metadata';
        chain := coalesce(chain, meta -> 'chain_id');
        block := coalesce(block, meta -> 'block_number');
    END IF;
    msg := json_build_object(
        'event_id', NEW.id,
        'chain_id', chain,
        'block_number', block,
        'event_type', NEW.type,
        'registry', coalesce(NEW.registry, NEW.source),
        'position', NEW.position,
        'stream', NEW.stream,
        'version', NEW.version
    )::text;
    IF octet_length(msg) >= 8000 THEN
        msg := json_build_object(
            'event_id', left(NEW.id, 200),
            'chain_id', left(chain::text, 200),
            'block_number', left(block::text, 200),
            'event_type', left(NEW.type, 200),
            'registry', left(coalesce(NEW.registry, NEW.source), 200),
            'position', NEW.position,
            'stream', left(NEW.stream, 200),
            'version', NEW.version,
            'truncated', true
        )::text;
    END IF;
    IF octet_length(msg) >= 8000 THEN  -- only reachable with pathological escaping
        msg := json_build_object('event_id', left(NEW.id, 100), 'position', NEW.position,
                                 'truncated', true)::text;
    END IF;
    PERFORM pg_notify('new_event', msg);
    RETURN NEW;
END
$$;
