-- Every change to a client (a revocation, a new rate limit; by orderflow-api or by hand) is
-- announced on `orderflow_clients`, so that API processes drop the keys they cached: a revoked
-- key fails at once. Statement-level: one notification per statement, however many rows.
create function notify_clients_changed() returns trigger
language plpgsql as $$
begin
    perform pg_notify('orderflow_clients', '');
    return null;
end;
$$;

create trigger clients_changed
    after update or delete on clients
    for each statement execute function notify_clients_changed();
