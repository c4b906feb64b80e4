-- tidings event store, SQLite schema 002: seed 001's chain columns, and invalidation.
-- The same columns as PostgreSQL's 004_chain.sql: filled from the envelope's extensions
-- (chainid, blocknumber, ...; see tidings.store.chain) when tidings writes. `invalidated`
-- marks the events of blocks a chain reorganisation replaced: kept, never deleted, skipped by
-- readers unless asked (docs/reorgs.md). Rows stored before this file keep the new columns
-- NULL (invalidated 0).
ALTER TABLE tidings_events ADD COLUMN chain_id INTEGER;
ALTER TABLE tidings_events ADD COLUMN block_number INTEGER;
ALTER TABLE tidings_events ADD COLUMN block_hash TEXT;
ALTER TABLE tidings_events ADD COLUMN parent_hash TEXT;
ALTER TABLE tidings_events ADD COLUMN transaction_hash TEXT;
ALTER TABLE tidings_events ADD COLUMN log_index INTEGER;
ALTER TABLE tidings_events ADD COLUMN registry TEXT;
ALTER TABLE tidings_events ADD COLUMN event_type TEXT;
ALTER TABLE tidings_events ADD COLUMN timestamp INTEGER;
ALTER TABLE tidings_events ADD COLUMN created_at TEXT;  -- commit time, as recorded_at
ALTER TABLE tidings_events ADD COLUMN invalidated INTEGER NOT NULL DEFAULT 0;

-- The reorg queries (chain_id = ? AND block_number > ?) and partitioning by chain or registry;
-- partial, so events without chain coordinates cost them nothing.
CREATE INDEX IF NOT EXISTS tidings_events_chain_block
    ON tidings_events (chain_id, block_number) WHERE chain_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tidings_events_registry
    ON tidings_events (registry) WHERE registry IS NOT NULL;
