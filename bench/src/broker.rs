//! The bench's own broker connections (the event listener, the direct producer, the
//! dead-letter count, the namespace's cleanup) go where the stack's processes go: `--amqp-url`
//! may name several nodes of a RabbitMQ cluster, comma-separated, tried in turn from the one
//! that answered last (`orderflow_messaging::Brokers`).

/// Connects to the first node of `urls` (one AMQP URL, or several comma-separated) that accepts.
pub async fn connect(urls: &str) -> anyhow::Result<lapin::Connection> {
    let brokers = orderflow_messaging::Brokers::parse(urls).map_err(anyhow::Error::msg)?;
    Ok(brokers.connect(Default::default()).await?)
}

/// `urls` with `key=value` added to each of its URLs that lacks `key`.
pub fn with_param_each(urls: &str, key: &str, value: &str) -> String {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| orderflow_messaging::brokers::with_default(u, key, value))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_of_a_list_gets_the_parameter() {
        assert_eq!(
            with_param_each(
                "amqp://a:5681/%2f, amqp://b:5682/%2f?heartbeat=9",
                "heartbeat",
                "3"
            ),
            "amqp://a:5681/%2f?heartbeat=3,amqp://b:5682/%2f?heartbeat=9"
        );
        assert_eq!(
            with_param_each("amqp://a/%2f", "heartbeat", "3"),
            "amqp://a/%2f?heartbeat=3"
        );
    }
}
