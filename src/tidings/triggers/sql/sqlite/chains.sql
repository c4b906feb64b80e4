-- The chain checkpoints' statements (tidings.triggers.checkpoints), on 002_checkpoints.sql.

-- name: one
SELECT chain_id, block_number, block_hash, updated_at FROM checkpoints WHERE chain_id = ?

-- name: every
SELECT chain_id, block_number, block_hash, updated_at FROM checkpoints ORDER BY chain_id

-- name: advance
-- Forward only: an event processed again after a restart never moves a checkpoint back.
INSERT INTO checkpoints AS c (chain_id, block_number, block_hash, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (chain_id) DO UPDATE
    SET block_number = excluded.block_number, block_hash = excluded.block_hash,
        updated_at = excluded.updated_at
    WHERE c.block_number <= excluded.block_number

-- name: reset
INSERT INTO checkpoints AS c (chain_id, block_number, block_hash, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (chain_id) DO UPDATE
    SET block_number = excluded.block_number, block_hash = excluded.block_hash,
        updated_at = excluded.updated_at

-- name: forget
DELETE FROM checkpoints WHERE chain_id = ?
