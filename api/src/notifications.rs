//! One PostgreSQL `LISTEN` task per channel, kept for the life of the server on the workspace's
//! one listener ([`orderflow_storage::listen`]): the owner is told when it is listening, when
//! the connection is lost (notifications sent meanwhile are gone, so whatever depends on them
//! must be re-checked) and of every payload. Stops on shutdown.

use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::listen::{Listener, Notice};
use sqlx::PgPool;

/// Spawns the listener task for `channels` among `tasks`; `on` runs on the task, so keep it
/// short.
pub fn spawn(
    tasks: &mut Tasks,
    db: PgPool,
    channels: &'static [&'static str],
    shutdown: CancellationToken,
    mut on: impl FnMut(Notice) + Send + 'static,
) {
    tasks.spawn(format!("LISTEN {}", channels.join(", ")), async move {
        let mut listener = Listener::new(db, channels);
        loop {
            tokio::select! {
                notice = listener.next() => on(notice),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}
