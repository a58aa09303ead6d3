//! Webhooks: a client's endpoints (written by the API) and each endpoint's deliveries (fanned out
//! from the client's event feed and sent by the worker). The scheme is in the migration
//! `webhooks`: fan-out under the endpoint's row lock, then claims that keep each order's
//! deliveries one at a time and in order.

use chrono::{DateTime, Utc};
use orderflow_domain::ClientId;
use sqlx::{PgConnection, PgExecutor, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// Any fixed number shared by every sender: claims are taken one transaction at a time, so that
/// an endpoint's in-flight count is exact when a claim reads it.
const CLAIM_LOCK: i64 = 0x6f66_7765_6268_6f6f; // "ofwebhoo"

/// A client's endpoint (never its secret, which is shown once).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: Uuid,
    /// The client's name (for the dashboard; a client sees only its own).
    pub client: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub status: String,
    pub failing_since: Option<DateTime<Utc>>,
    pub failing_reason: Option<String>,
    /// Where the feed pruned events before they reached this endpoint (it may have lost some).
    pub feed_gap: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Deliveries not yet sent (or being retried).
    pub pending: i64,
}

/// What a new endpoint is made of.
pub struct NewEndpoint<'a> {
    pub id: Uuid,
    pub client: ClientId,
    pub url: &'a str,
    pub event_types: &'a [String],
    pub description: &'a str,
    pub secret: &'a str,
    pub idempotency_key: &'a str,
}

/// An endpoint created (or found created by an earlier request with the same key), with its
/// secret.
#[derive(Debug)]
pub struct Created {
    pub endpoint: Endpoint,
    pub secret: String,
    /// Whether it was created by an earlier request (this one is its replay).
    pub replayed: bool,
}

/// Why an endpoint was not created.
#[derive(Debug)]
pub enum CreateError {
    /// The client has this many endpoints already.
    TooMany(i64),
    /// The key was used for an endpoint with another URL, event types or description.
    KeyReused,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for CreateError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// Creates an endpoint that receives the client's events from now on (its cursor is the feed's
/// head when it commits: everything visible then is older); or, when the client created one
/// with the same idempotency key and the same URL, event types and description, answers that
/// one. At most `max` per client: the client's row is locked while it looks and counts, so two
/// creations at once can neither both squeeze in nor both take one key.
pub async fn create_endpoint(
    db: &PgPool,
    new: NewEndpoint<'_>,
    max: i64,
) -> Result<Created, CreateError> {
    let mut tx = db.begin().await?;
    let held = sqlx::query_scalar!(
        r#"select (select count(*) from webhook_endpoints where client_id = $1) as "held!"
             from clients where id = $1 for update"#,
        new.client.0
    )
    .fetch_one(&mut *tx)
    .await?;
    let earlier = sqlx::query!(
        "select id, url, event_types, description, secret from webhook_endpoints
          where client_id = $1 and idempotency_key = $2",
        new.client.0,
        new.idempotency_key
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(earlier) = earlier {
        let same = earlier.url == new.url
            && earlier.event_types == new.event_types
            && earlier.description == new.description;
        if !same {
            return Err(CreateError::KeyReused);
        }
        let endpoint = endpoints(&mut *tx, Some(new.client), Some(earlier.id))
            .await?
            .pop()
            .expect("the endpoint just read");
        return Ok(Created {
            endpoint,
            secret: earlier.secret,
            replayed: true,
        });
    }
    if held >= max {
        return Err(CreateError::TooMany(held));
    }
    let row = sqlx::query!(
        r#"insert into webhook_endpoints
                (id, client_id, url, event_types, description, secret, idempotency_key, cursor)
           values ($1, $2, $3, $4, $5, $6, $7,
                   greatest((select coalesce(max(position), 0) from client_events),
                            (select pruned_through from client_events_horizon)))
           returning created_at, (select name from clients where id = $2) as "client!""#,
        new.id,
        new.client.0,
        new.url,
        new.event_types,
        new.description,
        new.secret,
        new.idempotency_key,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let endpoint = Endpoint {
        id: new.id,
        client: row.client,
        url: new.url.to_owned(),
        event_types: new.event_types.to_vec(),
        description: new.description.to_owned(),
        status: "active".to_owned(),
        failing_since: None,
        failing_reason: None,
        feed_gap: None,
        created_at: row.created_at,
        pending: 0,
    };
    Ok(Created {
        endpoint,
        secret: new.secret.to_owned(),
        replayed: false,
    })
}

/// The client's endpoints (every client's: `None`, for the dashboard), oldest first; or the one
/// asked for.
pub async fn endpoints(
    db: impl PgExecutor<'_>,
    client: Option<ClientId>,
    only: Option<Uuid>,
) -> sqlx::Result<Vec<Endpoint>> {
    let rows = sqlx::query!(
        r#"select e.id, c.name as client, e.url, e.event_types, e.description, e.status,
                  e.failing_since, e.failing_reason, e.feed_gap, e.created_at,
                  (select count(*) from webhook_deliveries d
                    where d.endpoint_id = e.id and d.status = 'pending') as "pending!"
             from webhook_endpoints e join clients c on c.id = e.client_id
            where ($1::uuid is null or e.client_id = $1) and ($2::uuid is null or e.id = $2)
            order by e.created_at, e.id"#,
        client.map(|c| c.0),
        only
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Endpoint {
            id: r.id,
            client: r.client,
            url: r.url,
            event_types: r.event_types,
            description: r.description,
            status: r.status,
            failing_since: r.failing_since,
            failing_reason: r.failing_reason,
            feed_gap: r.feed_gap,
            created_at: r.created_at,
            pending: r.pending,
        })
        .collect())
}

/// Deletes the client's endpoint and its deliveries; false when it has none by that id.
pub async fn delete_endpoint(
    db: impl PgExecutor<'_>,
    client: ClientId,
    id: Uuid,
) -> sqlx::Result<bool> {
    let deleted = sqlx::query!(
        "delete from webhook_endpoints where id = $1 and client_id = $2",
        id,
        client.0
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// One delivery of the log.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: i64,
    pub position: i64,
    pub order_id: Uuid,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_response_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` of the endpoint's deliveries with ids below `before`, newest first; `None`
/// when the client (any client: `None`) has no such endpoint.
pub async fn deliveries(
    db: &PgPool,
    client: Option<ClientId>,
    endpoint: Uuid,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Option<Vec<Delivery>>> {
    let mut tx = db.begin().await?;
    let theirs = sqlx::query_scalar!(
        r#"select count(*) as "n!" from webhook_endpoints
            where id = $1 and ($2::uuid is null or client_id = $2)"#,
        endpoint,
        client.map(|c| c.0)
    )
    .fetch_one(&mut *tx)
    .await?;
    if theirs == 0 {
        return Ok(None);
    }
    let rows = sqlx::query!(
        r#"select id, position, order_id, event_type, status, attempts, next_attempt_at,
                  last_attempt_at, last_response_status, last_error, delivered_at, created_at
             from webhook_deliveries
            where endpoint_id = $1 and id < coalesce($2, 9223372036854775807)
            order by id desc limit $3"#,
        endpoint,
        before,
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(
        rows.into_iter()
            .map(|r| Delivery {
                id: r.id,
                position: r.position,
                order_id: r.order_id,
                event_type: r.event_type,
                next_attempt_at: (r.status == "pending").then_some(r.next_attempt_at),
                status: r.status,
                attempts: r.attempts,
                last_attempt_at: r.last_attempt_at,
                last_response_status: r.last_response_status,
                last_error: r.last_error,
                delivered_at: r.delivered_at,
                created_at: r.created_at,
            })
            .collect(),
    ))
}

/// What a manual retry found.
#[derive(Debug, PartialEq, Eq)]
pub enum Retried {
    /// The given-up delivery goes out again now (with a fresh retry window), and its endpoint is
    /// active again.
    Again,
    /// It is pending already: it goes out when due (and when its order's turn comes).
    AlreadyPending,
    /// It was delivered: there is nothing to retry.
    Delivered,
    /// The client has no such endpoint or delivery.
    NotFound,
}

/// Sends a given-up delivery again: it becomes pending, due now, with its attempts counted from
/// zero and a fresh retry window, and its endpoint is active again (a failing endpoint resumes
/// on a retry). Of the client's endpoint (any client's: `None`, for the dashboard). The
/// endpoint's row is locked first, as every writer of both tables does (no deadlock with a
/// deletion or an outcome being recorded).
pub async fn retry(
    db: &PgPool,
    client: Option<ClientId>,
    endpoint: Uuid,
    delivery: i64,
) -> sqlx::Result<Retried> {
    let mut tx = db.begin().await?;
    let found = retry_in(&mut tx, client, endpoint, delivery).await?;
    tx.commit().await?;
    Ok(found)
}

/// [`retry`] inside the caller's transaction.
pub async fn retry_in(
    conn: &mut PgConnection,
    client: Option<ClientId>,
    endpoint: Uuid,
    delivery: i64,
) -> sqlx::Result<Retried> {
    let theirs = sqlx::query_scalar!(
        r#"select count(*) as "n!" from (
             select from webhook_endpoints
              where id = $1 and ($2::uuid is null or client_id = $2)
                for no key update) e"#,
        endpoint,
        client.map(|c| c.0)
    )
    .fetch_one(&mut *conn)
    .await?;
    if theirs == 0 {
        return Ok(Retried::NotFound);
    }
    let status = sqlx::query_scalar!(
        r#"with theirs as (
             select id, status from webhook_deliveries
              where id = $1 and endpoint_id = $2 for update),
           again as (
             update webhook_deliveries d
                set status = 'pending', attempts = 0, next_attempt_at = now(),
                    first_attempt_at = null, claim = null, claimed_until = null
               from theirs where d.id = theirs.id and theirs.status = 'given_up'
             returning d.id),
           woken as (
             update webhook_endpoints
                set status = 'active', failing_since = null, failing_reason = null
              where id = $2 and exists (select from again))
         select status as "status!" from theirs"#,
        delivery,
        endpoint
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match status.as_deref() {
        None => Retried::NotFound,
        Some("pending") => Retried::AlreadyPending,
        Some("delivered") => Retried::Delivered,
        Some(_) => Retried::Again,
    })
}

// ---- the worker's side ------------------------------------------------------------------------

/// Endpoints with work: their client's feed has events after their cursor, or their cursor is
/// behind what the feed still holds (see [`fan_out`]). Active or failing: a failing endpoint's
/// backlog still fills, so that nothing is lost while it is down.
pub async fn endpoints_behind(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        r#"select e.id as "id!" from webhook_endpoints e, client_events_horizon h
            where e.cursor < h.pruned_through
               or exists (select from client_events c
                           where c.client_id = e.client_id and c.position > e.cursor)"#
    )
    .fetch_all(db)
    .await
}

/// Moves the cursor of every endpoint whose client has no event after it to the feed's head:
/// run before each prune of the feed, so that an idle endpoint's cursor is never behind what
/// the feed holds, and only one that really lagged is told it may have lost events. Every
/// position up to the head is visible in the statement's snapshot (the relay hands them out in
/// commit order), so no event of the client can be passed over.
pub async fn advance_idle_cursors(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let moved = sqlx::query!(
        "with head as (
           select greatest((select coalesce(max(position), 0) from client_events),
                           (select pruned_through from client_events_horizon)) as position)
         update webhook_endpoints e set cursor = head.position from head
          where e.cursor < head.position
            and not exists (select from client_events c
                             where c.client_id = e.client_id and c.position > e.cursor)"
    )
    .execute(db)
    .await?;
    Ok(moved.rows_affected())
}

/// Copies up to `batch` of the events after the endpoint's cursor, whole, into its deliveries
/// (those of the types it wants, by `wants`) and moves the cursor past every one it looked at,
/// unless the endpoint's backlog holds `backlog` pending deliveries already. A new delivery is
/// ready when it is the first of its order in the batch and no earlier delivery of its order to
/// the endpoint is undelivered. Skips an endpoint another sender is fanning out (or that changed
/// since this transaction began). Returns how many deliveries it added.
///
/// An endpoint whose cursor is behind what the feed still holds (its backlog stayed full for
/// the feed's whole retention, or no worker ran that long) may have lost events: the first such
/// stretch is recorded on it (`feed_gap`), and its cursor moves to the feed's horizon. The
/// horizon and the events are read in one snapshot (repeatable read), so a prune in between
/// cannot hide a loss.
pub async fn fan_out(
    db: &PgPool,
    endpoint: Uuid,
    backlog: i64,
    batch: i64,
    wants: impl Fn(&[String], &str) -> bool,
) -> sqlx::Result<usize> {
    match fan_out_once(db, endpoint, backlog, batch, wants).await {
        Err(e) if crate::errors::classify(&e) == crate::errors::ErrorClass::Serialization => Ok(0),
        other => other,
    }
}

async fn fan_out_once(
    db: &PgPool,
    endpoint: Uuid,
    backlog: i64,
    batch: i64,
    wants: impl Fn(&[String], &str) -> bool,
) -> sqlx::Result<usize> {
    let mut tx = db.begin().await?;
    sqlx::query!("set transaction isolation level repeatable read")
        .execute(&mut *tx)
        .await?;
    let Some(mut row) = sqlx::query!(
        r#"select client_id, cursor, event_types,
                  (select count(*) from webhook_deliveries d
                    where d.endpoint_id = e.id and d.status = 'pending') as "pending!"
             from webhook_endpoints e where id = $1 for no key update skip locked"#,
        endpoint
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(0);
    };
    let horizon = sqlx::query_scalar!("select pruned_through from client_events_horizon")
        .fetch_one(&mut *tx)
        .await?;
    if row.cursor < horizon {
        sqlx::query!(
            "update webhook_endpoints
                set cursor = $2::bigint,
                    feed_gap = coalesce(feed_gap,
                        'events after ' || cursor || ' up to ' || $2::bigint::text
                        || ' left the feed (its retention) before they reached this endpoint''s '
                        || 'backlog, which stayed full (or no worker ran) that long: some of them '
                        || 'may be lost; GET /v1/events cannot give them back either')
              where id = $1",
            endpoint,
            horizon
        )
        .execute(&mut *tx)
        .await?;
        row.cursor = horizon;
    }
    let room = (backlog - row.pending).min(batch);
    if room <= 0 {
        tx.commit().await?;
        return Ok(0);
    }
    let events = sqlx::query!(
        "select position, order_id, type, payload, recorded_at from client_events
          where client_id = $1 and position > $2 order by position limit $3",
        row.client_id,
        row.cursor,
        room
    )
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = events.last().map(|e| e.position) else {
        tx.commit().await?;
        return Ok(0);
    };
    let wanted: Vec<_> = events
        .iter()
        .filter(|e| wants(&row.event_types, &e.r#type))
        .collect();
    let positions: Vec<i64> = wanted.iter().map(|e| e.position).collect();
    let orders: Vec<Uuid> = wanted.iter().map(|e| e.order_id).collect();
    let types: Vec<String> = wanted.iter().map(|e| e.r#type.clone()).collect();
    let payloads: Vec<serde_json::Value> = wanted.iter().map(|e| e.payload.clone()).collect();
    let recorded: Vec<DateTime<Utc>> = wanted.iter().map(|e| e.recorded_at).collect();
    sqlx::query!(
        "insert into webhook_deliveries
                (endpoint_id, position, order_id, event_type, payload, recorded_at, ready)
         select $1, n.position, n.order_id, n.type, n.payload, n.recorded_at,
                n.position = min(n.position) over (partition by n.order_id)
                and not exists (select from webhook_deliveries p
                                 where p.endpoint_id = $1 and p.order_id = n.order_id
                                   and p.status <> 'delivered')
           from unnest($2::bigint[], $3::uuid[], $4::text[], $5::jsonb[], $6::timestamptz[])
                as n(position, order_id, type, payload, recorded_at)
         on conflict (endpoint_id, position) do nothing",
        endpoint,
        &positions,
        &orders,
        &types,
        &payloads,
        &recorded
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "update webhook_endpoints set cursor = $2 where id = $1",
        endpoint,
        last
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(positions.len())
}

/// Makes ready every pending delivery whose order's earlier deliveries to its endpoint were all
/// delivered, should one have been missed. A safety net, run now and then: the race it was
/// written for (a delivery recorded while the next of its order was being fanned out in a
/// snapshot that could not see it) is closed by [`record`] updating the endpoint (isolation spec
/// `webhook_ready`). Returns how many.
pub async fn make_ready(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let made = sqlx::query!(
        "update webhook_deliveries d set ready = true
          where d.status = 'pending' and not d.ready
            and not exists (select from webhook_deliveries p
                             where p.endpoint_id = d.endpoint_id and p.order_id = d.order_id
                               and p.status <> 'delivered' and p.position < d.position)"
    )
    .execute(db)
    .await?;
    Ok(made.rows_affected())
}

/// A delivery claimed for sending, with what it sends.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: i64,
    pub claim: Uuid,
    pub endpoint_id: Uuid,
    pub url: String,
    pub secret: String,
    pub position: i64,
    pub order_id: Uuid,
    pub event_type: String,
    pub attempts: i32,
    /// When the first attempt went out (this one, when it is the first).
    pub first_attempt_at: DateTime<Utc>,
    /// The event, and when the feed took it.
    pub payload: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// How many deliveries may be in flight at once.
#[derive(Clone, Copy, Debug)]
pub struct Shares {
    /// Claimed now, at most.
    pub limit: i64,
    /// In flight to one endpoint, over every sender.
    pub per_endpoint: i64,
    /// In flight for one client's endpoints, over every sender.
    pub per_client: i64,
}

/// Claims up to `shares.limit` ready, due deliveries for `hold`, each of an active endpoint with
/// fewer than `per_endpoint` deliveries in flight and a client with fewer than `per_client`,
/// taking clients in turn (each client's first due delivery, then each one's second, …) so that
/// no client's burst delays another's. Claims are taken one transaction at a time (an advisory
/// lock), so the counts of deliveries in flight are exact here.
pub async fn claim(db: &PgPool, shares: Shares, hold: Duration) -> sqlx::Result<Vec<Claimed>> {
    if shares.limit <= 0 {
        return Ok(Vec::new());
    }
    let mut tx = db.begin().await?;
    sqlx::query!(
        "select 1 as locked from pg_advisory_xact_lock($1)",
        CLAIM_LOCK
    )
    .fetch_one(&mut *tx)
    .await?;
    let claim = Uuid::now_v7();
    let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
    let rows = sqlx::query!(
        r#"with flying as (
             select e.id, e.client_id, count(d.id) as n
               from webhook_endpoints e
               left join webhook_deliveries d
                 on d.endpoint_id = e.id and d.status = 'pending' and d.ready
                and d.claimed_until >= now()
              where e.status = 'active'
              group by e.id, e.client_id),
           open as (
             select id, client_id,
                    $2::bigint - n as free,
                    $3::bigint - (sum(n) over (partition by client_id))::bigint as client_free
               from flying),
           due as (
             select d.id, d.next_attempt_at, d.position, open.client_id, open.client_free
               from open cross join lateral (
                 select d.id, d.next_attempt_at, d.position from webhook_deliveries d
                  where d.endpoint_id = open.id and d.status = 'pending' and d.ready
                    and d.next_attempt_at <= now()
                    and (d.claimed_until is null or d.claimed_until < now())
                  order by d.next_attempt_at, d.position
                  limit greatest(open.free, 0)) d),
           turns as (
             select id, client_free,
                    row_number() over (partition by client_id
                                       order by next_attempt_at, position) as turn,
                    next_attempt_at
               from due),
           picked as (
             select id from turns where turn <= client_free
              order by turn, next_attempt_at limit $1),
           claimed as (
             update webhook_deliveries d
                set claim = $4, claimed_until = now() + make_interval(secs => $5::bigint / 1000.0),
                    first_attempt_at = coalesce(d.first_attempt_at, now())
               from picked where d.id = picked.id
             returning d.id, d.endpoint_id, d.position, d.order_id, d.event_type, d.attempts,
                       d.first_attempt_at, d.payload, d.recorded_at)
         select c.id as "id!", c.endpoint_id as "endpoint_id!", c.position as "position!",
                c.order_id as "order_id!", c.event_type as "event_type!",
                c.attempts as "attempts!", c.first_attempt_at as "first_attempt_at!",
                c.payload as "payload!", c.recorded_at as "recorded_at!", e.url, e.secret
           from claimed c
           join webhook_endpoints e on e.id = c.endpoint_id
          order by c.position"#,
        shares.limit,
        shares.per_endpoint,
        shares.per_client,
        claim,
        hold_ms
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            id: r.id,
            claim,
            endpoint_id: r.endpoint_id,
            url: r.url,
            secret: r.secret,
            position: r.position,
            order_id: r.order_id,
            event_type: r.event_type,
            attempts: r.attempts,
            first_attempt_at: r.first_attempt_at,
            payload: r.payload,
            recorded_at: r.recorded_at,
        })
        .collect())
}

/// What became of one attempt.
pub enum Outcome<'a> {
    /// A 2xx came back.
    Delivered { status: u16 },
    /// Anything else: try again at `retry_at`.
    Failed {
        status: Option<u16>,
        error: &'a str,
        retry_at: DateTime<Utc>,
    },
    /// Anything else, and the delivery was retried for too long (or cannot be sent at all):
    /// it is given up and its endpoint marked failing.
    GivenUp { status: Option<u16>, error: &'a str },
}

/// Records an attempt's outcome under its claim (a claim that lapsed and was taken again by
/// another sender writes nothing: that sender records its own); a delivered one makes the next
/// delivery of its order to its endpoint ready. Takes the endpoint's row lock first, as every
/// writer of both tables does: a key share (fan-out goes on beside it), but a delivered one
/// updates the endpoint (`last_delivered_at`), so that it and a fan-out never miss each other:
/// the fan-out reads in one snapshot and decides whether an order's next delivery is ready by
/// whether the one before was delivered. A fan-out holding the endpoint makes this wait, and
/// the next delivery it inserted is then seen and made ready here; one that locks the endpoint
/// after this committed fails to serialize and goes again. Returns whether it was written.
pub async fn record(db: &PgPool, delivery: &Claimed, outcome: Outcome<'_>) -> sqlx::Result<bool> {
    let (status, state, error, retry_at) = match outcome {
        Outcome::Delivered { status } => (Some(status), "delivered", None, None),
        Outcome::Failed {
            status,
            error,
            retry_at,
        } => (status, "pending", Some(error), Some(retry_at)),
        Outcome::GivenUp { status, error } => (status, "given_up", Some(error), None),
    };
    let mut tx = db.begin().await?;
    let endpoint = if state == "delivered" {
        sqlx::query_scalar!(
            "update webhook_endpoints set last_delivered_at = now() where id = $1 returning id",
            delivery.endpoint_id
        )
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query_scalar!(
            "select id from webhook_endpoints where id = $1 for key share",
            delivery.endpoint_id
        )
        .fetch_optional(&mut *tx)
        .await?
    };
    if endpoint.is_none() {
        // Deleted meanwhile, deliveries and all.
        return Ok(false);
    }
    let written = sqlx::query_scalar!(
        r#"with done as (
             update webhook_deliveries
                set status = $3, attempts = attempts + 1, last_attempt_at = now(),
                    last_response_status = $4, last_error = $5,
                    next_attempt_at = coalesce($6, next_attempt_at),
                    delivered_at = case when $3 = 'delivered' then now() end,
                    claim = null, claimed_until = null
              where id = $1 and claim = $2
             returning id, endpoint_id, order_id, position),
           next as (
             update webhook_deliveries n set ready = true
              where $3 = 'delivered' and n.id = (
                      select p.id from webhook_deliveries p, done
                       where p.endpoint_id = done.endpoint_id and p.order_id = done.order_id
                         and p.status <> 'delivered' and p.position > done.position
                       order by p.position limit 1)),
           failing as (
             update webhook_endpoints
                set status = 'failing', failing_since = coalesce(failing_since, now()),
                    failing_reason = coalesce(failing_reason,
                                              'delivery ' || $1 || ' given up: ' || $5)
              where $3 = 'given_up' and id = (select endpoint_id from done))
         select count(*) as "written!" from done"#,
        delivery.id,
        delivery.claim,
        state,
        status.map(i32::from),
        error.map(|e| truncate(e, 500)),
        retry_at,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(written == 1)
}

/// At most `max` bytes of `text`, cut at a character boundary, without NUL (PostgreSQL `text`
/// refuses it): what an endpoint answered is stored, and an endpoint may answer anything.
pub fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_keeps_whole_characters_and_drops_nul() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("a\0b", 10), "a\u{FFFD}b");
        assert_eq!(truncate("", 10), "");
    }
}
