//! The one way orderflow LISTENs: a [`Listener`] keeps a PostgreSQL `LISTEN` connection on its
//! channels for as long as its owner wants, reconnecting by itself, and says when it is
//! listening and when it lost the connection (notifications sent meanwhile are gone, so whatever
//! depends on them must be re-checked). Every listener in the workspace (the API's key cache and
//! long-polls, the dashboard's feed, the worker's outbox relay, the bench's commit clock) uses it,
//! so all of them treat a reconnect the same way.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::time::Instant;

/// How long a listener waits before trying again after a failure to connect or to LISTEN.
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What a listener reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// `LISTEN` is in place on every channel: from now on nothing is missed (until `Lost`).
    Listening,
    /// The connection is gone; notifications may be missed until the next `Listening`.
    Lost,
    /// A notification.
    Notification { channel: String, payload: String },
}

pub struct Listener {
    db: PgPool,
    channels: Vec<&'static str>,
    connection: Option<PgListener>,
    retry_at: Option<Instant>,
}

impl Listener {
    /// A listener on `channels`; it connects on the first [`Listener::next`].
    pub fn new(db: PgPool, channels: &[&'static str]) -> Self {
        Self {
            db,
            channels: channels.to_vec(),
            connection: None,
            retry_at: None,
        }
    }

    /// The next notice. Without a connection it connects (after [`RECONNECT_AFTER`] if the last
    /// attempt failed) and answers `Listening`; a connection that fails answers `Lost` once.
    ///
    /// Cancel-safe: used in a `select!`, a losing branch loses no notification, and the wait
    /// before a reconnect keeps its deadline across calls.
    pub async fn next(&mut self) -> Notice {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                }
                match self.connect().await {
                    Ok(connection) => {
                        self.connection = Some(connection);
                        self.retry_at = None;
                        return Notice::Listening;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channels = ?self.channels, "cannot LISTEN; retrying");
                        self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
                        continue;
                    }
                }
            };
            // sqlx would reconnect inside the next `try_recv` without saying when it is
            // listening again (`Ok(None)`); a fresh connection does say, so drop this one.
            match connection.try_recv().await {
                Ok(Some(n)) => {
                    return Notice::Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    };
                }
                Ok(None) => {
                    tracing::warn!(channels = ?self.channels, "LISTEN connection lost; reconnecting")
                }
                Err(e) => {
                    tracing::warn!(error = %e, channels = ?self.channels, "LISTEN connection failed; reconnecting")
                }
            }
            self.connection = None;
            return Notice::Lost;
        }
    }

    async fn connect(&self) -> sqlx::Result<PgListener> {
        let mut connection = PgListener::connect_with(&self.db).await?;
        connection.listen_all(self.channels.iter().copied()).await?;
        Ok(connection)
    }
}
