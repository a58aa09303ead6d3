//! What the audit tests share beyond the test kit (`orderflow-testkit`, which runs the stack):
//! the stack the audit runs against, and the audit's settings for it.

use orderflow_bench::AuditConfig;
use orderflow_testkit::{Stack, amqp_url};

/// The real API (its default limits, rate and in-flight: the audit must hold under them too)
/// and a worker whose command relay republishes after 1 s (5 s by default), so that the
/// audit's drain does not wait on it.
pub async fn stack() -> Stack {
    Stack::builder()
        .api()
        .worker_config(|c| c.republish_after_ms = 1000)
        .worker()
        .start()
        .await
}

/// A short audit of `stack`, with its admin key.
pub fn audit_config(stack: &Stack) -> AuditConfig {
    let mut config = AuditConfig::short(
        stack.url(""),
        stack.admin_key.clone(),
        stack.database_url.clone(),
        stack.namespace.clone(),
    );
    config.amqp_url = amqp_url();
    config.partitions = stack.topology.partitions;
    config
}
