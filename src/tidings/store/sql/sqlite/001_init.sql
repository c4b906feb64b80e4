-- tidings event store, SQLite schema 001.
-- Applied automatically by open_store("sqlite:///...") (and by `tidings migrate`); the runner
-- records it in tidings_migrations. Every statement is idempotent, so two processes racing to
-- create a fresh database both succeed.

-- position: the global order. AUTOINCREMENT never reuses a position, even after the newest
-- row is deleted, so a reader's "after position N" stays meaningful forever.
CREATE TABLE IF NOT EXISTS tidings_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    type           TEXT    NOT NULL,
    stream         TEXT,
    version        INTEGER,
    time           TEXT    NOT NULL,  -- event time, UTC, 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (sorts)
    correlation_id TEXT,
    aggregate_id   TEXT,
    recorded_at    TEXT    NOT NULL,  -- commit time, same format
    body           TEXT    NOT NULL,  -- the structured-mode CloudEvents JSON
    CHECK ((stream IS NULL) = (version IS NULL))
);

-- One version per stream: the database, not only the writer lock, forbids a fork.
CREATE UNIQUE INDEX IF NOT EXISTS tidings_events_stream_version
    ON tidings_events (stream, version) WHERE stream IS NOT NULL;
-- Every SQLite index entry ends with the rowid (= position), so (type) is already (type, position):
-- "type IN (...) ORDER BY position" walks the index in order without a sort.
CREATE INDEX IF NOT EXISTS tidings_events_type ON tidings_events (type);
CREATE INDEX IF NOT EXISTS tidings_events_correlation
    ON tidings_events (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tidings_events_aggregate
    ON tidings_events (aggregate_id) WHERE aggregate_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tidings_events_time ON tidings_events (time);

-- Durable subscription checkpoints: the last position a named subscription finished.
CREATE TABLE IF NOT EXISTS tidings_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at TEXT    NOT NULL
);
