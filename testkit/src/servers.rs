//! The servers every test runs against (`deploy/run-tests.sh` sets both variables).

/// The PostgreSQL server tests create their databases on (its database part is only used to
/// connect): `DATABASE_URL`.
pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The RabbitMQ broker: `AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker user of [`amqp_url`] (its first address): the `user_id` a test's direct producer
/// publishes with, which each stack grants its client.
pub fn amqp_user() -> String {
    orderflow_messaging::brokers::user_of(&amqp_url()).expect("AMQP_URL is a valid AMQP URL")
}
