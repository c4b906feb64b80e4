-- tidings triggers, PostgreSQL schema 001 (component `triggers`): the action job queue and the
-- recorded results. Applied by `tidings migrate URL` and by the job queue and the results on
-- open (tidings.migrations). Job times are epoch seconds (double precision), as in the webhook
-- queue; the results' times are timestamptz, because seed 001's monitoring queries compare
-- `action_results.created_at` with `NOW() - INTERVAL '1 hour'`.

-- One row per job key (event id : trigger id : action index [: compensate]). The key is the
-- primary key: an enqueue of a key seen before, in any state, adds nothing (the idempotency of
-- replays and redelivered events). A claim leases the row (lease_until, lease_token); a worker
-- that dies loses it when the lease runs out and another worker takes the job over. The event
-- and the action are dropped (NULL) once a job is done or cancelled: the key alone keeps the
-- idempotency; dead jobs keep them for a retry.
CREATE TABLE action_jobs (
    key           text    PRIMARY KEY,
    event_id      text    NOT NULL,
    trigger_id    text    NOT NULL,
    action_index  integer NOT NULL,
    action_type   text    NOT NULL,
    compensation  boolean NOT NULL DEFAULT false,
    partition_key text,
    position      bigint,  -- the event's store position, when it came from the store
    action        text,    -- the ActionSpec as JSON
    event         text,    -- the event as CloudEvents JSON
    state         text    NOT NULL
        CHECK (state IN ('pending', 'running', 'done', 'dead', 'cancelled')),
    attempts      integer NOT NULL DEFAULT 0,  -- attempts started (claims)
    available_at  double precision NOT NULL,  -- due from (retries wait here)
    lease_until   double precision,
    lease_token   text,
    worker_id     text,
    last_error    text,
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL
);
-- Claims walk the due pending rows and the expired leases; partial, so done rows (most of the
-- table, eventually) cost nothing.
CREATE INDEX action_jobs_due ON action_jobs (available_at) WHERE state = 'pending';
CREATE INDEX action_jobs_leased ON action_jobs (lease_until) WHERE state = 'running';
CREATE INDEX action_jobs_dead ON action_jobs (updated_at) WHERE state = 'dead';
-- Reorgs cancel the pending jobs of invalidated events.
CREATE INDEX action_jobs_event ON action_jobs (event_id);

-- One row per job key: the last outcome of its action (status, output, error, the duration of
-- the last attempt, attempts). seq orders the API's pages.
CREATE TABLE action_results (
    seq          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key          text    NOT NULL UNIQUE,
    event_id     text    NOT NULL,
    trigger_id   text    NOT NULL,
    action_index integer NOT NULL,
    action_type  text    NOT NULL,
    status       text    NOT NULL CHECK (status IN
        ('succeeded', 'failed', 'dead', 'cancelled', 'invalidated', 'compensated')),
    output       jsonb,
    error        text,
    duration_ms  double precision,
    attempts     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX action_results_event ON action_results (event_id);
CREATE INDEX action_results_created ON action_results (created_at);
CREATE INDEX action_results_trigger ON action_results (trigger_id, seq);
CREATE INDEX action_results_status ON action_results (status, seq);
