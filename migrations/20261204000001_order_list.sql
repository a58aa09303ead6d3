-- A client's order list (`GET /v1/orders`): newest first by id (UUIDv7, assigned at intake, so
-- in creation order), a page after or before a cursor found by one index range. It replaces
-- `orders_client (client_id, updated_at desc)`, which no query used: an update of an order writes
-- every index of its row (the `updated_at` index makes those updates non-HOT), so the apply pays
-- for each one.
drop index orders_client;
create index orders_client on orders (client_id, id);
