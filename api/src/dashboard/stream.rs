//! `GET /dashboard/api/stream`: the live feed as server-sent events (`command`, `order`,
//! `conflict`, `stats`, `partitions`). Capped per client; it ends when the server shuts down, so a
//! graceful shutdown never waits on an open dashboard. A dashboard that falls behind by more than
//! the feed's buffer skips ahead (it is told with a `lagged` event) rather than slowing the feed.
//!
//! It also ends as soon as whoever opened it may no longer read: an operator's session signed
//! out, expired, or its operator disabled ([`crate::operators`]); an admin key revoked or demoted
//! ([`crate::keys`]). Every such change is announced and the feed checks again then; while the
//! announcements cannot be heard it checks every [`RECHECK_UNHEARD`] instead. A session's expiry
//! needs no announcement: the feed ends at it.

use super::auth::{Principal, Viewer};
use crate::error::ApiError;
use crate::metrics::OpenStream;
use crate::state::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use orderflow_storage::{clients, operators};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often the feed checks its client while changes to clients cannot be heard.
const RECHECK_UNHEARD: Duration = Duration::from_secs(1);

pub async fn feed(
    State(state): State<AppState>,
    Viewer(viewer): Viewer,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state.limits.begin_stream(viewer.bucket_id())?;
    let receiver = state.hub.subscribe();
    // From here on every change is seen; one that came between the authentication and now is
    // caught by the feed's first check.
    let changes = match &viewer {
        Principal::Operator(_) => state.sessions.changes(),
        Principal::AdminKey(_) => state.keys.changes(),
    };
    // A session ends at its expiry; a key does not expire.
    let expires = match &viewer {
        Principal::Operator(session) => Some(
            tokio::time::Instant::now()
                + (session.expires_at - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default(),
        ),
        Principal::AdminKey(_) => None,
    };
    let mut recheck = tokio::time::interval(RECHECK_UNHEARD);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let open = (slot, OpenStream::new("sse"));
    let feed = Feed {
        receiver,
        changes,
        recheck,
        state,
        viewer,
        expires,
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
    viewer: Principal,
    /// When the session expires (the feed ends then); none for a key.
    expires: Option<tokio::time::Instant>,
    /// Has the viewer been checked since the feed subscribed to changes?
    checked: bool,
    _open: S,
}

impl<S> Feed<S> {
    /// The next event, or None when the feed must end.
    async fn next(&mut self) -> Option<Event> {
        if !self.checked {
            self.checked = true;
            if !self.still_allowed().await {
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
                    if !self.still_allowed().await {
                        return None;
                    }
                }
                _ = self.recheck.tick() => {
                    if !self.listening() && !self.still_allowed().await {
                        return None;
                    }
                }
                _ = expiry(self.expires) => {
                    tracing::info!(viewer = %self.viewer.actor(), "live feed ended: the session expired");
                    return None;
                }
                _ = self.state.shutdown.cancelled() => return None,
            }
        }
    }

    /// Are announcements of the changes that matter to this feed heard?
    fn listening(&self) -> bool {
        match &self.viewer {
            Principal::Operator(_) => self.state.sessions.listening(),
            Principal::AdminKey(_) => self.state.keys.listening(),
        }
    }

    /// May the feed's viewer still read: the session live, or the key still an admin's? A failed
    /// check ends the feed too (the page reconnects, and signs in again if it must).
    async fn still_allowed(&self) -> bool {
        let allowed = match &self.viewer {
            Principal::Operator(session) => operators::session(&self.state.db, &session.token_hash)
                .await
                .map(|live| live.is_some()),
            Principal::AdminKey(client) => clients::get(&self.state.db, client.id)
                .await
                .map(|live| live.is_some_and(|c| c.is_admin)),
        };
        match allowed {
            Ok(true) => true,
            Ok(false) => {
                tracing::info!(viewer = %self.viewer.actor(),
                    "live feed ended: signed out, disabled, revoked or demoted");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "live feed ended: its viewer could not be checked");
                false
            }
        }
    }
}

/// Resolves at `at`, never without one.
async fn expiry(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
