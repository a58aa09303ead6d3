//! Settings both binaries share. Every option is a flag and an environment variable of the same
//! meaning; `--help` describes each. The values are passed down, never read from globals.

use clap::Args;
pub use secrecy::{ExposeSecret, SecretString};

/// Where the data lives and how the queues are named.
#[derive(Args, Clone, Debug)]
pub struct CommonConfig {
    /// PostgreSQL connection string.
    /// (Its password is a secret: `Debug` and logs never print it.)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    pub database_url: SecretString,

    /// RabbitMQ connection string; or the nodes of a cluster, comma-separated: every new
    /// connection tries them in turn, starting with the one that answered last.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        value_parser = secret
    )]
    pub amqp_url: SecretString,

    /// Prefix of every exchange and queue orderflow declares (letters, digits, '-', '_', '.').
    #[arg(long, env = "ORDERFLOW_NAMESPACE", default_value = "orderflow", value_parser = parse_namespace)]
    pub namespace: String,

    /// Number of partition queues. Every API and worker process of a deployment must agree on it.
    #[arg(long, env = "ORDERFLOW_PARTITIONS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub partitions: u16,

    /// Most messages a partition queue holds; publishes beyond it are refused (the API answers 503).
    /// Must be the same in every process of a deployment (RabbitMQ refuses a re-declaration
    /// with other arguments).
    #[arg(long, env = "ORDERFLOW_QUEUE_MAX_LENGTH", default_value_t = 100_000)]
    pub queue_max_length: i64,

    /// Largest PostgreSQL pool this process opens.
    #[arg(long, env = "ORDERFLOW_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// Log format: `text` for people, `json` for collectors.
    #[arg(long, env = "ORDERFLOW_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Allow webhook endpoints on loopback and private addresses, and over plain `http` (for
    /// endpoints inside the operator's own network, and for tests). Off: endpoints are `https`
    /// to public addresses only, checked when registered (the API) and at every connection
    /// (the worker, after resolving the name).
    #[arg(long, env = "ORDERFLOW_WEBHOOK_ALLOW_PRIVATE", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
}

/// A connection string, kept out of `Debug` output (it may carry a password).
fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

fn parse_namespace(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err("1 to 100 of letters, digits, '-', '_' and '.'".into())
    }
}

impl CommonConfig {
    /// Settings for a test: a given database and namespace, local broker, few partitions.
    pub fn for_tests(database_url: String, namespace: String, partitions: u16) -> Self {
        Self {
            database_url: database_url.into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            namespace,
            partitions,
            queue_max_length: 100_000,
            db_pool_size: 8,
            log_format: "text".into(),
            webhook_allow_private: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_connection_strings() {
        let config = CommonConfig::for_tests(
            "postgres://orderflow:hunter2@db:5432/orderflow".into(),
            "ns".into(),
            4,
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("guest:guest"), "{printed}");
        assert_eq!(
            config.database_url.expose_secret(),
            "postgres://orderflow:hunter2@db:5432/orderflow"
        );
    }
}
