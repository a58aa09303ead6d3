-- Fewer index entries per command, and a confirm mark that writes none.
--
-- A command row is written three times: recorded, marked published (the broker's confirm),
-- finished. Every version of a row that a non-HOT update writes goes into each index whose
-- predicate it meets, and an update is HOT (no index entry at all, when its page has room) only
-- if it changes no column an index reads, predicates included. `published_at` was read by three
-- indexes, so the confirm mark wrote five index entries per command, and `commands_client`
-- (client_id, accepted_at), which no query reads, took one for every version.
--
-- Now no index reads `published_at`: the relay's sweeps for unconfirmed and overtaken commands
-- read the accepted commands through `commands_pending`, which holds only those, and the
-- overtaken test asks for a later command *accepted* more than a second after this one was
-- published (a command is published after it is accepted, so that one was published later
-- still). Fill factor 80 leaves each page room for its rows' marks.
--
-- On a large deployment build the new index first, without blocking writes, and this migration
-- then finds it:
--   create index concurrently if not exists commands_delivered_by_acceptance
--       on commands (partition, accepted_at) where delivered_at is not null;
drop index if exists commands_client;
drop index if exists commands_unpublished;
drop index if exists commands_in_flight;
drop index if exists commands_delivered;
create index if not exists commands_delivered_by_acceptance
    on commands (partition, accepted_at) where delivered_at is not null;
alter table commands set (fillfactor = 80);
