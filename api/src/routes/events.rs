//! `GET /v1/events`: the caller's own feed of what became of its commands — every status event
//! of its orders (applied, with the order event it appended; rejected, with the reason; failed),
//! in the order the outbox relay passed them on (per order, the commands' order), each with a
//! stable id. The same feed two ways: a page of JSON (`after`, `limit`), or, for a request that
//! accepts `text/event-stream`, server-sent events that go on live. Either resumes after the
//! last id the client handled (`after`, or `Last-Event-ID` on a stream) and misses nothing and
//! repeats nothing while the events are kept (`ORDERFLOW_EVENT_RETENTION_DAYS` in the worker);
//! past that, 410 `events-pruned`.
//!
//! A stream is a feed of the dashboard's kind: capped per client (`too-many-streams`), outliving
//! the request timeout, ended when the server shuts down, and ended as soon as the client's key
//! is revoked (every API process hears of it: see [`crate::keys`]). It is woken by the relay's
//! notification for its client ([`crate::waiters::Waiters::follow`]), re-reads then, taking
//! turns with the other woken reads, and also every [`REREAD_EVERY`] in case a notification was
//! lost (a relay that died between its commit and its announcement).

use crate::error::ApiError;
use crate::extract::{ApiQuery, Caller};
use crate::metrics::OpenStream;
use crate::openapi::{self, LastEventIdHeader};
use crate::pagination;
use crate::state::AppState;
use crate::waiters::Following;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orderflow_storage::client_events::{self, ClientEvent, Read};
use orderflow_storage::clients::{self, Client};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A stream re-reads this often even when nobody told it of anything new.
const REREAD_EVERY: Duration = Duration::from_secs(15);
/// Events a stream reads at once.
const STREAM_PAGE: i64 = 100;

/// Mounted outside the request timeout: a stream outlives it.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

/// The query of `GET /v1/events`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// The events after this one: an event's `id` (to read on after a page, pass its `next_after`).
    /// Without it (and without `Last-Event-ID`), a page starts at the oldest event kept and a
    /// stream at the next new event.
    #[param(pattern = "^[0-9]{1,18}$")]
    after: Option<String>,
    /// How many events a page holds at most: 1–100 (10 when absent). A stream ignores it.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// One event of the caller's feed.
#[derive(Serialize, ToSchema)]
pub struct FeedEvent {
    /// The event's place in the feed: pass it as `after` (or `Last-Event-ID`) to go on after it.
    /// Ids only grow; they are not consecutive within one client's feed.
    #[schema(pattern = "^[0-9]{1,18}$")]
    id: String,
    /// `command.<status>.<command type>`, e.g. `command.applied.add_item`,
    /// `command.rejected.reserve`: the status event's routing key on the events exchange.
    #[serde(rename = "type")]
    #[schema(pattern = "^command\\.(applied|rejected|failed)\\.[a-z_]+$")]
    kind: String,
    /// When the feed took the event.
    created_at: DateTime<Utc>,
    /// The status event, exactly as published on the events exchange (the message contract's
    /// `status-event` schema): `command_id`, `order_id`, `client_id`, `seq`, `type`, `status`,
    /// `reason`, `version`, and `event` (the order event an applied command appended).
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

impl From<ClientEvent> for FeedEvent {
    fn from(e: ClientEvent) -> Self {
        Self {
            id: e.position.to_string(),
            kind: e.kind,
            created_at: e.recorded_at,
            data: e.payload,
        }
    }
}

/// A page of the caller's feed, oldest first.
#[derive(Serialize, ToSchema)]
struct EventList {
    /// The events after `after`, oldest first.
    data: Vec<FeedEvent>,
    /// Whether more events follow this page now.
    has_more: bool,
    /// Pass as `after` to read on: the last event's id, or the position read from when the
    /// page is empty (a later read from it gets whatever comes next).
    #[schema(pattern = "^[0-9]{1,18}$")]
    next_after: String,
}

/// The caller's own event feed: what became of its commands, one event per command that ended
/// (`command.applied.*` with the order event it appended, `command.rejected.*` with the reason,
/// `command.failed.*`), per order in the commands' order, each with an `id` that resumes after
/// it. A page of JSON by default; server-sent events that go on live when the request accepts
/// `text/event-stream` (`Last-Event-ID` resumes a stream, as `EventSource` sends it). Events
/// are kept for `ORDERFLOW_EVENT_RETENTION_DAYS` (7 by default).
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    security(("bearer" = [])),
    params(EventsQuery, LastEventIdHeader),
    responses(
        (status = 200, description = "A page of the feed (JSON), or the feed as server-sent \
            events (`id:` the event's id, `event:` its type, `data:` the event as in a page), \
            live until the client goes, its key is revoked or the server stops.",
         content((EventList = "application/json"), (String = "text/event-stream"))),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 410, response = inline(openapi::EventsPruned)),
        (status = 429, response = inline(openapi::RateLimitedOrTooManyStreams)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let stream = wants_stream(&headers);
    // Both are checked, whichever is used: a malformed one is a 400 either way.
    let after = query
        .after
        .as_deref()
        .map(|a| parse_id(a, "after"))
        .transpose()?;
    let asked = last_event_id(&headers)?.or(after);
    let bounds = client_events::bounds(&state.db).await?;
    if let Some(after) = asked
        && after > bounds.head
    {
        return Err(ApiError::InvalidRequest(format!(
            "{after} is not an event id this API gave out (the newest is {})",
            bounds.head
        )));
    }
    if stream {
        let after = asked.unwrap_or(bounds.head);
        return open_stream(state, client, after).await;
    }
    let after = asked.unwrap_or(bounds.pruned_through);
    let mut events = read(&state, &client, after, limit + 1).await?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next_after = events.last().map_or(after, |e| e.position).to_string();
    Ok(Json(EventList {
        data: events.into_iter().map(FeedEvent::from).collect(),
        has_more,
        next_after,
    })
    .into_response())
}

/// Does the request ask for server-sent events?
fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The `Last-Event-ID` header, if any.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| bad_id("Last-Event-ID"))
                .and_then(|v| parse_id(v, "Last-Event-ID"))
        })
        .transpose()
}

/// An event id: 1–18 digits (what the feed hands out).
fn parse_id(text: &str, name: &str) -> Result<i64, ApiError> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_id(name));
    }
    text.parse().map_err(|_| bad_id(name))
}

fn bad_id(name: &str) -> ApiError {
    ApiError::InvalidRequest(format!(
        "{name} must be an event's id (1 to 18 digits), as the feed handed it out"
    ))
}

/// The client's events after `after` (at most `limit`), or 410 when some were pruned.
async fn read(
    state: &AppState,
    client: &Client,
    after: i64,
    limit: i64,
) -> Result<Vec<ClientEvent>, ApiError> {
    match client_events::read(&state.db, client.id, after, limit).await? {
        Read::Events(events) => Ok(events),
        Read::Pruned { pruned_through } => Err(ApiError::EventsPruned {
            after,
            pruned_through,
        }),
    }
}

async fn open_stream(state: AppState, client: Client, after: i64) -> Result<Response, ApiError> {
    let slot = state.limits.begin_stream(client.id)?;
    // Followed before the first read: whatever the relay passes on from here wakes the feed.
    let following = state.feeds.follow(client.id.0);
    let mut changes = state.keys.changes();
    // A revocation between the authentication and now is caught by a first check.
    changes.mark_changed();
    // The first read happens here, so that a position pruned meanwhile is a 410, not a stream
    // that ends at once.
    let first = read(&state, &client, after, STREAM_PAGE).await?;
    let mut reread = tokio::time::interval(REREAD_EVERY);
    reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reread.reset();
    let feed = Feed {
        full: first.len() as i64 == STREAM_PAGE,
        after: first.last().map_or(after, |e| e.position),
        pending: first.into(),
        following,
        changes,
        reread,
        state,
        client,
        _open: (slot, OpenStream::new("events")),
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), feed))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One open stream; `S` holds what it keeps until it ends (its slot, the open-streams gauge).
struct Feed<S> {
    /// Read but not yet sent.
    pending: VecDeque<ClientEvent>,
    /// The last position read.
    after: i64,
    /// Did the last read fill its page (so more may be there already)?
    full: bool,
    following: Following,
    changes: tokio::sync::watch::Receiver<u64>,
    reread: tokio::time::Interval,
    state: AppState,
    client: Client,
    _open: S,
}

impl<S> Feed<S> {
    /// The next event, or `None` when the stream must end.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(sse_event(event));
            }
            if !self.full {
                self.wait().await?;
            }
            let _turn = tokio::select! {
                turn = self.following.turn() => turn,
                _ = self.state.shutdown.cancelled() => return None,
            };
            let events = match read(&self.state, &self.client, self.after, STREAM_PAGE).await {
                Ok(events) => events,
                Err(e) => {
                    // Pruned past it (a reader far behind) or PostgreSQL gone: the client
                    // reconnects with its Last-Event-ID and is answered properly.
                    tracing::info!(client = %self.client.id, error = %e, "event stream ended");
                    return None;
                }
            };
            self.full = events.len() as i64 == STREAM_PAGE;
            if let Some(last) = events.last() {
                self.after = last.position;
            }
            self.pending.extend(events);
        }
    }

    /// Waits until there may be something new; `None` when the stream must end.
    async fn wait(&mut self) -> Option<()> {
        loop {
            tokio::select! {
                _ = self.following.woken() => return Some(()),
                _ = self.reread.tick() => {
                    // Revocations not heard (the listener reconnecting): check now and then.
                    if !self.state.keys.listening() {
                        self.still_allowed().await.then_some(())?;
                    }
                    return Some(());
                }
                changed = self.changes.changed() => {
                    changed.ok()?;
                    self.still_allowed().await.then_some(())?;
                }
                _ = self.state.shutdown.cancelled() => return None,
            }
        }
    }

    /// Is the client's key still live? A failed check ends the stream too (the client
    /// reconnects).
    async fn still_allowed(&self) -> bool {
        match clients::get(&self.state.db, self.client.id).await {
            Ok(Some(_)) => true,
            Ok(None) => {
                tracing::info!(client = %self.client.id, "event stream ended: the key was revoked");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "event stream ended: its client could not be checked");
                false
            }
        }
    }
}

fn sse_event(event: ClientEvent) -> Event {
    let id = event.position.to_string();
    let kind = event.kind.clone();
    let data = serde_json::to_string(&FeedEvent::from(event)).expect("an event serializes");
    Event::default().id(id).event(kind).data(data)
}
