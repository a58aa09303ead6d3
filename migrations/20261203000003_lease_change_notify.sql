-- Every change to who is live or who holds what is announced on `orderflow_leases`, so that each
-- worker's lease keeper acts on it at once instead of on its next round (every ttl / 10): a join
-- makes the holders hand over its share, a release lets the next holder take the partition, a
-- leave lets the others take what it freed. A hand-over waited up to one round for each of the
-- three steps. Statement-level on the lease rows (they change only when a lease moves: take,
-- draining, release, growth), row-level on the members for a new incarnation only: a member's
-- renewal (twice a second per worker) announces nothing.
--
-- One trigger function for any channel (its first argument), for this and later announcements
-- (`notify_clients_changed` predates it).
create function notify_channel() returns trigger
language plpgsql as $$
begin
    perform pg_notify(tg_argv[0], '');
    return null;
end;
$$;

create trigger partition_leases_changed
    after insert or update or delete on partition_leases
    for each statement execute function notify_channel('orderflow_leases');

create trigger worker_members_joined_or_left
    after insert or delete on worker_members
    for each statement execute function notify_channel('orderflow_leases');

create trigger worker_members_restarted
    after update on worker_members
    for each row when (old.incarnation is distinct from new.incarnation)
    execute function notify_channel('orderflow_leases');
