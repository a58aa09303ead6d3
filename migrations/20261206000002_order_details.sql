-- Orders gain details that people edit (shipping address, contact email and phone, a note): one
-- jsonb value in the projection, written with the projection by `commands::finish`, changed by
-- the `update_details` command through its `details_changed` event (which carries all of them).
alter table orders add column details jsonb not null default '{}';

alter table commands
    drop constraint commands_kind_check,
    add constraint commands_kind_check check (kind in (
        'create', 'add_item', 'remove_item', 'reserve', 'pay', 'ship', 'deliver', 'cancel',
        'update_details'));
