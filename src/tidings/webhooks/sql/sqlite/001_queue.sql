-- tidings webhook delivery queue, SQLite schema 001 (component `webhooks`). Applied by
-- `tidings migrate URL` and by DeliveryQueue on open (tidings.migrations). Every statement is
-- idempotent: databases of earlier releases, which ran this file on every open, already have
-- these tables and adopt the file as applied. Keep the CREATE statements byte for byte: SQLite
-- stores their text, and the upgrade test compares it. Times are epoch seconds (REAL).

-- body: the Endpoint as msgspec JSON (the source of truth); enabled and source mirror it for SQL.
CREATE TABLE IF NOT EXISTS tidings_webhook_endpoints (
    id         TEXT    PRIMARY KEY,
    body       TEXT    NOT NULL,
    enabled    INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    source     TEXT    NOT NULL CHECK (source IN ('config', 'api')),
    updated_at REAL    NOT NULL
);

-- One row per (event, endpoint). id is the Standard Webhooks message id (UUIDv7 text, so it sorts
-- by creation time), kept across retries so receivers can deduplicate.
CREATE TABLE IF NOT EXISTS tidings_webhook_deliveries (
    id              TEXT    PRIMARY KEY,
    event_id        TEXT    NOT NULL,
    position        INTEGER NOT NULL,  -- the event's store position (tidings_events.position)
    endpoint_id     TEXT    NOT NULL,
    state           TEXT    NOT NULL
        CHECK (state IN ('pending', 'delivering', 'delivered', 'dead', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    lease_until     REAL,
    lease_token     TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL,
    delivered_at    REAL
);

-- Claiming walks each endpoint's due rows in next_attempt_at order. Partial: delivered, dead and
-- cancelled rows (millions, eventually) are not in it, so claims cost the same on a big table.
CREATE INDEX IF NOT EXISTS tidings_webhook_deliveries_due
    ON tidings_webhook_deliveries (endpoint_id, next_attempt_at) WHERE state = 'pending';
-- Listing, newest first: per endpoint, per state (the dead-letter view; and the few rows in
-- flight, for expired leases), per event.
CREATE INDEX IF NOT EXISTS tidings_webhook_deliveries_endpoint
    ON tidings_webhook_deliveries (endpoint_id, id);
CREATE INDEX IF NOT EXISTS tidings_webhook_deliveries_state
    ON tidings_webhook_deliveries (state, id);
CREATE INDEX IF NOT EXISTS tidings_webhook_deliveries_event
    ON tidings_webhook_deliveries (event_id);

-- The attempts log. No unique (delivery_id, number): a worker whose lease was taken over still
-- made its request, and its attempt is recorded next to the new holder's attempt of that number.
CREATE TABLE IF NOT EXISTS tidings_webhook_attempts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT    NOT NULL,
    number        INTEGER NOT NULL,
    started_at    REAL    NOT NULL,
    duration      REAL    NOT NULL,
    status_code   INTEGER,
    response_body TEXT,  -- at most 2 KB
    error         TEXT
);
CREATE INDEX IF NOT EXISTS tidings_webhook_attempts_delivery
    ON tidings_webhook_attempts (delivery_id, number);

-- Event sources that create deliveries (`events.source: store` follows the store; one row per
-- consumer name). start_position is fixed when the consumer first runs, at the end of the store
-- then, so turning the source on does not deliver the history; the running checkpoint is the
-- store's subscription checkpoint of the same name, written with the delivery rows.
CREATE TABLE IF NOT EXISTS tidings_webhook_sources (
    name           TEXT    PRIMARY KEY,
    start_position INTEGER NOT NULL,
    created_at     REAL    NOT NULL
);
