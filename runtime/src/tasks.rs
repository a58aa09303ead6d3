//! A process's long-running tasks, tracked by name: spawned together, stopped together. Both
//! binaries run their background work through [`Tasks`], so each stops the same way: on
//! shutdown every task is given a grace period to finish what it holds, then whatever is still
//! running is named in the log and aborted.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, String>,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `task`, known by `name` in the log. It should end soon after shutdown fires.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name.into());
    }

    /// Runs until `shutdown` fires and then, for at most `grace`, until every task has ended.
    /// A task still busy after the grace period (a call that never returns while a service
    /// restarts) is aborted. A task that panics is an error; the others are then aborted.
    pub async fn join(
        mut self,
        shutdown: &CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let mut deadline = None;
        loop {
            let joined = match deadline {
                None => tokio::select! {
                    joined = self.set.join_next_with_id() => joined,
                    _ = shutdown.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + grace);
                        continue;
                    }
                },
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            let mut running: Vec<&str> =
                                self.names.values().map(String::as_str).collect();
                            running.sort_unstable();
                            tracing::error!(
                                ?running,
                                ?grace,
                                "tasks did not stop within the grace period; aborting them"
                            );
                            self.set.abort_all();
                            while self.set.join_next().await.is_some() {}
                            return Ok(());
                        }
                    }
                }
            };
            match joined {
                Some(Ok((id, ()))) => {
                    let name = self.names.remove(&id).unwrap_or_default();
                    if deadline.is_none() {
                        tracing::warn!(task = name, "a background task ended before shutdown");
                    }
                }
                Some(Err(e)) => {
                    let name = self.names.remove(&e.id()).unwrap_or_default();
                    self.set.abort_all();
                    return Err(anyhow::Error::from(e).context(format!("task {name:?} panicked")));
                }
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_that_ignore_shutdown_are_aborted_after_the_grace_period() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new();
        let stop = shutdown.clone();
        tasks.spawn("polite", async move { stop.cancelled().await });
        tasks.spawn("stuck", std::future::pending());
        shutdown.cancel();
        let joined = tasks.join(&shutdown, Duration::from_millis(50)).await;
        assert!(joined.is_ok());
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_error_that_names_it() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new();
        tasks.spawn("doomed", async { panic!("boom") });
        tasks.spawn("stuck", std::future::pending());
        let error = tasks
            .join(&shutdown, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("doomed"), "{error:#}");
    }
}
