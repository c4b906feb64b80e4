-- triggers component, schema 002: per-chain checkpoints (seed 001's table, its shape).
-- The last block processed per chain: its number and hash; see the PostgreSQL file.
CREATE TABLE IF NOT EXISTS checkpoints (
    chain_id     INTEGER PRIMARY KEY,
    block_number INTEGER NOT NULL,
    block_hash   TEXT    NOT NULL,
    updated_at   TEXT              -- UTC, 'YYYY-MM-DDTHH:MM:SS.ffffffZ'
);
