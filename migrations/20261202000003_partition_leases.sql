-- Partition ownership with a fence (issue 18). Each partition has one lease row; a worker consumes
-- a partition's queue only while it holds that lease, and every transaction it writes for the
-- partition starts by checking, FOR SHARE, that it still holds the lease at the epoch it took it
-- with (orderflow_fence). Taking a lease over bumps the epoch: the UPDATE waits for a holder's
-- transaction in flight and every later transaction of that holder fails its fence. A worker
-- that was paused (SIGSTOP, a stall, a network cut) therefore cannot commit for a partition
-- another worker took.

-- The live workers: each renews its row about once a second; a row whose expiry passed belongs
-- to a worker that stopped, crashed or was cut off. Every worker computes the same balanced
-- assignment from the same set of live names.
create table worker_members (
    name          text primary key,
    -- a new process under the same name (a restarted pod) replaces the old one's row; the old
    -- process's renewals then find no row of its own and it stops
    incarnation   uuid not null,
    started_at    timestamptz not null default now(),
    heartbeat_at  timestamptz not null default now(),
    expires_at    timestamptz not null
);

create table partition_leases (
    partition     integer primary key check (partition >= 0),
    -- null while free
    owner         text,
    incarnation   uuid,
    -- bumped by every take; never goes down
    epoch         bigint not null default 0 check (epoch >= 0),
    -- active: consumed by its owner; draining: its owner is finishing what it holds before a
    -- hand-over; free: nobody holds it
    state         text not null default 'free' check (state in ('active', 'draining', 'free')),
    heartbeat_at  timestamptz,
    expires_at    timestamptz,
    changed_at    timestamptz not null default now(),
    check ((state = 'free') = (owner is null)),
    check ((owner is null) = (incarnation is null))
);

-- Every take of a lease: the dashboard shows the last hour's, the race audit counts them.
create table partition_moves (
    id          bigserial primary key,
    partition   integer not null,
    epoch       bigint not null,
    -- null when the lease was free and had never been held, or was released by its owner
    from_owner  text,
    to_owner    text not null,
    -- handover: released by its owner; takeover: its owner's lease expired (or its owner gave it
    -- up without releasing it, cut off from PostgreSQL, and takes it back); first: never held
    kind        text not null check (kind in ('first', 'handover', 'takeover')),
    at          timestamptz not null default now()
);
create index partition_moves_recent on partition_moves (at desc);

-- The lease epoch a command was applied under (null: applied before leases, or by a process
-- that holds none, such as the benchmark's in-process applier).
alter table commands add column epoch bigint;
-- The lease epoch of the latest start of a redelivered message: a redelivery started under the
-- epoch its command was then applied under was the first start of that work (a message the
-- broker had in flight to a consumer that was cancelled, handed back unopened), not a repeat.
alter table delivery_attempts add column epoch bigint;

-- The fence: the first statement of every transaction a worker writes for partitions. Locks the
-- leases FOR SHARE when the caller holds each of them at the given epoch; otherwise raises
-- SQLSTATE OF001 (lease_lost), so that the transaction rolls back and the worker stops consuming
-- the partition. With one partition it also sets orderflow.lease_epoch for the transaction, which
-- commands_finish records on the commands it finishes.
create function orderflow_fence(
    p_partitions integer[], p_epochs bigint[], p_owner text, p_incarnation uuid
) returns void language plpgsql as $$
declare
    held integer;
begin
    select count(*) into held from (
        select 1
          from partition_leases l
          join unnest(p_partitions, p_epochs) as w (partition, epoch)
            on l.partition = w.partition and l.epoch = w.epoch
         where l.owner = p_owner and l.incarnation = p_incarnation and l.state <> 'free'
           for share of l) as fenced;
    if held < cardinality(p_partitions) then
        raise exception using
            errcode = 'OF001',
            message = format('partition lease lost: %s no longer holds partitions %s at epochs %s',
                             p_owner, p_partitions, p_epochs);
    end if;
    if cardinality(p_partitions) = 1 then
        perform set_config('orderflow.lease_epoch', p_epochs[1]::text, true);
    end if;
end $$;
