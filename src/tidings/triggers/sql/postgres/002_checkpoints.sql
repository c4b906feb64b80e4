-- triggers component, schema 002: per-chain checkpoints (seed 001's table, its shape).
-- The last block processed per chain: its number and hash. tidings.triggers.chains compares a
-- new block's parent hash, and the events stored at the checkpoint's height, with it to find
-- a chain reorganisation (docs/reorgs.md). chain_id is bigint like events.chain_id (seed 001
-- said INTEGER; chain ids above 2^31 exist).
CREATE TABLE IF NOT EXISTS checkpoints (
    chain_id     bigint      PRIMARY KEY,
    block_number bigint      NOT NULL,
    block_hash   text        NOT NULL,
    updated_at   timestamptz DEFAULT now()
);
