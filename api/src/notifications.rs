//! One PostgreSQL `LISTEN` connection per channel, kept open for the life of the server: the
//! owner is told when it is listening, when the connection is lost (notifications sent meanwhile
//! are gone, so whatever depends on them must be re-checked) and of every payload. Reconnects
//! after a second; stops on shutdown.

use orderflow_runtime::shutdown::CancellationToken;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;

/// What a listener reports to its owner.
#[derive(Debug)]
pub enum Notice<'a> {
    /// `LISTEN` is in place: from now on no notification is missed (until `Lost`).
    Listening,
    /// The connection is gone; notifications may be missed until the next `Listening`.
    Lost,
    /// A notification's payload.
    Payload(&'a str),
}

/// Spawns the listener task for `channel`; `on` runs on the task, so keep it short.
pub fn spawn(
    db: PgPool,
    channel: &'static str,
    shutdown: CancellationToken,
    mut on: impl FnMut(Notice<'_>) + Send + 'static,
) {
    tokio::spawn(async move {
        let retry = || tokio::time::sleep(Duration::from_secs(1));
        while !shutdown.is_cancelled() {
            let mut listener = match PgListener::connect_with(&db).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, channel, "notification listener cannot connect; retrying");
                    tokio::select! {
                        _ = retry() => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            if let Err(e) = listener.listen(channel).await {
                tracing::warn!(error = %e, channel, "notification listener cannot LISTEN; retrying");
                tokio::select! {
                    _ = retry() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            on(Notice::Listening);
            loop {
                tokio::select! {
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => on(Notice::Payload(notification.payload())),
                        // sqlx would reconnect inside the next `try_recv` without saying when it
                        // is listening again; a fresh listener does say.
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, channel, "notification listener lost; reconnecting");
                            break;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
            on(Notice::Lost);
        }
    });
}
