-- triggers component, schema 005: where a processor group started; see the PostgreSQL file.
CREATE TABLE IF NOT EXISTS tidings_trigger_starts (
    group_name     TEXT    PRIMARY KEY,
    start_position INTEGER NOT NULL,
    created_at     REAL    NOT NULL  -- epoch seconds
);
