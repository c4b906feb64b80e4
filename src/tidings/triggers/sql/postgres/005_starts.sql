-- triggers component, schema 005: where a processor group started (tidings.triggers.starts).
-- Recorded once, the first time a group (the processor's name) ever runs: the head of the
-- store for processor.start: end, 0 for beginning. A partition whose checkpoint was never
-- written starts here, so a new partition count re-reads from the group's start.
CREATE TABLE IF NOT EXISTS tidings_trigger_starts (
    group_name     text        PRIMARY KEY,
    start_position bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
