-- The PostgreSQL event store's statements (tidings.store.postgres). The functions they call
-- (tidings_reserve, tidings_horizon, ...) come from the migrations next door.

-- ---------------------------------------------------------------- opening

-- name: current_schema
SELECT current_schema()

-- name: ensure_partitions
-- The coming partitions of a partitioned events table (none on a plain one).
SELECT tidings_ensure_partitions()

-- ---------------------------------------------------------------- after migrating

-- name: events_kind
-- 'p' for a partitioned events table, 'r' for a plain one.
SELECT relkind FROM pg_class WHERE oid = 'events'::regclass

-- name: seed_notify
-- {action}: ENABLE or DISABLE. Seed 001's per-row trigger (needs the table's owner).
ALTER TABLE events {action} TRIGGER trigger_notify_new_event

-- ---------------------------------------------------------------- writes

-- name: reserve
-- Positions (and stream versions) for a batch, before COPY; ok = false: expected_version did
-- not match, `actual` is the stream's version and nothing changed.
SELECT ok, actual, first_version, positions, recorded_at FROM tidings_reserve(%s, %s, %s)

-- name: copy_events
-- payload goes as bytea in binary COPY: json's binary input is its UTF-8 text, byte for byte.
-- The chain columns (004_chain.sql) come from the event's extensions; event_type and
-- timestamp are type and time again, as seed 001's readers expect them.
COPY events (position, id, type, source, stream, version, time, subject, correlation_id,
    causation_id, aggregate_id, aggregate_type, payload, chain_id, block_number, block_hash,
    parent_hash, transaction_hash, log_index, registry, event_type, "timestamp")
FROM STDIN (FORMAT BINARY)

-- name: insert_one
-- One event of a stream in one statement (one transaction in autocommit mode); no row when the
-- version does not match, and then tidings_reserve changed nothing.
INSERT INTO events (position, id, type, source, stream, version, time, subject, correlation_id,
    causation_id, aggregate_id, aggregate_type, payload, chain_id, block_number, block_hash,
    parent_hash, transaction_hash, log_index, registry, event_type, "timestamp")
SELECT r.positions[1], %s, %s, %s, %s, r.first_version, %s, %s, %s, %s, %s, %s,
    convert_from(%s::bytea, 'UTF8')::json, %s, %s, %s, %s, %s, %s, %s, %s, %s
FROM tidings_reserve(%s, %s, 1) r WHERE r.ok
RETURNING position, version, recorded_at

-- name: insert_plain
-- One event of no stream: a plain INSERT (the fence trigger runs before the position default
-- is drawn).
INSERT INTO events (id, type, source, stream, version, time, subject, correlation_id,
    causation_id, aggregate_id, aggregate_type, payload, chain_id, block_number, block_hash,
    parent_hash, transaction_hash, log_index, registry, event_type, "timestamp")
VALUES (%s, %s, %s, NULL, NULL, %s, %s, %s, %s, %s, %s, convert_from(%s::bytea, 'UTF8')::json,
    %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING position, version, recorded_at

-- name: stream_version
SELECT version FROM tidings_streams WHERE stream = %s

-- ---------------------------------------------------------------- the read horizon

-- name: horizon
SELECT last_position, writers FROM tidings_horizon()

-- name: writers_active
SELECT tidings_writers_active(%s)

-- ---------------------------------------------------------------- reads

-- name: events_page
-- {conditions}: the event_* fragments below that the criteria need, joined by AND.
SELECT position, stream, version, recorded_at, payload, invalidated FROM events
WHERE {conditions} ORDER BY position LIMIT %s

-- name: events_count
SELECT count(*) FROM events WHERE {conditions}

-- name: event_valid
-- Readers skip the events of blocks a reorg replaced unless the criteria include them.
NOT invalidated

-- name: event_after
position > %s

-- name: event_up_to
position <= %s

-- name: event_types
type = ANY(%s)

-- name: event_type_like_any
-- {alternatives}: one event_type_like per pattern, joined by OR. A prefix match only: patterns
-- with wildcards are filtered again in Python.
({alternatives})

-- name: event_type_like
type LIKE %s

-- name: event_since
time >= %s

-- name: event_until
time < %s

-- name: event_correlation_id
correlation_id = %s

-- name: event_aggregate_id
aggregate_id = %s

-- name: event_stream
stream = %s

-- name: load_stream
-- Versions of one stream commit in order (the stream row lock): no horizon needed.
SELECT position, stream, version, recorded_at, payload, invalidated FROM events
WHERE stream = %s AND version >= %s AND NOT invalidated ORDER BY version

-- name: head
SELECT COALESCE(max(position), 0) FROM events

-- ---------------------------------------------------------------- chains (004_chain.sql)

-- name: invalidate_chain
-- A reorg: the events of chain %s above block %s recorded before position %s are replaced.
-- Already invalidated ones are left alone, so a second recovery returns nothing new.
UPDATE events SET invalidated = true
WHERE chain_id = %s AND block_number > %s AND position < %s AND NOT invalidated
RETURNING position, stream, version, recorded_at, payload, invalidated

-- name: chain_blocks
-- The blocks (number, hash) of a chain's valid events between two heights, recorded before
-- a position: what the chain tracker compares hashes against.
SELECT DISTINCT block_number, block_hash FROM events
WHERE chain_id = %s AND block_number BETWEEN %s AND %s AND position < %s AND NOT invalidated
ORDER BY block_number, block_hash

-- ---------------------------------------------------------------- checkpoints

-- name: checkpoint
SELECT position FROM tidings_checkpoints WHERE name = %s

-- name: save_checkpoint
INSERT INTO tidings_checkpoints (name, position) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()

-- name: add_checkpoint
INSERT INTO tidings_checkpoints (name, position) VALUES (%s, 0) ON CONFLICT (name) DO NOTHING

-- name: lock_checkpoint
-- A second instance of the same transactional subscription waits here, then sees the
-- position already done: effects happen once.
SELECT position FROM tidings_checkpoints WHERE name = %s FOR UPDATE

-- name: move_checkpoint
UPDATE tidings_checkpoints SET position = %s, updated_at = now() WHERE name = %s

-- ---------------------------------------------------------------- LISTEN

-- name: listen
-- The channel of 002_notify.sql's tidings_wakeup() (CHANNEL in postgres.py).
LISTEN tidings_events

-- name: ping
SELECT 1
