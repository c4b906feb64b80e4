-- triggers component, schema 003: processors sharing the event stream (tidings.triggers.partitions).
-- A processor group (its checkpoint name and partition count) splits the events into
-- partitions by crc32(chain id or registry) % partitions. Each partition is leased to one
-- processor at a time: the owner renews its lease on every heartbeat, and when it dies the
-- lease runs out and another member takes the partition over from its checkpoint. Members
-- count the live processors, so each takes its fair share (ceil(partitions / members)).
CREATE TABLE IF NOT EXISTS tidings_trigger_leases (
    group_name text        NOT NULL,
    part       integer     NOT NULL,
    owner      text,                              -- NULL: released, free to take
    expires_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, part)
);
CREATE TABLE IF NOT EXISTS tidings_trigger_members (
    group_name   text        NOT NULL,
    member       text        NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, member)
);
