-- tidings event store, PostgreSQL schema 002: LISTEN/NOTIFY.
--
-- 1. tidings_wakeup: one payload-light NOTIFY on channel `tidings_events` per inserting
--    statement. PostgreSQL folds identical notifications of one transaction into one, so a
--    transaction wakes listeners once however many rows or statements it wrote. The payload is
--    the table's schema, so listeners of other schemas in the same database can ignore it.
--    Notifications are only wake-ups: subscribers read from their checkpoint.
CREATE OR REPLACE FUNCTION tidings_wakeup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidings_events', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tidings_wakeup ON events;
CREATE TRIGGER tidings_wakeup AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tidings_wakeup();

-- 2. Seed 001's per-row trigger: notify_new_event() on channel `new_event`, for external
--    listeners that expect its JSON object (event_id, chain_id, block_number, event_type,
--    registry). tidings adds position, stream, version and source: `position` always fits, so
--    a listener fetches the full event by position even when event_id had to be truncated.
--    chain_id and block_number come from the event's metadata when it carries them (payloads
--    under 8 kB only, to keep the trigger cheap). The payload always stays under PostgreSQL's
--    8000-byte NOTIFY limit: long fields are cut to 200 characters and "truncated": true is
--    added. One notification per row costs insert throughput; turn it off with
--    `tidings migrate URL --no-seed-notify` when no external listener needs it.
CREATE OR REPLACE FUNCTION notify_new_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    meta json;
    chain json;  -- json, so a numeric chain_id stays a number as seed 001's listeners expect
    block json;
    msg text;
BEGIN
    IF octet_length(NEW.payload::text) < 8192 THEN
        meta := NEW.payload -> 'metadata';
        chain := meta -> 'chain_id';
        block := meta -> 'block_number';
    END IF;
    msg := json_build_object(
        'event_id', NEW.id,
        'chain_id', chain,
        'block_number', block,
        'event_type', NEW.type,
        'registry', NEW.source,
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
            'registry', left(NEW.source, 200),
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

DROP TRIGGER IF EXISTS trigger_notify_new_event ON events;
CREATE TRIGGER trigger_notify_new_event AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION notify_new_event();
