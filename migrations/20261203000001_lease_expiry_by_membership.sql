-- A lease lasts as long as its holder's membership (issue 18). Until now each worker renewed every
-- lease row it held twice a second, with an UPDATE that also had to wait for the FOR SHARE locks
-- its own applies' fences (orderflow_fence) hold on those rows, while later fences queued behind
-- the waiting UPDATE: a convoy on every partition at every renewal, measured as a rise of the
-- accept→applied p99 at half rate, and a renewal that waits on a lease row a stopped worker's
-- transaction holds. Now a worker renews only its own worker_members row; a lease is expired when
-- its holder (owner and incarnation) has no membership that runs past now(), or is dead by its
-- liveness lock. Lease rows change only when a lease moves (take, draining, release), so the
-- fences never wait for a renewal, and a renewal waits for nothing but its own row.
alter table partition_leases drop column heartbeat_at, drop column expires_at;
