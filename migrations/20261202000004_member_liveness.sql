-- A dead worker found out at once (issue 18: "kill -9 ≤ 2 s to resume"). Each worker holds a
-- session-level advisory lock keyed by its incarnation, on a connection of its own, for as long as
-- it runs. A process that dies (kill -9, OOM, a crash: the kernel closes its sockets) loses its
-- session, and the lock with it, at once; its lease TTL would take 5 s more. A member whose lock
-- is free and whose last renewal is older than a grace (one and a half renewal intervals) is dead: the
-- others drop it from the live set and take its leases over without waiting for their expiry.
-- Both conditions, because either alone happens to a live worker: a lock is lost with its session
-- (pg_terminate_backend; the worker takes it again on its next round), and a renewal can be late.
-- Only a member that renewed since PostgreSQL started is judged by its lock (a restart loses every
-- lock, and the live members renew and take theirs again one by one): one that has not renewed
-- since is judged by its TTL, as before.
-- A paused process keeps its session and its lock: it is found out by its TTL, as before.
-- Whatever is judged, the fence stays the authority: a worker taken over while alive has its
-- next transaction refused, stops the partition's consumer and rejoins.

-- Set by the workers that hold the lock: a member without it (an older worker during a rolling
-- update) is judged by its TTL alone.
alter table worker_members add column liveness_lock boolean not null default false;

create function orderflow_liveness_key(p_incarnation uuid) returns bigint
language sql immutable as $$
    select ('x' || left(replace(p_incarnation::text, '-', ''), 16))::bit(64)::bigint
$$;

-- The incarnations of the members dead by their liveness lock (see above). pg_locks is read once
-- per call, and only when some member is late (reading it takes every lock-manager partition
-- lock for a moment): callers ask once per statement, not once per row.
create function orderflow_dead_members(p_grace interval) returns setof uuid
language sql stable as $$
    with late as (
        select m.incarnation, orderflow_liveness_key(m.incarnation) as key
          from worker_members m
         where m.liveness_lock and m.heartbeat_at < now() - p_grace
           and m.heartbeat_at > pg_postmaster_start_time())
    select late.incarnation from late
     where not exists (
           select 1 from pg_locks l
            where l.locktype = 'advisory' and l.granted and l.objsubid = 1
              and l.database = (select oid from pg_database where datname = current_database())
              and l.classid = ((late.key >> 32) & 4294967295)::oid
              and l.objid = (late.key & 4294967295)::oid)
$$;
