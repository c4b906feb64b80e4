-- triggers component, schema 003: processors sharing the event stream; see the PostgreSQL
-- file. On SQLite one processor owns every partition (a single process writes the file), so
-- these tables stay empty; they exist so both dialects have the same schema.
CREATE TABLE IF NOT EXISTS tidings_trigger_leases (
    group_name TEXT    NOT NULL,
    part       INTEGER NOT NULL,
    owner      TEXT,
    expires_at REAL    NOT NULL,  -- epoch seconds
    PRIMARY KEY (group_name, part)
);
CREATE TABLE IF NOT EXISTS tidings_trigger_members (
    group_name   TEXT NOT NULL,
    member       TEXT NOT NULL,
    heartbeat_at REAL NOT NULL,   -- epoch seconds
    PRIMARY KEY (group_name, member)
);
