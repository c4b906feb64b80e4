-- The chain checkpoints' statements (tidings.triggers.checkpoints), on 002_checkpoints.sql.

-- name: one
SELECT chain_id, block_number, block_hash, updated_at FROM checkpoints WHERE chain_id = %s

-- name: every
SELECT chain_id, block_number, block_hash, updated_at FROM checkpoints ORDER BY chain_id

-- name: advance
-- Forward only: an event processed again after a restart never moves a checkpoint back.
INSERT INTO checkpoints AS c (chain_id, block_number, block_hash) VALUES (%s, %s, %s)
ON CONFLICT (chain_id) DO UPDATE
    SET block_number = excluded.block_number, block_hash = excluded.block_hash, updated_at = now()
    WHERE c.block_number <= excluded.block_number
RETURNING block_number, block_hash, updated_at

-- name: reset
-- A reorg's recovery: back to the last valid block, whatever the checkpoint said.
INSERT INTO checkpoints AS c (chain_id, block_number, block_hash) VALUES (%s, %s, %s)
ON CONFLICT (chain_id) DO UPDATE
    SET block_number = excluded.block_number, block_hash = excluded.block_hash, updated_at = now()
RETURNING block_number, block_hash, updated_at

-- name: forget
DELETE FROM checkpoints WHERE chain_id = %s
