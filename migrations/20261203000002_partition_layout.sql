-- The partition count lives in PostgreSQL and grows online by doubling (issue 18): one row per
-- count the deployment has had, the highest generation is the count commands are routed by now.
-- `orderflow-api partitions grow` declares the new queues first, then inserts the next generation
-- (2 x the count) with its lease rows and notifies `orderflow_partitions`; every process follows.
-- Messages routed by an earlier count stay valid: per-order order rests on the order's seq, and an
-- order's earlier command still queued on its old partition is applied first by whichever worker
-- reaches a later one (commands::lock_between).
create table partition_layout (
    generation integer primary key check (generation >= 1),
    partitions integer not null check (partitions between 1 and 1024),
    grown_at timestamptz not null default now()
);

-- The partition whose lease fenced the transaction that finished a command (with `epoch`, its
-- epoch): after a growth the owner of an order's new partition may finish the order's earlier
-- command that was routed to the old one. Audit check 10 follows the epochs of this lease.
alter table commands add column lease_partition integer;

-- As before (migration partition_leases), and with one partition it also names it in
-- orderflow.lease_partition, which commands::finish records beside the epoch.
create or replace function orderflow_fence(
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
        perform set_config('orderflow.lease_partition', p_partitions[1]::text, true);
    end if;
end $$;
