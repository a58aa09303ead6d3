//! `GET /dashboard/api/stream`: the live feed as server-sent events (`command`, `order`,
//! `conflict`, `stats`, `partitions`). Capped per client; it ends when the server shuts down, so a
//! graceful shutdown never waits on an open dashboard. A dashboard that falls behind by more than
//! the feed's buffer skips ahead (it is told with a `lagged` event) rather than slowing the feed.

use super::auth::DashboardAdmin;
use crate::error::ApiError;
use crate::metrics::OpenStream;
use crate::state::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

pub async fn feed(
    State(state): State<AppState>,
    DashboardAdmin(admin): DashboardAdmin,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state.limits.begin_stream(admin.id)?;
    let receiver = state.hub.subscribe();
    let shutdown = state.shutdown.clone();
    let open = (slot, OpenStream::new("sse"));
    let events = futures_util::stream::unfold(
        (receiver, shutdown, open),
        |(mut receiver, shutdown, open)| async move {
            let event = tokio::select! {
                received = receiver.recv() => match received {
                    Ok(frame) => Event::default().event(frame.event).data(frame.data.as_str()),
                    Err(RecvError::Lagged(skipped)) => {
                        Event::default().event("lagged").data(skipped.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = shutdown.cancelled() => return None,
            };
            Some((Ok(event), (receiver, shutdown, open)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
