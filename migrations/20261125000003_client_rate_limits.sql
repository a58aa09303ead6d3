-- Per-client rate-limit overrides; null means the API's default quota.
alter table clients
    add column rate_per_second integer check (rate_per_second > 0),
    add column rate_burst integer check (rate_burst > 0);
