-- tidings triggers, SQLite schema 001 (component `triggers`): the action job queue and the
-- recorded results. Applied by `tidings migrate URL` and by the job queue and the results on
-- open (tidings.migrations). Times are epoch seconds (REAL). See the PostgreSQL file for the
-- meaning of each column.

CREATE TABLE action_jobs (
    key           TEXT    PRIMARY KEY,
    event_id      TEXT    NOT NULL,
    trigger_id    TEXT    NOT NULL,
    action_index  INTEGER NOT NULL,
    action_type   TEXT    NOT NULL,
    compensation  INTEGER NOT NULL DEFAULT 0 CHECK (compensation IN (0, 1)),
    partition_key TEXT,
    position      INTEGER,
    action        TEXT,
    event         TEXT,
    state         TEXT    NOT NULL
        CHECK (state IN ('pending', 'running', 'done', 'dead', 'cancelled')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    available_at  REAL    NOT NULL,
    lease_until   REAL,
    lease_token   TEXT,
    worker_id     TEXT,
    last_error    TEXT,
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL
) WITHOUT ROWID;
CREATE INDEX action_jobs_due ON action_jobs (available_at) WHERE state = 'pending';
CREATE INDEX action_jobs_leased ON action_jobs (lease_until) WHERE state = 'running';
CREATE INDEX action_jobs_dead ON action_jobs (updated_at) WHERE state = 'dead';
CREATE INDEX action_jobs_event ON action_jobs (event_id);

CREATE TABLE action_results (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT    NOT NULL UNIQUE,
    event_id     TEXT    NOT NULL,
    trigger_id   TEXT    NOT NULL,
    action_index INTEGER NOT NULL,
    action_type  TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN
        ('succeeded', 'failed', 'dead', 'cancelled', 'invalidated', 'compensated')),
    output       TEXT,
    error        TEXT,
    duration_ms  REAL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    updated_at   REAL    NOT NULL
);
CREATE INDEX action_results_event ON action_results (event_id);
CREATE INDEX action_results_created ON action_results (created_at);
CREATE INDEX action_results_trigger ON action_results (trigger_id, seq);
CREATE INDEX action_results_status ON action_results (status, seq);
