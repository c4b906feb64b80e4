-- triggers component, schema 004: triggers saved through the HTTP API; see the PostgreSQL
-- file. Times are epoch seconds (REAL).
CREATE TABLE IF NOT EXISTS tidings_triggers (
    id         TEXT    PRIMARY KEY,
    definition TEXT    NOT NULL,  -- JSON
    enabled    INTEGER NOT NULL DEFAULT 1,
    version    INTEGER NOT NULL DEFAULT 1,
    created_at REAL    NOT NULL,
    updated_at REAL    NOT NULL
);

CREATE TABLE IF NOT EXISTS tidings_triggers_version (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO tidings_triggers_version (one, version) VALUES (1, 0);
