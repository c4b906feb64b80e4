-- tidings outbox, SQLite schema 001. Applied by `tidings migrate` (or, from an Alembic
-- migration, by tidings.outbox.schema.upgrade(op)). Every statement is idempotent.
--
-- One row per event written in an application transaction. A relay leases rows (lease_owner,
-- lease_until) in one write transaction, publishes them, then deletes them (or marks
-- published_at). A relay that dies leaves its lease to expire; another relay takes the rows.
-- Times are epoch seconds.
CREATE TABLE IF NOT EXISTS tidings_outbox (
    -- A new row's id is above every row present, so ids order the rows (one writer at a time:
    -- they also commit in that order). No AUTOINCREMENT: it costs every insert, and an id
    -- reused after its row was deleted harms nothing here.
    id           INTEGER PRIMARY KEY,
    event_id     TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    key          TEXT,
    payload      TEXT    NOT NULL,
    created_at   REAL    NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    published_at REAL,
    lease_owner  TEXT,
    lease_until  REAL
);

CREATE INDEX IF NOT EXISTS tidings_outbox_pending
    ON tidings_outbox (id) WHERE published_at IS NULL;
-- "does another relay hold a live lease on this key?", asked per candidate row. Only leased
-- rows are in it (a few batches), so an insert does not pay for it.
CREATE INDEX IF NOT EXISTS tidings_outbox_leased
    ON tidings_outbox (key) WHERE lease_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS tidings_outbox_published
    ON tidings_outbox (published_at) WHERE published_at IS NOT NULL;
