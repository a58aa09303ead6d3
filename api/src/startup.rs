//! Building and running the API: configuration, migrations, the topology, the listener.
//! Tests use [`Application::build`] with port 0 and [`Application::port`].

use crate::admission::Admission;
use crate::confirms::Confirms;
use crate::dashboard::hub::{Hub, Thresholds};
use crate::gates::OrderGates;
use crate::keys::Keys;
use crate::limits::Limits;
use crate::operators::Sessions;
use crate::records::Records;
use crate::routes::{self, ServerLimits};
use crate::state::{AppState, Shared};
use crate::waiters::Waiters;
use anyhow::Context;
use clap::Args;
use orderflow_messaging::{self as amqp, Publisher, Topology};
use orderflow_runtime::config::CommonConfig;
use orderflow_runtime::config::ExposeSecret;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage as db;
use orderflow_storage::CLIENTS_CHANNEL;
use orderflow_storage::clients::RateLimit;
use orderflow_storage::layout::{self, LayoutCell};
use orderflow_storage::listen::Notice;
use orderflow_storage::operators::OPERATORS_CHANNEL;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings of the HTTP server.
#[derive(Args, Clone, Debug)]
pub struct ApiConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "ORDERFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Default rate limit per client: requests per second (a client's own limit overrides it).
    #[arg(long, env = "ORDERFLOW_RATE_LIMIT_PER_SECOND", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_second: u32,

    /// Default burst per client: requests allowed at once before the rate applies.
    #[arg(long, env = "ORDERFLOW_RATE_LIMIT_BURST", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,

    /// Long-polls (`?wait=`) one client may hold open at once; more answer 429.
    #[arg(long, env = "ORDERFLOW_MAX_WAITS_PER_CLIENT", default_value_t = 100)]
    pub max_waits_per_client: usize,

    /// Commands one order may have accepted but not yet finished; more answer 429 `order-busy`,
    /// so that a hot order's backlog cannot fill its partition queue ahead of other orders.
    #[arg(long, env = "ORDERFLOW_MAX_PENDING_PER_ORDER", default_value_t = 16,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub max_pending_per_order: i64,

    /// Commands one order may take per second (per API process), whoever sends them; more
    /// answer 429 `order-rate-limited` at once, before any database work, so a storm on one
    /// order cannot take the capacity the other orders need. 0: no limit.
    #[arg(long, env = "ORDERFLOW_ORDER_RATE_PER_SECOND", default_value_t = 50)]
    pub order_rate_per_second: u32,

    /// Commands one order may take at once (its token bucket's size; by default the order's
    /// allowance of unfinished commands): a herd of clients arriving together gets this many in,
    /// the rest answer 429 `order-rate-limited`.
    #[arg(long, env = "ORDERFLOW_ORDER_RATE_BURST", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub order_rate_burst: u32,

    /// Dashboard live feeds (SSE) one client may hold open at once; more answer 429.
    #[arg(long, env = "ORDERFLOW_MAX_STREAMS_PER_CLIENT", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams_per_client: u64,

    /// Dashboard banner: share (0–1) of the last minute's finished commands rejected for a
    /// conflict (version, stock, transition) above which the conflict-rate alert shows.
    #[arg(long, env = "ORDERFLOW_ALERT_CONFLICT_RATE", default_value_t = 0.10)]
    pub alert_conflict_rate: f64,

    /// Dashboard banner: seconds the oldest unpublished outbox event may wait.
    #[arg(long, env = "ORDERFLOW_ALERT_OUTBOX_LAG_SECS", default_value_t = 30.0)]
    pub alert_outbox_lag_secs: f64,

    /// Dashboard banner: seconds a partition's oldest unfinished command may wait.
    #[arg(
        long,
        env = "ORDERFLOW_ALERT_PARTITION_LAG_SECS",
        default_value_t = 60.0
    )]
    pub alert_partition_lag_secs: f64,

    /// Milliseconds after the broker's confirm that the API records it in PostgreSQL, with every
    /// other confirm due by then (the 202 does not wait for it). A command applied by then has
    /// its publish recorded by the worker, and costs the mark nothing; one still queued is
    /// marked, so that the relay does not republish it. Keep it well below the worker's
    /// `ORDERFLOW_REPUBLISH_AFTER_MS`. 0: as soon as the writer is free.
    #[arg(long, env = "ORDERFLOW_CONFIRM_MARK_DELAY_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub confirm_mark_delay_ms: u64,

    /// Seconds an API key's check is remembered (default 60). A change to clients reaches every
    /// API as a PostgreSQL notification (about a millisecond on one host) that empties the
    /// cache, and a revoked key may pass until then; nothing is cached while that connection is
    /// down. 0: every request reads the database, so a revoked key fails on the very next one.
    #[arg(long, env = "ORDERFLOW_KEY_CACHE_SECS", default_value_t = 60)]
    pub key_cache_secs: u64,

    /// Requests with a valid key in flight across the whole server; more are shed at once with
    /// 503. `/healthz`, `/readyz` and `/metrics` take no slot.
    #[arg(long, env = "ORDERFLOW_MAX_IN_FLIGHT", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: u64,

    /// Requests without a valid key (sign-in, the page, the OpenAPI document, wrong keys) in
    /// flight at once: a budget of their own, so that they never take a slot a client needs.
    #[arg(long, env = "ORDERFLOW_MAX_ANONYMOUS_IN_FLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_anonymous_in_flight: u64,

    /// Seconds before a request is abandoned with 503 (must exceed the 30 s longest long-poll).
    #[arg(long, env = "ORDERFLOW_REQUEST_TIMEOUT_SECS", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(31..))]
    pub request_timeout_secs: u64,

    /// Seconds an operator's dashboard session lasts after signing in (default 12 h); it ends
    /// sooner on sign-out or when the operator is disabled.
    #[arg(long, env = "ORDERFLOW_SESSION_TTL_SECS", default_value_t = 12 * 3600,
          value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    pub session_ttl_secs: u64,

    /// How long Idempotency-Keys are kept, in hours (at least 24).
    #[arg(long, env = "ORDERFLOW_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(24..))]
    pub idempotency_retention_hours: u32,
}

impl ApiConfig {
    /// Every option at its default, with these common settings and listen address (for tests
    /// and embedding; the defaults are the ones `--help` shows).
    pub fn with_defaults(common: CommonConfig, listen: &str) -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            api: ApiConfig,
        }
        use clap::Parser;
        let mut config = Defaults::parse_from([
            "orderflow-api",
            "--database-url",
            common.database_url.expose_secret(),
        ])
        .api;
        config.common = common;
        config.listen = listen.to_owned();
        config
    }
}

/// Pool connections the API holds for good: one `LISTEN` each for long-poll wake-ups, API-key
/// changes and the dashboard's feed.
const LISTENING_CONNECTIONS: u32 = 3;
/// The smallest pool the API can serve with: the listeners, plus requests, the confirm writer
/// and the key purge.
pub const MIN_POOL_SIZE: u32 = LISTENING_CONNECTIONS + 3;

/// The `application_name` of the API's sessions (its record writers': `records::RECORDS_SESSIONS`).
pub const API_SESSIONS: &str = "orderflow-api";

pub struct Application {
    listener: TcpListener,
    state: AppState,
    server_limits: ServerLimits,
    retention: Duration,
    shutdown: CancellationToken,
    /// The background tasks, stopped with the server.
    tasks: Tasks,
}

impl Application {
    /// Migrates the database, declares the topology and binds the listener. `shutdown` ends the
    /// server and every long-poll.
    pub async fn build(config: ApiConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let common = &config.common;
        anyhow::ensure!(
            common.db_pool_size >= MIN_POOL_SIZE,
            "ORDERFLOW_DB_POOL_SIZE is {}, too small to serve: the API keeps {LISTENING_CONNECTIONS} \
             connections listening for notifications (long-poll wake-ups, API-key changes, the \
             dashboard's feed) and needs at least {} more for requests; set it to at least \
             {MIN_POOL_SIZE}",
            common.db_pool_size,
            MIN_POOL_SIZE - LISTENING_CONNECTIONS
        );
        // Before any series is touched, so that none goes to the no-op recorder.
        orderflow_runtime::telemetry::prometheus();
        crate::metrics::register();
        // Named, so that an operator tells the API's sessions from the workers' in pg_stat_activity.
        let pool = db::named_pool(
            common.database_url.expose_secret(),
            common.db_pool_size,
            API_SESSIONS,
        )?;
        // sqlx's migrator takes an advisory lock: several APIs starting together are fine.
        db::MIGRATOR
            .run(&pool)
            .await
            .context("applying database migrations")?;

        // The count is the database's (ORDERFLOW_PARTITIONS only seeds a new deployment's); it
        // may grow while this process runs (`partitions grow`), and the listener follows it.
        let layout = layout::ensure(&pool, common.partitions)
            .await
            .context("reading the partition layout")?;
        let topology = Topology {
            namespace: common.namespace.clone(),
            partitions: layout.partitions(),
            queue_max_length: common.queue_max_length,
        };
        let amqp = amqp::pool(
            common.amqp_url.expose_secret(),
            &format!("orderflow-api {}", common.namespace),
        )
        .map_err(|e| anyhow::anyhow!("AMQP_URL: {e}"))?;
        let publisher = Publisher::new(amqp);
        let channel = publisher
            .channel()
            .await
            .context("connecting to RabbitMQ")?;
        orderflow_messaging::answered("declaring the topology", topology.declare(&channel))
            .await
            .context("declaring the RabbitMQ topology")?;

        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let mut tasks = Tasks::new();
        let state = AppState::new(Shared {
            webhook_allow_private: common.webhook_allow_private,
            waiters: Waiters::start(
                &mut tasks,
                pool.clone(),
                &[orderflow_storage::COMMAND_DONE_CHANNEL],
                shutdown.clone(),
            ),
            feeds: Waiters::start(
                &mut tasks,
                pool.clone(),
                &[orderflow_storage::CLIENT_EVENTS_CHANNEL],
                shutdown.clone(),
            ),
            gates: OrderGates::default(),
            confirms: Confirms::start(
                &mut tasks,
                pool.clone(),
                Duration::from_millis(config.confirm_mark_delay_ms),
                shutdown.clone(),
            ),
            records: Records::start(&mut tasks, common.database_url.expose_secret())?,
            db: pool,
            publisher: Arc::new(publisher),
            topology,
            layout: LayoutCell::new(layout),
            limits: Limits::new(
                RateLimit {
                    per_second: config.rate_limit_per_second,
                    burst: config.rate_limit_burst,
                },
                config.max_waits_per_client,
            )
            .with_max_streams(config.max_streams_per_client as usize)
            .with_max_pending_per_order(config.max_pending_per_order)
            .with_order_rate(config.order_rate_per_second, config.order_rate_burst),
            admission: Admission::new(
                config.max_in_flight as usize,
                config.max_anonymous_in_flight as usize,
            ),
            keys: Keys::new(Duration::from_secs(config.key_cache_secs)),
            sessions: Sessions::new(Duration::from_secs(config.session_ttl_secs)),
            hub: Hub::new(Thresholds {
                conflict_rate: config.alert_conflict_rate,
                outbox_lag_secs: config.alert_outbox_lag_secs,
                partition_lag_secs: config.alert_partition_lag_secs,
            }),
            shutdown: shutdown.clone(),
        });
        let server_limits = ServerLimits {
            request_timeout: Duration::from_secs(config.request_timeout_secs),
        };
        Ok(Self {
            listener,
            state,
            server_limits,
            retention: Duration::from_secs(u64::from(config.idempotency_retention_hours) * 3600),
            shutdown,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
            .port()
    }

    /// Serves until the shutdown token fires, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            server_limits,
            retention,
            shutdown,
            mut tasks,
        } = self;
        tasks.spawn(
            "idempotency key purge",
            purge_idempotency_keys(state.db.clone(), retention, shutdown.clone()),
        );
        follow_settings(&mut tasks, &state, shutdown.clone());
        state.hub.start(&mut tasks, state.clone(), shutdown.clone());
        tracing::info!(address = %listener.local_addr()?, "orderflow API listening");
        crate::serve::serve(
            listener,
            routes::router(state, server_limits),
            shutdown.clone(),
        )
        .await;
        // The connections are closed; the background tasks stop on the same signal (the confirm
        // writer once the last request's handle is gone).
        tasks
            .join(&shutdown, TASKS_GRACE)
            .await
            .context("an API task panicked")?;
        tracing::info!("API stopped");
        Ok(())
    }
}

/// How long a stopping API waits for its background tasks after its connections are closed.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// Deletes Idempotency-Keys past their retention, hourly.
async fn purge_idempotency_keys(
    db: sqlx::PgPool,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match db::idempotency::purge_older_than(&db, retention.as_secs() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
    }
}

/// One listener for what every API process must follow at once: changes to clients (the key
/// cache, live feeds), to operators and their sessions (live feeds) and growths of the
/// partition count (the routing of new commands).
fn follow_settings(tasks: &mut Tasks, state: &AppState, shutdown: CancellationToken) {
    let keys = state.keys.clone();
    let sessions = state.sessions.clone();
    let layout = state.layout.clone();
    let db = state.db.clone();
    crate::notifications::spawn(
        tasks,
        state.db.clone(),
        &[
            CLIENTS_CHANNEL,
            OPERATORS_CHANNEL,
            layout::PARTITIONS_CHANNEL,
        ],
        shutdown,
        move |notice| {
            let grown = match &notice {
                Notice::Notification { channel, .. } if channel == layout::PARTITIONS_CHANNEL => {
                    true
                }
                Notice::Notification { channel, .. } if channel == OPERATORS_CHANNEL => {
                    sessions.notice(&notice);
                    false
                }
                // Back after a loss: a growth may have been missed meanwhile.
                Notice::Listening => {
                    keys.notice(&notice);
                    sessions.notice(&notice);
                    true
                }
                Notice::Lost => {
                    keys.notice(&notice);
                    sessions.notice(&notice);
                    false
                }
                _ => {
                    keys.notice(&notice);
                    false
                }
            };
            if !grown {
                return;
            }
            let (layout, db) = (layout.clone(), db.clone());
            tokio::spawn(async move {
                if let Err(e) = layout.refresh(&db).await {
                    tracing::warn!(error = %e, "could not read the grown partition layout");
                }
            });
        },
    );
}
