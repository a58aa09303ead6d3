-- Direct producers (other services publishing straight to the command exchange): which broker
-- user may publish commands for which client. RabbitMQ validates a message's `user_id` property
-- against the user of the connection that published it, so that property names the publisher;
-- the worker records a direct producer's command only if its `user_id` is granted its
-- `client_id` here (`orderflow-api producer grant`). The API's own commands are recorded before
-- they are published and are not checked.
create table producer_grants (
    broker_user text not null check (length(broker_user) between 1 and 255),
    client_id   uuid not null references clients (id),
    granted_at  timestamptz not null default now(),
    primary key (broker_user, client_id)
);
