-- Who made each change: `client:<name>` (an API client's own request), `operator:<name>` (a
-- person on the dashboard's desk, acting on a client's order), `producer:<broker user>` (a
-- direct producer's message). Null on commands recorded before actors were kept. Shown in the
-- order's commands and timeline.
alter table commands
    add column actor text,
    add constraint commands_actor_named
        check (actor ~ '^(client|operator|producer):' and length(actor) <= 300);
