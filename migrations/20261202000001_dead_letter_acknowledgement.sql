-- An admin can acknowledge a dead letter: looked at, and not to be redriven (it cannot be, or need
-- not be). An open dead letter is one neither redriven nor acknowledged; only those raise the
-- dashboard's banner. Who acknowledged is also in admin_actions, with when.
alter table dead_letters
    add column acknowledged_at  timestamptz,
    add column acknowledged_by  uuid references clients (id),
    add constraint dead_letters_acknowledged_by_someone
        check ((acknowledged_at is null) = (acknowledged_by is null));

-- The banner's count, once a second per watched API process: only the open letters are indexed.
create index dead_letters_open on dead_letters (id)
    where redriven_at is null and acknowledged_at is null;
-- An order's timeline names the dead letter each redriven command came from.
create index dead_letters_redriven on dead_letters (order_id) where redriven_as is not null;
