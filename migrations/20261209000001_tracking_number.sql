-- Ship with a tracking number (issue 20): the `ship` command may carry the carrier's number, its
-- `order_shipped` event records it, and the projection keeps it (null until the order ships with
-- one). A nullable column without a default: adding it rewrites nothing.
alter table orders
    add column tracking_number text check (tracking_number ~ '^[A-Za-z0-9._:-]{1,64}$');
