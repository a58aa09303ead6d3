-- When an endpoint last got a delivery through. Recording a delivered attempt updates it, so
-- that the fan-out, which reads in one repeatable-read snapshot, cannot miss that delivery:
-- a fan-out that locks the endpoint after it committed fails to serialize and tries again, one
-- that holds the lock first makes the recording wait and then see its rows. Before, the
-- recording only took a key share beside the fan-out, and an order's next delivery inserted by
-- a fan-out that could not see its predecessor delivered stayed not ready until the half-minute
-- heal (e2e/tests/webhooks.rs failed that way about every other run).
alter table webhook_endpoints add column last_delivered_at timestamptz;
