//! orderflow's one test kit, for the integration tests of every crate (a dev-dependency only; the
//! binaries never link it). Everything runs against the real servers: PostgreSQL at
//! `DATABASE_URL` and RabbitMQ at `AMQP_URL` ([`servers`]); nothing is mocked.
//!
//! - [`Stack`]: a test's own world — a fresh database cloned from a migrated template
//!   ([`database`]), a fresh queue namespace, an admin and an ordinary client, and the real API
//!   and workers in-process, each with the settings the test changes:
//!
//!   ```ignore
//!   let app = Stack::builder()
//!       .api_config(|c| c.max_in_flight = 2)
//!       .api()
//!       .worker_config(|c| c.park_timeout_ms = 500)
//!       .worker()
//!       .start()
//!       .await;
//!   ```
//!
//!   The API needs the `api` feature, workers the `worker` feature: a crate's tests can start
//!   only what its dev-dependency turns on. The stack is also the test's client: HTTP calls with
//!   the test client's key and the API's refusal contract (`problem`, `Stack::refused`), the
//!   dashboard's feed (`read_frames`), a direct producer, commands recorded as the API records
//!   them, the dead-letter queue ([`broker`]), `/metrics` ([`Scrape`]). Dropping it stops
//!   everything and removes the database and the namespace.
//! - [`wait_for`]: the one way to wait for something asynchronous — poll with a deadline, panic
//!   naming what was awaited (and what was last seen). Tests never sleep a fixed time.

pub mod broker;
pub mod database;
pub mod metrics;
pub mod servers;
mod stack;
pub mod wait;

pub use broker::DeadLetter;
pub use database::{create_database, create_migrated_database};
pub use metrics::Scrape;
pub use servers::{amqp_url, base_database_url};
pub use stack::{DEFAULT_PARTITIONS, Stack, StackBuilder};
#[cfg(feature = "api")]
pub use stack::{SignedIn, SseFrame, Writes, problem, read_frames, read_sse};
pub use wait::{Probe, Wait, wait_for};

use orderflow_messaging::Topology;

/// Deletes a test's queues and exchanges (if `topology` is given) and drops its database.
/// Blocking, on a thread of its own, so that it can run from `Drop` inside a test's runtime.
pub fn remove(topology: Option<Topology>, database_name: String) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(async move {
            if let Some(topology) = topology {
                broker::delete_namespace(&topology).await;
            }
            database::drop_database(&database_name).await;
        });
    });
    let _ = cleanup.join();
}
