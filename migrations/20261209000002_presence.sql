-- The desk's presence and edit leases (issue 20). Both belong to an operator's session and live
-- only while its page renews them: a row whose `expires_at` passed means nothing and is swept.
--
-- Presence: who has an order open. The page renews its row every few seconds and deletes it when
-- it leaves the order.
create table order_presence (
    order_id uuid not null,
    session_hash bytea not null references operator_sessions (token_hash) on delete cascade,
    operator_id uuid not null references operators (id),
    opened_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (order_id, session_hash)
);
create index order_presence_expiry on order_presence (expires_at);
create index order_presence_session on order_presence (session_hash);

-- The edit lease: at most one person editing an order's details at a time, so that others are
-- warned before they start ("<name> is editing since 14:02"). It warns; it decides nothing: the
-- order's version decides, as for every change. Renewed only by its holder's session; an admin
-- may break it (recorded in admin_actions). No foreign key to orders: a key check would lock the
-- order row the worker updates.
create table order_edit_leases (
    order_id uuid primary key,
    session_hash bytea not null references operator_sessions (token_hash) on delete cascade,
    operator_id uuid not null references operators (id),
    since timestamptz not null default now(),
    expires_at timestamptz not null
);
create index order_edit_leases_expiry on order_edit_leases (expires_at);
create index order_edit_leases_session on order_edit_leases (session_hash);

-- Every arrival, departure, and change of editor is announced on `orderflow_presence` with the
-- order's id, so every API process's live feed sends the order's new presence at once. A renewal
-- (only `expires_at` moves) announces nothing.
create function notify_presence_changed() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        perform pg_notify('orderflow_presence', old.order_id::text);
    else
        perform pg_notify('orderflow_presence', new.order_id::text);
    end if;
    return null;
end;
$$;

create trigger order_presence_changed
    after insert or delete on order_presence
    for each row execute function notify_presence_changed();
create trigger order_edit_leases_changed
    after insert or delete on order_edit_leases
    for each row execute function notify_presence_changed();
create trigger order_edit_leases_taken_over
    after update on order_edit_leases
    for each row when (old.session_hash is distinct from new.session_hash
                       or old.since is distinct from new.since)
    execute function notify_presence_changed();

-- A session that ends (sign-out, a new password, `operator disable`) leaves every order at once.
create function session_leaves_orders() returns trigger
language plpgsql as $$
begin
    delete from order_presence where session_hash = new.token_hash;
    delete from order_edit_leases where session_hash = new.token_hash;
    return null;
end;
$$;

create trigger operator_sessions_leave_orders
    after update of ended_at on operator_sessions
    for each row when (new.ended_at is not null)
    execute function session_leaves_orders();
