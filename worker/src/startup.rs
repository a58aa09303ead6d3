//! Building and running a worker process: configuration, the schema check, the topology, and
//! the tasks (one consumer per partition, the outbox relay, the command relay, the heartbeat,
//! the gauge sampler and the `/metrics` listener).

use crate::apply::Applier;
use crate::consumer::{Combiner, Context};
use crate::leases::{Holdings, Keeper, LeaseTiming};
use crate::monitor::Monitor;
use crate::payment::SimulatedGateway;
use crate::{command_relay, metrics, outbox};
use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable};
use clap::Parser;
use orderflow_contract::partition::MAX_PARTITIONS;
use orderflow_messaging::{self as amqp, Publisher, SharedConnection, Topology};
use orderflow_runtime::config::CommonConfig;
use orderflow_runtime::config::ExposeSecret;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::layout::{self, LayoutCell};
use orderflow_storage::{self as db, SchemaError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// orderflow's worker: consumes the partition queues and applies each command to PostgreSQL in
/// one transaction, relays status events, and republishes commands the broker never confirmed.
#[derive(Parser, Clone, Debug)]
#[command(name = "orderflow-worker", version)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Messages the broker may deliver ahead of the one being applied (per partition). They are
    /// still applied in order, acked after their commit. It also bounds a graceful move: the
    /// old holder finishes everything it was given before it releases the partition (nothing is
    /// redelivered), so the window is what a busy partition's drain must work through (32 made
    /// a graceful move 2–3 times longer: 2026-12-03, `orderflow-bench audit --faults
    /// scale-out-in`). 16, not 8: with 8 a partition sat idle between its commit and the
    /// broker's next deliveries, and the worker applied 0.69–0.75 of naive sync's rate against
    /// 0.88–0.89 with 16 (2026-12-05, release, `orderflow-bench perf --workloads uniform
    /// --systems naive,orderflow --orderflow-env ORDERFLOW_PREFETCH=N`, two runs each).
    #[arg(long, env = "ORDERFLOW_PREFETCH", default_value_t = 16)]
    pub prefetch: u16,

    /// Most messages of a partition applied in one transaction: those already delivered when
    /// the previous transaction ends (never more than the prefetch), applied in order and acked
    /// together after the commit.
    /// 1 applies every message in its own transaction.
    #[arg(long, env = "ORDERFLOW_BATCH_MAX", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_max: u16,

    /// Combined transactions applied at once, at most: the runs of ready messages that the
    /// partitions have in hand together are applied in one transaction (one fence, one commit
    /// for all of them), each writer on a connection of its own. While one writer's transaction
    /// keeps up, it is the only one (the larger a transaction, the less each command costs);
    /// runs in hand wait for it at most `ORDERFLOW_APPLY_SPILL_AFTER_MS` (it may be stuck on a
    /// lock, or a slow statement), then another writer starts a transaction beside it. 0: every
    /// partition applies its runs in transactions of its own.
    #[arg(long, env = "ORDERFLOW_APPLY_WRITERS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(0..=16))]
    pub apply_writers: u16,

    /// Milliseconds runs in hand wait for the combined transaction in flight before a writer
    /// starts one beside it (see `ORDERFLOW_APPLY_WRITERS`). Above what a busy
    /// transaction takes (p99 35–50 ms in the `max` phase of `orderflow-bench perf`), so that
    /// under load the transactions stay one at a time and large.
    #[arg(long, env = "ORDERFLOW_APPLY_SPILL_AFTER_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub apply_spill_after_ms: u64,

    /// Dead-letter a redelivered message (and fail its command) once workers started applying it
    /// more than this many times without finishing. Below the queue's own delivery limit, so the
    /// reason is recorded.
    #[arg(long, env = "ORDERFLOW_POISON_AFTER_DELIVERIES", default_value_t = 5)]
    pub poison_after_deliveries: i64,

    /// Republish recorded commands the broker has not confirmed after this many milliseconds.
    #[arg(long, env = "ORDERFLOW_REPUBLISH_AFTER_MS", default_value_t = 5000)]
    pub republish_after_ms: u64,

    /// Fail (and dead-letter) a command parked this many milliseconds waiting for an earlier
    /// command of its order that never arrived (a direct producer's follow-up whose create was
    /// lost or never sent).
    #[arg(long, env = "ORDERFLOW_PARK_TIMEOUT_MS", default_value_t = 30000)]
    pub park_timeout_ms: u64,

    /// Days the clients' event feeds (`GET /v1/events`) keep an event; the relays delete older
    /// ones every minute, and a client resuming from before that is told its history is gone.
    #[arg(long, env = "ORDERFLOW_EVENT_RETENTION_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub event_retention_days: u32,

    /// The simulated payment gateway declines captures above this amount (cents).
    #[arg(long, env = "ORDERFLOW_PAYMENT_DECLINE_OVER_CENTS")]
    pub payment_decline_over_cents: Option<i64>,

    /// Address of the Prometheus endpoint (`GET /metrics`). Port 0 picks a free port. Several
    /// workers on one host each need their own.
    #[arg(
        long,
        env = "ORDERFLOW_METRICS_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub metrics_listen: SocketAddr,

    /// A partition lease not renewed for this many milliseconds may be taken over by another
    /// worker (and its holder stops consuming the partition half a second before). Renewed every
    /// tenth of it.
    #[arg(long, env = "ORDERFLOW_LEASE_TTL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1000..))]
    pub lease_ttl_ms: u64,

    /// Most time a partition handed over (or a worker stopping) may take to finish and ack the
    /// messages it was given. Past it, the transaction in flight still finishes and is acked, and
    /// the messages not yet started go back to the broker unopened (redelivered to the next
    /// holder, never applied twice); if even that takes this long again, the consumer is
    /// abandoned (its transaction rolled back).
    #[arg(long, env = "ORDERFLOW_DRAIN_LIMIT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub drain_limit_ms: u64,

    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookConfig,

    /// Name of this worker in the partition heartbeat (`worker_partitions`) and the dashboard
    /// [default: <hostname>:<pid>]
    #[arg(long, env = "ORDERFLOW_WORKER_NAME")]
    pub worker_name: Option<String>,
}

impl WorkerConfig {
    /// Every option at its default, with the given common settings and the metrics endpoint on
    /// a free port: for tests and embedding (`WorkerConfig { prefetch: 4, ..with_defaults(c) }`
    /// keeps compiling when options are added).
    pub fn with_defaults(common: CommonConfig) -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            worker: WorkerConfig,
        }
        let mut config = Defaults::parse_from([
            "orderflow-worker",
            "--database-url",
            common.database_url.expose_secret(),
        ])
        .worker;
        config.common = common;
        config.metrics_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}

/// A worker ready to run.
pub struct Worker {
    config: WorkerConfig,
    context: Arc<Context>,
    holdings: Arc<Holdings>,
    /// The lease keeper's own connections.
    lease_db: sqlx::PgPool,
    relay_publisher: Arc<Publisher>,
    /// What webhook deliveries go out with (built at startup: a TLS setup that fails, fails it).
    webhook_client: crate::webhooks::HttpClient,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
}

/// The smallest pool a worker can work with: the outbox listener, an apply and a relay pass.
pub const MIN_POOL_SIZE: u32 = 3;

/// Longest a statement of the worker's pool may run or wait for a lock. Nothing it does comes
/// near it (an apply statement takes milliseconds); a statement past it is stuck behind
/// something (a lock held by a session that will not let go), and is cancelled and retried,
/// logged, instead of stalling its partition without a word.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// PostgreSQL ends a worker session that sits idle inside a transaction this long: a worker
/// stopped mid-transaction (SIGSTOP, a frozen VM) then lets go of its lease row (which it holds
/// FOR SHARE from its fence on) and of its row locks, so that another worker can take its
/// partitions over, instead of blocking that take until it wakes. Above the longest a worker
/// waits inside a transaction on purpose: a relay's publish, channel and confirms included
/// (`messaging::CONFIRM_TIMEOUT`, 5 s).
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(6);

impl Worker {
    /// Connects, checks the schema (refusing an old one) and declares the topology. Waits for
    /// PostgreSQL and RabbitMQ to be reachable rather than failing when they are (re)starting.
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let common = &config.common;
        anyhow::ensure!(
            common.db_pool_size >= MIN_POOL_SIZE,
            "ORDERFLOW_DB_POOL_SIZE is {}, too small to work: the worker keeps one connection \
             listening for the outbox and needs at least {} more to apply commands and relay \
             events; set it to at least {MIN_POOL_SIZE}",
            common.db_pool_size,
            MIN_POOL_SIZE - 1
        );
        let worker_name = config
            .worker_name
            .clone()
            .unwrap_or_else(default_worker_name);
        let db = db::pool_releasing_idle(
            common.database_url.expose_secret(),
            common.db_pool_size,
            IDLE_IN_TRANSACTION,
            STATEMENT_TIMEOUT,
            &db::leases::worker_sessions_name(&worker_name),
        )?;
        wait_for("PostgreSQL", || async {
            match db::check_schema(&db).await {
                Err(SchemaError::Db(e)) => Err(anyhow::Error::from(e)),
                other => Ok(other),
            }
        })
        .await?
        .context("refusing to start")?;
        // The count is the database's (ORDERFLOW_PARTITIONS only seeds a new deployment's); the
        // lease keeper follows its growth.
        let layout = wait_for("PostgreSQL", || async {
            Ok(layout::ensure(&db, common.partitions).await?)
        })
        .await?;

        let topology = Topology {
            namespace: common.namespace.clone(),
            partitions: layout.partitions(),
            queue_max_length: common.queue_max_length,
        };
        let pool = amqp::pool(
            common.amqp_url.expose_secret(),
            &format!("orderflow-worker {} {worker_name}", common.namespace),
        )
        .map_err(|e| anyhow::anyhow!("AMQP_URL: {e}"))?;
        wait_for("RabbitMQ", || async {
            let connection = pool.get().await?;
            let channel = amqp::open_channel(&connection).await?;
            amqp::answered("declaring the topology", topology.declare(&channel)).await?;
            let _ =
                amqp::answered("closing a channel", channel.close(200, "declared".into())).await;
            anyhow::Ok(())
        })
        .await?;

        // Bound here, so that a taken port fails the start and tests learn the port before running.
        let metrics_listener = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "binding the metrics endpoint {} (set --metrics-listen / ORDERFLOW_METRICS_LISTEN; port 0 picks a free one)",
                    config.metrics_listen
                )
            })?;
        let metrics_addr = metrics_listener.local_addr()?;
        // Installs the process's recorder before any series handle is taken.
        orderflow_runtime::telemetry::prometheus();
        crate::metrics::register();
        let holdings = Arc::new(Holdings::new(worker_name.clone(), MAX_PARTITIONS));
        // Two connections of its own: a renewal never waits behind the applies.
        // A lease round is given up after half the TTL (see `Keeper::run`); its statements end
        // with it in PostgreSQL too, instead of waiting on with the lease rows locked.
        let lease_db = db::pool_releasing_idle(
            common.database_url.expose_secret(),
            2,
            IDLE_IN_TRANSACTION,
            Duration::from_millis(config.lease_ttl_ms / 2),
            &format!("{} leases", db::leases::worker_sessions_name(&worker_name)),
        )?;
        let applier = Applier {
            db,
            gateway: Arc::new(SimulatedGateway {
                decline_over_cents: config.payment_decline_over_cents,
            }),
            layout: LayoutCell::new(layout.clone()),
            fence: Some(holdings.clone()),
        };
        let combiner = if config.apply_writers > 0 {
            // The writers' own connections, planning their set-based statements once.
            let writers_db = db::pool_releasing_idle_with_generic_plans(
                common.database_url.expose_secret(),
                u32::from(config.apply_writers),
                IDLE_IN_TRANSACTION,
                STATEMENT_TIMEOUT,
                &db::leases::worker_sessions_name(&worker_name),
            )?;
            let applier = Applier {
                db: writers_db,
                ..applier.clone()
            };
            Some(Combiner::start(
                applier,
                usize::from(config.apply_writers),
                Duration::from_millis(config.apply_spill_after_ms),
            ))
        } else {
            None
        };
        let context = Arc::new(Context {
            applier,
            topology,
            publisher: Publisher::new(pool.clone()),
            connection: SharedConnection::new(
                common.amqp_url.expose_secret(),
                &format!(
                    "orderflow-worker {} {worker_name} consumers",
                    common.namespace
                ),
            )
            .map_err(|e| anyhow::anyhow!("AMQP_URL: {e}"))?,
            prefetch: config.prefetch,
            batch_max: usize::from(config.batch_max),
            combiner,
            poison_after_deliveries: config.poison_after_deliveries,
            monitor: Arc::new(Monitor::new(worker_name, layout.partitions())),
        });
        let webhook_client =
            crate::webhooks::http_client(&config.webhooks, common.webhook_allow_private)?;
        Ok(Self {
            webhook_client,
            config,
            context,
            holdings,
            lease_db,
            relay_publisher: Arc::new(Publisher::new(pool)),
            metrics_listener,
            metrics_addr,
        })
    }

    /// Where `GET /metrics` is served (the bound port when configured with port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The name this worker heartbeats under.
    pub fn name(&self) -> &str {
        self.context.monitor.worker()
    }

    /// Runs every task until `shutdown` fires, then waits for each to finish what it holds.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = Tasks::new();
        let ttl = Duration::from_millis(self.config.lease_ttl_ms);
        let keeper = Keeper::new(
            self.context.clone(),
            self.holdings.clone(),
            self.lease_db.clone(),
            LeaseTiming {
                ttl,
                renew_every: ttl / 10,
                drain_limit: Duration::from_millis(self.config.drain_limit_ms),
            },
        );
        let stop = shutdown.clone();
        tasks.spawn("lease keeper", async move {
            if let Err(e) = keeper.run(stop.clone()).await {
                tracing::error!(error = %e, "the lease keeper stopped; stopping the worker");
                stop.cancel();
            }
        });
        let db = self.context.applier.db.clone();
        let (publisher, topology) = (self.relay_publisher.clone(), self.context.topology.clone());
        let stop = shutdown.clone();
        let retention = Duration::from_secs(u64::from(self.config.event_retention_days) * 86_400);
        let feed_grew = Arc::new(tokio::sync::Notify::new());
        let grew = feed_grew.clone();
        tasks.spawn("outbox relay", async move {
            outbox::run_outbox_relay(db, &publisher, &topology, retention, &grew, stop).await
        });
        let db = self.context.applier.db.clone();
        let (publisher, topology) = (self.relay_publisher.clone(), self.context.topology.clone());
        let after = Duration::from_millis(self.config.republish_after_ms.max(100));
        let park_timeout = Duration::from_millis(self.config.park_timeout_ms);
        let (stop, holdings) = (shutdown.clone(), self.holdings.clone());
        tasks.spawn("command relay", async move {
            command_relay::run_command_relay(
                db,
                &publisher,
                &topology,
                after,
                park_timeout,
                Some(&holdings),
                stop,
            )
            .await
        });
        let (context, db, stop) = (
            self.context.clone(),
            self.context.applier.db.clone(),
            shutdown.clone(),
        );
        tasks.spawn("heartbeat", async move {
            context.monitor.run_heartbeat(db, stop).await
        });
        let (context, stop) = (self.context.clone(), shutdown.clone());
        tasks.spawn("consumer watchdog", async move {
            context.monitor.run_watchdog(stop).await
        });
        let (context, db, stop) = (
            self.context.clone(),
            self.context.applier.db.clone(),
            shutdown.clone(),
        );
        tasks.spawn("partition sampler", async move {
            let (monitor, connection, topology) =
                (&context.monitor, &context.connection, &context.topology);
            monitor.run_sampler(db, connection, topology, stop).await
        });
        let deliverer = crate::webhooks::Deliverer {
            db: self.context.applier.db.clone(),
            config: self.config.webhooks.clone(),
            allow_private: self.config.common.webhook_allow_private,
            client: self.webhook_client.clone(),
            feed_grew,
        };
        tasks.spawn("webhook deliveries", deliverer.run(shutdown.clone()));
        tasks.spawn(
            "metrics listener",
            metrics::serve(self.metrics_listener, shutdown.clone()),
        );
        tracing::info!(
            partitions = self.config.common.partitions,
            namespace = self.config.common.namespace,
            worker = self.context.monitor.worker(),
            metrics = %self.metrics_addr,
            "worker running"
        );
        // Until shutdown, and then for at most the grace period: a task still busy after it is
        // aborted. Nothing is lost by that: an unacked message is redelivered and its
        // transaction either committed or not.
        // The keeper's drain, then its give-back, each bounded by the drain limit.
        let grace = SHUTDOWN_GRACE.max(Duration::from_millis(self.config.drain_limit_ms) * 2);
        tasks
            .join(&shutdown, grace)
            .await
            .context("a worker task panicked")?;
        // The consumers are gone: say so now rather than leave `consuming` to go stale.
        let last = self.context.monitor.beat(&self.context.applier.db);
        match tokio::time::timeout(Duration::from_secs(5), last).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the last heartbeat failed"),
            Err(_) => tracing::warn!("the last heartbeat timed out"),
        }
        self.lease_db.close().await;
        self.context.connection.close().await;
        self.context.publisher.pool().close();
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// How long a stopping worker waits at least for its tasks to finish what they hold (twice
/// `ORDERFLOW_DRAIN_LIMIT_MS` when that is longer).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// `<hostname>:<pid>`: unique among the workers of a host, recognisable on the dashboard.
fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}:{}", std::process::id())
}

/// Retries `attempt` with exponential backoff (100 ms growing to 5 s, with jitter) until it
/// succeeds, logging what it waits for; gives up after two minutes.
async fn wait_for<T, F, Fut>(what: &str, attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(Duration::from_secs(120)))
        .without_max_times()
        .with_jitter();
    attempt
        .retry(backoff)
        .notify(|e: &anyhow::Error, _| tracing::warn!(error = %e, "waiting for {what}"))
        .await
        .map_err(|e| e.context(format!("{what} unreachable for 2 minutes")))
}
