-- The partition leases' statements (tidings.triggers.partitions), on 003_partitions.sql.

-- name: heartbeat
INSERT INTO tidings_trigger_members AS m (group_name, member, heartbeat_at)
VALUES (%(group)s, %(member)s, now())
ON CONFLICT (group_name, member) DO UPDATE SET heartbeat_at = now()

-- name: live
SELECT count(*) FROM tidings_trigger_members
WHERE group_name = %(group)s AND heartbeat_at > now() - make_interval(secs => %(ttl)s)

-- name: prune
-- Members silent for ten lease times are gone for good.
DELETE FROM tidings_trigger_members
WHERE group_name = %(group)s AND heartbeat_at < now() - make_interval(secs => %(ttl)s * 10)

-- name: renew
-- Still ours while no one took it over: a lease that ran out but was not taken is renewed.
UPDATE tidings_trigger_leases SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE group_name = %(group)s AND owner = %(member)s
RETURNING part

-- name: free
-- Partitions nobody holds: never leased, released, or their lease ran out.
SELECT p FROM generate_series(0, %(partitions)s - 1) AS p
WHERE NOT EXISTS (
    SELECT 1 FROM tidings_trigger_leases l
    WHERE l.group_name = %(group)s AND l.part = p AND l.owner IS NOT NULL AND l.expires_at > now()
)
ORDER BY p

-- name: acquire
-- Only a free partition is taken; of two members racing for it, one gets the row back.
INSERT INTO tidings_trigger_leases AS l (group_name, part, owner, expires_at)
VALUES (%(group)s, %(part)s, %(member)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (group_name, part) DO UPDATE
    SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE l.owner IS NULL OR l.expires_at <= now() OR l.owner = excluded.owner
RETURNING part

-- name: release
UPDATE tidings_trigger_leases SET owner = NULL, expires_at = now()
WHERE group_name = %(group)s AND owner = %(member)s AND part = ANY(%(parts)s)

-- name: leave
DELETE FROM tidings_trigger_members WHERE group_name = %(group)s AND member = %(member)s

-- name: leases
SELECT part, owner, expires_at > now() FROM tidings_trigger_leases
WHERE group_name = %(group)s ORDER BY part
