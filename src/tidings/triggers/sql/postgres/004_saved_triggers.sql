-- triggers component, schema 004: triggers saved through the HTTP API (tidings.triggers.saved).
-- One row per trigger: its definition as `trigger_to_dict` writes it (checked by parse_trigger
-- before it is stored), `enabled` beside it so enable/disable is one UPDATE, and `version`
-- bumped on every change of the row (an ETag for a client, and what PATCH compares).
CREATE TABLE IF NOT EXISTS tidings_triggers (
    id         text        PRIMARY KEY,
    definition jsonb       NOT NULL,
    enabled    boolean     NOT NULL DEFAULT true,
    version    bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row: bumped in the same transaction as every change of tidings_triggers, so a processor
-- learns that its trigger index is stale with one primary-key read (TriggerCatalog), deletes
-- included.
CREATE TABLE IF NOT EXISTS tidings_triggers_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint  NOT NULL
);
INSERT INTO tidings_triggers_version (one, version) VALUES (true, 0) ON CONFLICT DO NOTHING;
