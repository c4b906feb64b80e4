-- tidings outbox, PostgreSQL schema 001. Applied by `tidings migrate` (or, from an Alembic
-- migration, by tidings.outbox.schema.upgrade(op)). Every statement is idempotent.
--
-- One row per event written in an application transaction. A relay claims rows in id order,
-- publishes them, then deletes them (or marks published_at). There is no cursor: a row whose
-- transaction commits late is simply found by the next claim.
CREATE TABLE IF NOT EXISTS tidings_outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     text        NOT NULL,  -- the event's own id: consumers de-duplicate on it
    type         text        NOT NULL,
    key          text,                  -- aggregate id, else subject: order is kept per key
    payload      json        NOT NULL,  -- structured-mode CloudEvents JSON
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz            -- NULL until published (rows are marked, not deleted)
);

-- Claims walk the pending rows in id order; published rows kept for retention stay out of it.
CREATE INDEX IF NOT EXISTS tidings_outbox_pending
    ON tidings_outbox (id) WHERE published_at IS NULL;
-- Retention deletes marked rows by age.
CREATE INDEX IF NOT EXISTS tidings_outbox_published
    ON tidings_outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake-up: one payload-less NOTIFY per inserting statement, delivered at commit (PostgreSQL folds
-- identical notifications of a transaction into one, and drops them on rollback). Relays LISTEN
-- on it and poll as a fallback, so a missed notification only delays.
CREATE OR REPLACE FUNCTION tidings_outbox_wakeup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidings_outbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tidings_outbox_wakeup ON tidings_outbox;
CREATE TRIGGER tidings_outbox_wakeup AFTER INSERT ON tidings_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tidings_outbox_wakeup();

-- Called by the writer when an event cannot be written: the error aborts the application's
-- transaction in the database too, so a caller that swallows the Python exception still cannot
-- commit its data without the event.
CREATE OR REPLACE FUNCTION tidings_outbox_reject(reason text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = reason, ERRCODE = 'data_exception';
END
$$;
