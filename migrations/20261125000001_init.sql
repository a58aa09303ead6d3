-- orderflow's one schema. States and kinds are text with check constraints; the Rust enums in
-- shared::domain are the only place their spellings live outside this file.

-- Every API key belongs to one client; direct queue producers name their client in each message.
create table clients (
    id          uuid primary key,
    name        text not null,
    -- sha256 of the key: keys are 256 random bits, so a fast hash is enough and lookups can be indexed
    key_hash    bytea not null unique,
    is_admin    boolean not null default false,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);

-- One row per order id from the moment its create command is accepted (before the worker creates
-- the order). It owns the per-order command sequence: the API (or the worker, for direct producers)
-- takes `last_seq + 1` under this row's lock, and the worker never applies seq n+1 before n.
create table order_streams (
    order_id       uuid primary key,
    client_id      uuid not null references clients (id),
    -- highest sequence handed out to an accepted command of this order
    last_seq       bigint not null check (last_seq >= 1),
    -- highest sequence the worker has finished (applied, rejected or failed)
    processed_seq  bigint not null default 0 check (processed_seq <= last_seq)
);

-- Every accepted command, from the API or straight from the queue. It is also the worker's inbox:
-- a command whose status is no longer 'accepted' has been dealt with, and a redelivery is a no-op.
create table commands (
    id                uuid primary key,
    client_id         uuid not null references clients (id),
    order_id          uuid not null references order_streams (order_id),
    seq               bigint not null,
    kind              text not null check (kind in ('create', 'add_item', 'remove_item', 'reserve', 'pay', 'ship', 'deliver', 'cancel')),
    -- the command exactly as in the message contract (`type` plus its fields)
    body              jsonb not null,
    -- from If-Match; null means "any version"
    expected_version  bigint,
    source            text not null check (source in ('http', 'amqp')),
    status            text not null default 'accepted' check (status in ('accepted', 'applied', 'rejected', 'failed')),
    reason            text,
    -- the order version this command produced (applied) or found (rejected)
    result_version    bigint,
    partition         integer not null,
    accepted_at       timestamptz not null default now(),
    -- set once the broker confirmed the publish; null rows older than a few seconds are republished
    published_at      timestamptz,
    finished_at       timestamptz,
    unique (order_id, seq),
    check ((status = 'accepted') = (finished_at is null))
);
create index commands_unpublished on commands (accepted_at) where published_at is null and status = 'accepted';
create index commands_client on commands (client_id, accepted_at);

-- Idempotency-Key records, Stripe semantics, scoped per client. The stored response is derived from
-- the command it names; "in flight" is derived from the command not yet confirmed by the broker.
create table idempotency_keys (
    client_id    uuid not null references clients (id),
    key          text not null,
    -- sha256 of the canonical request (method, path, If-Match, body)
    fingerprint  bytea not null,
    command_id   uuid not null references commands (id) deferrable initially deferred,
    created_at   timestamptz not null default now(),
    primary key (client_id, key)
);
create index idempotency_keys_created_at on idempotency_keys (created_at);

-- The projection: rebuilt exactly by folding order_events; `version` equals the last event's seq.
create table orders (
    id           uuid primary key references order_streams (order_id),
    client_id    uuid not null references clients (id),
    customer_id  text not null,
    currency     text not null,
    status       text not null check (status in ('pending', 'reserved', 'paid', 'shipped', 'delivered', 'cancelled')),
    version      bigint not null check (version >= 1),
    items        jsonb not null,
    total_cents  bigint not null check (total_cents >= 0),
    created_at   timestamptz not null,
    updated_at   timestamptz not null
);
create index orders_client on orders (client_id, updated_at desc);

-- The truth: append-only, gapless seq per order starting at 1.
create table order_events (
    order_id     uuid not null references order_streams (order_id),
    seq          bigint not null check (seq >= 1),
    command_id   uuid not null references commands (id),
    type         text not null,
    data         jsonb not null,
    recorded_at  timestamptz not null default now(),
    primary key (order_id, seq)
);

-- Stock per SKU. available + reserved + shipped changes only through PUT /v1/inventory.
create table inventory (
    sku         text primary key,
    available   bigint not null check (available >= 0),
    reserved    bigint not null default 0 check (reserved >= 0),
    shipped     bigint not null default 0 check (shipped >= 0),
    updated_at  timestamptz not null default now()
);

-- The simulated payment gateway's ledger. The command id is the gateway's idempotency key.
create table payments (
    id            bigserial primary key,
    order_id      uuid not null references order_streams (order_id),
    command_id    uuid not null unique references commands (id),
    kind          text not null check (kind in ('capture', 'refund')),
    amount_cents  bigint not null check (amount_cents >= 0),
    currency      text not null,
    created_at    timestamptz not null default now()
);
-- at most one capture per order, ever; a refund only ever undoes that capture
create unique index payments_one_capture on payments (order_id) where kind = 'capture';
create unique index payments_one_refund on payments (order_id) where kind = 'refund';

-- Transactional outbox: status events written in the apply transaction, relayed to the events
-- exchange in id order (hence per-order order) and deleted once the broker confirmed them.
create table outbox (
    id           bigserial primary key,
    order_id     uuid not null,
    routing_key  text not null,
    payload      jsonb not null,
    created_at   timestamptz not null default now()
);
