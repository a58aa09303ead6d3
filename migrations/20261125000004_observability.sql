-- What the dashboard's order timeline, partition panel and dead-letter list read.

alter table commands
    -- when the API received the request; null for commands straight from the queue
    add column received_at timestamptz,
    -- when the worker that finished the command received its message, and which delivery attempt
    -- that was (1 = first); null for commands finished without a delivery (refused, or applied
    -- ahead of their own late message)
    add column delivered_at timestamptz,
    add column attempt integer check (attempt >= 1),
    -- the W3C traceparent the command arrived with (HTTP header or AMQP header), for the timeline
    add column traceparent text;

-- The oldest unfinished command per partition (partition lag); only accepted rows are indexed.
create index commands_pending on commands (partition, accepted_at) where status = 'accepted';
-- Who took the stock a rejected reserve wanted: applied reserves, newest first (small: reserves only).
create index commands_reserves on commands (finished_at desc) where kind = 'reserve' and status = 'applied';
-- The dashboard's order list across clients, most recently changed first.
create index orders_updated on orders (updated_at desc);

-- Every message a worker sent to the dead-letter queue, as it was received, with the reason. The
-- broker's dead-letter queue keeps the messages; this is their index for people, and the record of
-- each redrive (re-submitting the command, as a new command at the end of its order's stream).
create table dead_letters (
    id                bigserial primary key,
    -- null when the message was not a readable command
    command_id        uuid,
    order_id          uuid,
    client_id         uuid,
    partition         integer not null,
    reason            text not null,
    -- the message body as received, truncated to 64 KiB
    body              text not null,
    dead_lettered_at  timestamptz not null default now(),
    redriven_at       timestamptz,
    redriven_as       uuid references commands (id),
    redriven_by       uuid references clients (id),
    check ((redriven_at is null) = (redriven_as is null))
);
create index dead_letters_recent on dead_letters (dead_lettered_at desc);

-- Every admin action taken through the dashboard: who, what, on what, when.
create table admin_actions (
    id         bigserial primary key,
    client_id  uuid not null references clients (id),
    action     text not null,
    target     text not null,
    detail     jsonb not null default '{}',
    at         timestamptz not null default now()
);

-- Each worker process's view of its partitions, upserted about once a second: whether it has a
-- consumer on the queue, when it last got a delivery (the single active consumer is the one that
-- does), and running counts. Rows of workers that stopped heartbeating are stale, not deleted.
create table worker_partitions (
    worker            text not null,
    partition         integer not null,
    consuming         boolean not null,
    last_delivery_at  timestamptz,
    delivered         bigint not null default 0,
    redelivered       bigint not null default 0,
    finished          bigint not null default 0,
    heartbeat_at      timestamptz not null default now(),
    primary key (worker, partition)
);
