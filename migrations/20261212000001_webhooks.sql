-- Webhooks (issue 22): a client's endpoints, and each endpoint's own backlog of deliveries, taken
-- from the client's event feed (`client_events`).
--
-- Delivery works in two steps, both in the worker:
-- 1. Fan-out: the events after an endpoint's `cursor` are copied, whole, into its deliveries
--    (those of the types it wants) and the cursor moves past them, in one transaction holding the
--    endpoint's row lock. The feed only holds committed, relayed events in commit order, so
--    nothing uncommitted is sent and nothing committed is skipped; a copied event no longer
--    depends on the feed's retention. An endpoint whose backlog is full is not fanned out to
--    until it drains: its cursor waits in the feed (and if the feed prunes past it, the endpoint
--    says so in `feed_gap`).
-- 2. Sending: a delivery is `ready` when every earlier delivery of its order to its endpoint was
--    delivered (set at fan-out, and on the delivery of the one before); it is claimed (a token
--    and a deadline) when it is ready and due, its endpoint is active and has a free slot, and
--    its client has one: per order, one at a time, in order. The HTTP request runs outside any
--    transaction; its outcome is written under the claim's token.
create table webhook_endpoints (
    id              uuid primary key,
    client_id       uuid not null,
    url             text not null,
    -- the event types sent: exact types or `command.<status>.*`; empty sends every event
    event_types     text[] not null default '{}',
    description     text not null default '',
    -- `whsec_` + base64 of 32 random bytes (the Standard Webhooks form); shown once, when the
    -- endpoint is created. The worker signs with it, so it is kept as given.
    secret          text not null,
    -- the last feed position fanned out into this endpoint's deliveries
    cursor          bigint not null,
    status          text not null default 'active' check (status in ('active', 'failing')),
    -- why and since when the endpoint is failing (a delivery retried for too long)
    failing_since   timestamptz,
    failing_reason  text,
    -- the first stretch of the feed pruned before it reached this endpoint's backlog (which
    -- stayed full, or no worker ran, for the feed's whole retention): events may be lost there
    feed_gap        text,
    -- the `Idempotency-Key` it was created with: a retry of the creation answers it again
    idempotency_key text not null,
    created_at      timestamptz not null default now(),
    unique (client_id, idempotency_key)
);
create index webhook_endpoints_client on webhook_endpoints (client_id, created_at);

create table webhook_deliveries (
    id                   bigint generated always as identity primary key,
    endpoint_id          uuid not null references webhook_endpoints on delete cascade,
    -- the event: its feed position (its id) and what it concerns
    position             bigint not null,
    order_id             uuid not null,
    event_type           text not null,
    -- the event as the feed held it (the body of every attempt)
    payload              jsonb not null,
    recorded_at          timestamptz not null,
    -- every earlier delivery of its order to its endpoint was delivered: it may be sent
    ready                boolean not null,
    -- pending: to be sent (or being sent); delivered: a 2xx came back; given_up: retried for
    -- longer than the worker allows (the endpoint is then failing until a retry)
    status               text not null default 'pending'
                             check (status in ('pending', 'delivered', 'given_up')),
    attempts             integer not null default 0,
    next_attempt_at      timestamptz not null default now(),
    -- the sender holding it, and until when (a sender that dies lets it go at that time)
    claim                uuid,
    claimed_until        timestamptz,
    first_attempt_at     timestamptz,
    last_attempt_at      timestamptz,
    -- the last attempt's HTTP status (none: no answer) and what went wrong
    last_response_status integer,
    last_error           text,
    delivered_at         timestamptz,
    created_at           timestamptz not null default now(),
    unique (endpoint_id, position)
);
-- The sender's pick: ready pending deliveries by due time; an order's undelivered ones (the next
-- to make ready, and what a new one waits for).
create index webhook_deliveries_due on webhook_deliveries (endpoint_id, next_attempt_at)
    where status = 'pending' and ready;
create index webhook_deliveries_order on webhook_deliveries (endpoint_id, order_id, position)
    where status <> 'delivered';
-- The delivery log, newest first.
create index webhook_deliveries_log on webhook_deliveries (endpoint_id, id);
