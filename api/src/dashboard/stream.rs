//! `GET /dashboard/api/stream`: the live feed as server-sent events (`command`, `order`,
//! `conflict`, `stats`, `partitions`). Capped per client; it ends when the server shuts down, so a
//! graceful shutdown never waits on an open dashboard. A dashboard that falls behind by more than
//! the feed's buffer skips ahead (it is told with a `lagged` event) rather than slowing the feed.
//!
//! It also ends as soon as its key stops being a live admin's (revoked, demoted, deleted): every
//! change to clients is announced ([`crate::keys`]) and the feed checks its client again then. While
//! those announcements cannot be heard it checks every [`RECHECK_UNHEARD`] instead.

use super::auth::DashboardAdmin;
use crate::error::ApiError;
use crate::metrics::OpenStream;
use crate::state::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use orderflow_storage::clients::{self, Client};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often the feed checks its client while changes to clients cannot be heard.
const RECHECK_UNHEARD: Duration = Duration::from_secs(1);

pub async fn feed(
    State(state): State<AppState>,
    DashboardAdmin(admin): DashboardAdmin,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state.limits.begin_stream(admin.id)?;
    let receiver = state.hub.subscribe();
    // From here on every change is seen; one that came between the authentication and now is
    // caught by the feed's first check.
    let changes = state.keys.changes();
    let mut recheck = tokio::time::interval(RECHECK_UNHEARD);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let open = (slot, OpenStream::new("sse"));
    let feed = Feed {
        receiver,
        changes,
        recheck,
        state,
        admin,
        checked: false,
        _open: open,
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One open feed; `S` holds what it keeps until it ends (its stream slot, the open-streams gauge).
struct Feed<S> {
    receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<super::hub::Frame>>,
    changes: tokio::sync::watch::Receiver<u64>,
    recheck: tokio::time::Interval,
    state: AppState,
    admin: Client,
    /// Has the client been checked since the feed subscribed to changes?
    checked: bool,
    _open: S,
}

impl<S> Feed<S> {
    /// The next event, or None when the feed must end.
    async fn next(&mut self) -> Option<Event> {
        if !self.checked {
            self.checked = true;
            if !self.still_admin().await {
                return None;
            }
        }
        loop {
            tokio::select! {
                received = self.receiver.recv() => return match received {
                    Ok(frame) => Some(Event::default().event(frame.event).data(frame.data.as_str())),
                    Err(RecvError::Lagged(skipped)) => {
                        Some(Event::default().event("lagged").data(skipped.to_string()))
                    }
                    Err(RecvError::Closed) => None,
                },
                changed = self.changes.changed() => {
                    // The sender lives as long as the server's state; gone means shutting down.
                    changed.ok()?;
                    if !self.still_admin().await {
                        return None;
                    }
                }
                _ = self.recheck.tick() => {
                    if !self.state.keys.listening() && !self.still_admin().await {
                        return None;
                    }
                }
                _ = self.state.shutdown.cancelled() => return None,
            }
        }
    }

    /// Is the feed's client still a live admin? A failed check ends the feed too (the page
    /// reconnects, and signs in again if it must).
    async fn still_admin(&self) -> bool {
        match clients::get(&self.state.db, self.admin.id).await {
            Ok(Some(client)) => client.is_admin,
            Ok(None) => {
                tracing::info!(client = %self.admin.name, "live feed ended: the key was revoked");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "live feed ended: its client could not be checked");
                false
            }
        }
    }
}
