-- The SQLite event store's statements (tidings.store.sqlite). Times are fixed-width UTC text
-- ('YYYY-MM-DDTHH:MM:SS.ffffffZ'), so time ranges are plain text comparisons.

-- ---------------------------------------------------------------- connections

-- name: synchronous
-- {level}: one of OFF, NORMAL, FULL, EXTRA (checked before; PRAGMA takes no parameter).
PRAGMA synchronous = {level}

-- name: wal
PRAGMA journal_mode = WAL

-- name: read_only
PRAGMA query_only = ON

-- ---------------------------------------------------------------- writes

-- name: insert
-- event_type, timestamp and created_at (002_chain.sql) are type, time and recorded_at again,
-- as seed 001's readers expect them. A batch without chain coordinates leaves the chain
-- columns out (binding seven NULLs per row is a fifth of the append's cost).
INSERT INTO tidings_events (id, type, stream, version, time, correlation_id, aggregate_id,
    recorded_at, body, event_type, timestamp, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: insert_chain
-- The same with the chain columns, filled from the events' extensions.
INSERT INTO tidings_events (id, type, stream, version, time, correlation_id, aggregate_id,
    recorded_at, body, event_type, timestamp, created_at, chain_id, block_number, block_hash,
    parent_hash, transaction_hash, log_index, registry)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: last_position
SELECT last_insert_rowid()

-- name: stream_version
SELECT COALESCE(MAX(version), 0) FROM tidings_events WHERE stream = ?

-- name: existing_ids
-- Which of a JSON array of ids are stored already (to name the duplicate of a failed append).
SELECT id FROM tidings_events WHERE id IN (SELECT value FROM json_each(?))

-- ---------------------------------------------------------------- reads

-- name: read_all
-- The log without the events a reorg invalidated (read_all_raw: with them).
SELECT position, stream, version, recorded_at, body, invalidated FROM tidings_events
WHERE position > ? AND NOT invalidated ORDER BY position LIMIT ?

-- name: read_all_raw
SELECT position, stream, version, recorded_at, body, invalidated FROM tidings_events
WHERE position > ? ORDER BY position LIMIT ?

-- name: events
-- {conditions}: the event_* fragments below that the criteria need, joined by AND.
SELECT position, stream, version, recorded_at, body, invalidated FROM tidings_events
WHERE {conditions} ORDER BY position

-- name: events_limited
SELECT position, stream, version, recorded_at, body, invalidated FROM tidings_events
WHERE {conditions} ORDER BY position LIMIT ?

-- name: events_count
SELECT COUNT(*) FROM tidings_events WHERE {conditions}

-- name: event_valid
-- Readers skip the events of blocks a reorg replaced unless the criteria include them.
NOT invalidated

-- name: event_after
position > ?

-- name: event_types
-- {marks}: one ? per type name. An IN list, so the (type) index (type, position underneath)
-- serves "type IN (...) ORDER BY position".
type IN ({marks})

-- name: event_type_patterns
-- The glob patterns, newline-separated, matched by the tidings_types() function that every
-- connection registers: the filter runs under the LIMIT.
tidings_types(?, type)

-- name: event_since
time >= ?

-- name: event_until
time < ?

-- name: event_correlation_id
correlation_id = ?

-- name: event_aggregate_id
aggregate_id = ?

-- name: event_stream
stream = ?

-- name: load_stream
SELECT position, stream, version, recorded_at, body, invalidated FROM tidings_events
WHERE stream = ? AND version >= ? AND NOT invalidated ORDER BY version

-- name: head
SELECT COALESCE(MAX(position), 0) FROM tidings_events

-- ---------------------------------------------------------------- chains (002_chain.sql)

-- name: invalidate_chain
-- A reorg: the events of a chain above a block, recorded before a position, are replaced.
-- Already invalidated ones are left alone, so a second recovery returns nothing new.
UPDATE tidings_events SET invalidated = 1
WHERE chain_id = ? AND block_number > ? AND position < ? AND NOT invalidated
RETURNING position, stream, version, recorded_at, body, invalidated

-- name: chain_blocks
-- The blocks (number, hash) of a chain's valid events between two heights, recorded before a
-- position: what the chain tracker compares hashes against.
SELECT DISTINCT block_number, block_hash FROM tidings_events
WHERE chain_id = ? AND block_number BETWEEN ? AND ? AND position < ? AND NOT invalidated
ORDER BY block_number, block_hash

-- ---------------------------------------------------------------- checkpoints

-- name: checkpoint
SELECT position FROM tidings_checkpoints WHERE name = ?

-- name: save_checkpoint
INSERT INTO tidings_checkpoints (name, position, updated_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
