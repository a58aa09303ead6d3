-- `set_shipping_address` (PUT /v1/orders/{id}/shipping-address): replaces the address whole.
-- The same address again is applied without a change: status `applied`, reason `unchanged`
-- (the reason check already admits any code), no event, the version where it was.
alter table commands
    drop constraint commands_kind_check,
    add constraint commands_kind_check check (kind in (
        'create', 'add_item', 'remove_item', 'reserve', 'pay', 'ship', 'deliver', 'cancel',
        'update_details', 'set_shipping_address'));
