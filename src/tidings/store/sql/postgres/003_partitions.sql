-- tidings event store, PostgreSQL schema 003: partition upkeep and retention.
-- Both functions do nothing on a plain (unpartitioned) events table.

-- Create the partitions covering now() - 1 interval .. now() + `ahead` intervals. Run it from
-- cron / pg_cron (daily is plenty); PostgresStore also runs it when it opens. Returns the
-- names of the partitions it created.
CREATE OR REPLACE FUNCTION tidings_ensure_partitions(ahead integer DEFAULT 3)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part text;
    step interval;
    lo timestamptz;
    hi timestamptz;
    name text;
BEGIN
    IF to_regclass('tidings_settings') IS NULL THEN
        RETURN;
    END IF;
    SELECT value INTO part FROM tidings_settings WHERE key = 'partition';
    IF part IS NULL THEN
        RETURN;
    END IF;
    step := ('1 ' || part)::interval;
    lo := date_trunc(part, now() - step);
    FOR i IN 0 .. ahead + 1 LOOP
        hi := lo + step;
        name := 'events_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                           name, lo, hi);
            RETURN NEXT name;
        END IF;
        lo := hi;
    END LOOP;
END
$$;

-- Retention: detach (detach_only) or drop every partition whose whole range ends at or before
-- `older_than`. Returns the names handled. Stream versions live in tidings_streams, so streams
-- keep counting after their old events are gone; readers simply find no rows below the cut.
CREATE OR REPLACE FUNCTION tidings_drop_partitions(older_than timestamptz,
                                                   detach_only boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    upper_bound timestamptz;
BEGIN
    FOR r IN
        SELECT c.oid::regclass::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass
         ORDER BY 1
    LOOP
        CONTINUE WHEN r.bound = 'DEFAULT';
        upper_bound := substring(r.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
        CONTINUE WHEN upper_bound IS NULL OR upper_bound > older_than;
        EXECUTE format('ALTER TABLE events DETACH PARTITION %s', r.name);
        IF NOT detach_only THEN
            EXECUTE format('DROP TABLE %s', r.name);
        END IF;
        RETURN NEXT r.name;
    END LOOP;
END
$$;
