-- Two repairs for messages the broker reorders or loses. The race audit's faults found both.

-- 1. Parking. A direct producer's follow-up can reach a worker before its order's create: a
-- worker died holding the create, and a quorum queue hands the survivor the later messages
-- first. The follow-up is recorded anyway, with seq 2. Seq 1 stays reserved for the create
-- (`awaiting_create`), and the follow-up waits (`parked_at`, with the stream marked
-- `has_parked`). When the create arrives it is applied, then the parked commands after it. A
-- follow-up parked longer than the worker's park timeout fails and is dead-lettered.
alter table order_streams
    add column awaiting_create boolean not null default false,
    add column has_parked boolean not null default false;
alter table commands add column parked_at timestamptz;
create index commands_parked on commands (parked_at)
    where status = 'accepted' and parked_at is not null;

-- 2. Overtaken commands. RabbitMQ can confirm a publish to a partition queue at its
-- reject-publish max-length and then drop it. The command stays accepted with `published_at`
-- set, so the relay's "never confirmed" pass does not see it. The worker's relay republishes
-- such a command once a message published on the same partition after it has been delivered.
-- A partition queue is FIFO, so the earlier message is gone or requeued, and the inbox makes
-- a duplicate harmless. These indexes find the candidates and the later deliveries.
create index commands_in_flight on commands (published_at)
    where status = 'accepted' and published_at is not null;
create index commands_delivered on commands (partition, published_at)
    where delivered_at is not null;
