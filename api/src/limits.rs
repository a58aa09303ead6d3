//! Traffic control that is orderflow's own: a token bucket per client (governor), with the
//! API's default quota or the client's override, caps on each client's open long-polls and
//! streams, a token bucket per order as its sender names it (another client's requests for the
//! same id spend a bucket of their own), a second bucket per client for the dashboard, and the cap
//! on each order's unfinished commands (enforced where its seq is taken). Per-client and per-order state
//! lives in bounded caches (moka) that forget idle keys, so a flood of keys cannot grow it
//! without end. The global in-flight limit, load shedding and the request timeout
//! are tower layers (see `routes::router`).

use crate::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use moka::sync::Cache;
use orderflow_domain::{ClientId, OrderId};
use orderflow_storage::clients::{Client, RateLimit};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Clients whose state is kept at most (the least recently used beyond this are forgotten).
const MAX_TRACKED_CLIENTS: u64 = 100_000;
/// SSE streams per client unless configured (a few dashboard tabs).
const DEFAULT_MAX_STREAMS: usize = 8;
/// Commands one order may have accepted but not yet finished unless configured.
const DEFAULT_MAX_PENDING_PER_ORDER: i64 = 16;
/// A client idle this long starts again with a full bucket.
const IDLE: Duration = Duration::from_secs(600);
/// Orders whose buckets are kept at most.
const MAX_TRACKED_ORDERS: u64 = 100_000;
/// An order untouched this long starts again with a full bucket (a full bucket is all it could
/// hold after a second anyway).
const ORDER_IDLE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Limits {
    default: RateLimit,
    /// Keyed by the quota too, so a changed override takes effect at once.
    buckets: Cache<(ClientId, RateLimit), Arc<Limiter>>,
    /// The dashboard's own buckets, with the same quota: a script loading the API with an admin
    /// key does not lock the same key's dashboard out, nor the other way round.
    dashboard_buckets: Cache<(ClientId, RateLimit), Arc<Limiter>>,
    max_waits: usize,
    waits: Cache<ClientId, Arc<Semaphore>>,
    max_streams: usize,
    streams: Cache<ClientId, Arc<Semaphore>>,
    max_pending_per_order: i64,
    /// Commands per second one order may take, and how many at once; `None`: no limit.
    order_rate: Option<(NonZeroU32, NonZeroU32)>,
    /// Keyed by the sending client too: another client's requests for an order id (all 404)
    /// spend that client's bucket, never the owner's.
    orders: Cache<(ClientId, OrderId), Arc<Limiter>>,
    clock: DefaultClock,
}

impl Limits {
    pub fn new(default: RateLimit, max_waits_per_client: usize) -> Self {
        Self {
            default,
            buckets: Cache::builder()
                .max_capacity(MAX_TRACKED_CLIENTS)
                .time_to_idle(IDLE)
                .build(),
            dashboard_buckets: Cache::builder()
                .max_capacity(MAX_TRACKED_CLIENTS)
                .time_to_idle(IDLE)
                .build(),
            max_waits: max_waits_per_client,
            // Not time-bounded: a semaphore with permits out must outlive its idle time.
            waits: Cache::builder().max_capacity(MAX_TRACKED_CLIENTS).build(),
            max_streams: DEFAULT_MAX_STREAMS,
            streams: Cache::builder().max_capacity(MAX_TRACKED_CLIENTS).build(),
            max_pending_per_order: DEFAULT_MAX_PENDING_PER_ORDER,
            order_rate: None,
            orders: Cache::builder()
                .max_capacity(MAX_TRACKED_ORDERS)
                .time_to_idle(ORDER_IDLE)
                .build(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token from the client's bucket, or says how long to wait.
    pub fn check(&self, client: &Client) -> Result<(), ApiError> {
        self.check_in(&self.buckets, client.id, client.rate_limit)
    }

    /// [`Limits::check`] against a dashboard bucket: an admin client's, or a signed-in
    /// operator's (keyed by the operator's id; ids are UUIDs, so never a client's), at the
    /// default rate unless the client has its own.
    pub fn check_dashboard(&self, id: ClientId, rate: Option<RateLimit>) -> Result<(), ApiError> {
        self.check_in(&self.dashboard_buckets, id, rate)
    }

    fn check_in(
        &self,
        buckets: &Cache<(ClientId, RateLimit), Arc<Limiter>>,
        id: ClientId,
        rate: Option<RateLimit>,
    ) -> Result<(), ApiError> {
        let rate = rate.unwrap_or(self.default);
        let limiter = buckets.get_with((id, rate), || {
            let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
            self.bucket(
                per_second,
                NonZeroU32::new(rate.burst).unwrap_or(per_second),
            )
        });
        match self.take(&limiter) {
            Ok(()) => Ok(()),
            Err(retry_after_secs) => Err(ApiError::RateLimited {
                retry_after_secs,
                limit: rate.burst,
                window_secs: (f64::from(rate.burst) / f64::from(rate.per_second)).ceil() as u64,
            }),
        }
    }

    /// Sets how many commands per second one order may take, whoever sends them, and how many
    /// at once (`per_second` 0: no limit; `burst` at least 1). A storm on one order then costs the
    /// rest of the system a bounded share of its capacity, spread out in time: the excess is
    /// turned away in memory, before any database work.
    pub fn with_order_rate(mut self, per_second: u32, burst: u32) -> Self {
        self.order_rate = NonZeroU32::new(per_second)
            .map(|rate| (rate, NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)));
        self
    }

    /// Takes one token from the order's bucket, or says how long to wait.
    pub fn check_order(&self, client: ClientId, order: OrderId) -> Result<(), ApiError> {
        let Some((per_second, burst)) = self.order_rate else {
            return Ok(());
        };
        let limiter = self
            .orders
            .get_with((client, order), || self.bucket(per_second, burst));
        self.take(&limiter)
            .map_err(|retry_after_secs| ApiError::OrderRateLimited {
                per_second: per_second.get(),
                retry_after_secs,
            })
    }

    /// A token bucket: `per_second` refill, `burst` at most. On the one clock all buckets share:
    /// a bucket made with its own (`RateLimiter::direct`) calibrates a new clock, and that runs
    /// the CPUID instruction, which a virtual machine traps. With a bucket made for every order
    /// not seen in the last 10 s, that was 5 % of the API's CPU samples under the benchmark's
    /// uniform load (`perf record` of `orderflow-bench perf --workloads uniform`).
    fn bucket(&self, per_second: NonZeroU32, burst: NonZeroU32) -> Arc<Limiter> {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Arc::new(RateLimiter::direct_with_clock(quota, self.clock.clone()).with_middleware())
    }

    /// Takes a token from `limiter`, or says in whole seconds (at least 1) when to come back.
    fn take(&self, limiter: &Limiter) -> Result<(), u64> {
        limiter.check().map(|_| ()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    /// Holds one of the client's long-poll slots for as long as the permit lives.
    pub fn begin_wait(&self, client: ClientId) -> Result<OwnedSemaphorePermit, ApiError> {
        let slots = self
            .waits
            .get_with(client, || Arc::new(Semaphore::new(self.max_waits)));
        slots
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyWaits(self.max_waits))
    }

    /// Sets how many SSE streams (the dashboard's live feed) one client may hold open.
    pub fn with_max_streams(mut self, max_streams_per_client: usize) -> Self {
        self.max_streams = max_streams_per_client;
        self
    }

    /// Sets how many commands one order may have accepted but not yet finished. A hot order's
    /// backlog then stays short in its partition queue, so the other orders sharing that
    /// partition are not kept waiting behind it; its own callers get 429 `order-busy`.
    pub fn with_max_pending_per_order(mut self, max: i64) -> Self {
        self.max_pending_per_order = max;
        self
    }

    pub fn max_pending_per_order(&self) -> i64 {
        self.max_pending_per_order
    }

    /// Takes one of the client's SSE slots for as long as the permit lives.
    pub fn begin_stream(&self, client: ClientId) -> Result<OwnedSemaphorePermit, ApiError> {
        let slots = self
            .streams
            .get_with(client, || Arc::new(Semaphore::new(self.max_streams)));
        slots
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams(self.max_streams))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(rate_limit: Option<RateLimit>) -> Client {
        Client {
            id: ClientId::new(),
            name: "t".into(),
            is_admin: false,
            rate_limit,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let limits = Limits::new(
            RateLimit {
                per_second: 1,
                burst: 3,
            },
            1,
        );
        let c = client(None);
        for _ in 0..3 {
            assert!(limits.check(&c).is_ok());
        }
        match limits.check(&c) {
            Err(ApiError::RateLimited {
                retry_after_secs,
                limit,
                ..
            }) => {
                assert_eq!((retry_after_secs, limit), (1, 3));
            }
            other => panic!("{other:?}"),
        }
        // another client has its own bucket
        assert!(limits.check(&client(None)).is_ok());
    }

    #[test]
    fn a_client_override_replaces_the_default() {
        let limits = Limits::new(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            1,
        );
        // A slow refill, so that the outcome does not depend on how fast the test runs.
        let generous = client(Some(RateLimit {
            per_second: 1,
            burst: 50,
        }));
        assert!((0..50).all(|_| limits.check(&generous).is_ok()));
        assert!(limits.check(&generous).is_err());
    }

    #[test]
    fn an_order_takes_its_rate_whoever_sends_and_other_orders_are_not_touched() {
        let limits = Limits::new(
            RateLimit {
                per_second: 1_000,
                burst: 1_000,
            },
            1,
        )
        .with_order_rate(1, 3);
        let (hot, cold) = (OrderId::new(), OrderId::new());
        let sender = ClientId::new();
        // The burst at once; refill is one token a second, far slower than this loop, so the
        // outcome does not depend on the machine's speed.
        assert!((0..3).all(|_| limits.check_order(sender, hot).is_ok()));
        match limits.check_order(sender, hot) {
            Err(ApiError::OrderRateLimited {
                per_second,
                retry_after_secs,
            }) => assert_eq!((per_second, retry_after_secs), (1, 1)),
            other => panic!("{other:?}"),
        }
        assert!(limits.check_order(sender, cold).is_ok());
        // Another client naming the same order spends a bucket of its own.
        assert!(limits.check_order(ClientId::new(), hot).is_ok());
        // 0 turns the limit off.
        let unlimited = Limits::new(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            1,
        )
        .with_order_rate(0, 1);
        assert!((0..1_000).all(|_| unlimited.check_order(sender, hot).is_ok()));
    }

    #[test]
    fn long_poll_slots_are_capped_per_client_and_given_back() {
        let limits = Limits::new(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            2,
        );
        let id = ClientId::new();
        let first = limits.begin_wait(id).unwrap();
        let _second = limits.begin_wait(id).unwrap();
        assert!(matches!(
            limits.begin_wait(id),
            Err(ApiError::TooManyWaits(2))
        ));
        assert!(limits.begin_wait(ClientId::new()).is_ok());
        drop(first);
        assert!(limits.begin_wait(id).is_ok());
    }
}
