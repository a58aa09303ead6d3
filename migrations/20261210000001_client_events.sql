-- Each client's own event feed (issue 22: `GET /v1/events`): every status event the outbox relay
-- passed on, kept for the client whose order it concerns, in the order the relay passed it on.
--
-- Only the relay writes here, and it holds the relays' advisory lock until its transaction
-- commits, so `position` is gapless and follows commit order: once a reader sees a position,
-- every earlier one is visible too, and a reader that resumes after the last position it saw
-- misses nothing and sees nothing twice. Per order, positions follow the order's outbox rows,
-- which follow its commands' order (each is written under the order's row lock), and the relay
-- holds back an order's later row until its earlier one went out.
create table client_events (
    position    bigint primary key,
    client_id   uuid not null,
    order_id    uuid not null,
    command_id  uuid not null,
    -- the status event's routing key: command.<status>.<type>
    type        text not null,
    -- the status event, as published on the events exchange
    payload     jsonb not null,
    recorded_at timestamptz not null default now()
);
create index client_events_client on client_events (client_id, position);

-- How far the log has been pruned (the worker deletes what is older than its retention): a
-- reader asking for what came after an earlier position is told that history is gone, never
-- handed a silent gap. Written in the same transaction as the deletion it records.
create table client_events_horizon (
    only_row       boolean primary key default true check (only_row),
    pruned_through bigint not null default 0
);
insert into client_events_horizon default values;
