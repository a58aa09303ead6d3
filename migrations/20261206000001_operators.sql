-- Operators: the people who sign in to the dashboard, apart from API clients. A password is
-- kept as an Argon2id PHC string; a session as the SHA-256 of its random token (the cookie holds
-- the token, the database never does).
create table operators (
    id uuid primary key,
    name text not null unique check (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    role text not null check (role in ('viewer', 'operator', 'admin')),
    password_hash text not null check (length(password_hash) between 1 and 512),
    created_at timestamptz not null default now(),
    disabled_at timestamptz
);

create table operator_sessions (
    token_hash bytea primary key check (length(token_hash) = 32),
    operator_id uuid not null references operators (id),
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    last_used_at timestamptz not null default now(),
    ended_at timestamptz,
    -- The address that signed in, as the API saw it (for the operators' list and audits).
    address text check (length(address) <= 100)
);
create index operator_sessions_live on operator_sessions (operator_id) where ended_at is null;

-- An operator disabled or changed, or a session ended, is announced on `orderflow_operators`:
-- every API process re-checks the live feeds its sessions hold, so they end within moments.
create function notify_operators_changed() returns trigger
language plpgsql as $$
begin
    perform pg_notify('orderflow_operators', '');
    return null;
end;
$$;

create trigger operators_changed
    after update or delete on operators
    for each statement execute function notify_operators_changed();

create trigger operator_sessions_ended
    after update of ended_at or delete on operator_sessions
    for each statement execute function notify_operators_changed();

-- What an admin does on the dashboard is recorded with who did it: an admin API key's client, or
-- now an operator.
alter table admin_actions
    alter column client_id drop not null,
    add column operator_id uuid references operators (id),
    add constraint admin_actions_by_someone check ((client_id is null) <> (operator_id is null));

alter table dead_letters
    add column redriven_by_operator uuid references operators (id),
    add column acknowledged_by_operator uuid references operators (id),
    drop constraint dead_letters_acknowledged_by_someone,
    add constraint dead_letters_acknowledged_by_someone
        check ((acknowledged_at is null)
               = (acknowledged_by is null and acknowledged_by_operator is null));
