//! When orderflow's commands were really applied. The worker's `finished_at` is `now()`, the
//! start of its apply transaction, so `finished_at - accepted_at` leaves out the transaction
//! itself. The worker also sends `pg_notify(orderflow_command_done, id)`, which PostgreSQL
//! delivers at commit: the bench listens on that channel (as the API's long-polls do) and notes
//! the time each id arrives. Same machine, same clock as `accepted_at`.

use chrono::{DateTime, Utc};
use orderflow_storage::listen::{Listener, Notice};
use sqlx::postgres::PgPoolOptions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

type Seen = Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>;

pub struct Commits {
    seen: Seen,
    task: JoinHandle<()>,
}

impl Commits {
    /// Listens from now on (returns once LISTEN is in place).
    pub async fn listen(database_url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy(database_url)?;
        let mut listener = Listener::new(pool, &[orderflow_storage::COMMAND_DONE_CHANNEL]);
        match tokio::time::timeout(Duration::from_secs(10), listener.next()).await {
            Ok(Notice::Listening) => {}
            other => anyhow::bail!("could not LISTEN for applied commands: {other:?}"),
        }
        let seen: Seen = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                // While the connection is down the ids are not seen; the report then falls
                // back to `finished_at` for those commands.
                loop {
                    if let Notice::Notification { payload, .. } = listener.next().await {
                        let at = Utc::now();
                        if let Ok(id) = payload.parse::<Uuid>() {
                            seen.lock().expect("not poisoned").insert(id, at);
                        }
                    }
                }
            })
        };
        Ok(Self { seen, task })
    }

    /// Everything seen so far (and forgets it).
    pub fn take(&self) -> HashMap<Uuid, DateTime<Utc>> {
        std::mem::take(&mut *self.seen.lock().expect("not poisoned"))
    }
}

impl Drop for Commits {
    fn drop(&mut self) {
        self.task.abort();
    }
}
