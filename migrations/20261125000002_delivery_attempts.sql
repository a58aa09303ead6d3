-- How often a worker started applying a redelivered message, per command id. Counted only for
-- redelivered messages and only when a worker actually starts on one (prefetched messages that
-- were handed back unopened do not count), so a message that keeps killing its worker is told
-- apart from one that merely sat in a prefetch window during a broker hiccup.
create table delivery_attempts (
    command_id  uuid primary key,
    attempts    integer not null,
    last_at     timestamptz not null default now()
);
