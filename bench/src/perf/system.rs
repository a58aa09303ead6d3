//! A system under test, set up and torn down: its fresh database (migrated, with a client and the
//! seeded orders), then what it takes to send it commands — the applier in-process (raw), the
//! baseline server (naive) or the spawned API and workers (orderflow).

use super::commits::Commits;
use super::config::{PerfConfig, System};
use super::database::{self, Database};
use super::naive::NaiveServer;
use super::observe::Watched;
use super::stack::{Stack, StackExtra, StackSettings};
use super::target::{RAW_PRODUCER, RawTarget, Target};
use anyhow::Context as _;
use orderflow_contract::partition::Layout;
use orderflow_storage::clients;
use orderflow_storage::layout::LayoutCell;
use orderflow_worker::apply::Applier;
use orderflow_worker::payment::SimulatedGateway;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub struct Sut {
    pub system: System,
    pub target: Target,
    /// The bench's own connections to the system's database (drains, results, seeding).
    pub db: PgPool,
    pub database: Database,
    pub client: Uuid,
    /// The orders the uniform load draws from.
    pub orders: Arc<Vec<Uuid>>,
    /// Commands per second the system sustained in the uniform workload (once it ran).
    pub sustainable: Option<f64>,
    /// orderflow: when each command's commit was seen.
    pub commits: Option<Commits>,
    pub stack: Option<Stack>,
    naive: Option<NaiveServer>,
    /// The pool the system itself uses (raw, naive), closed at the end.
    own_pool: Option<PgPool>,
}

impl Sut {
    pub async fn start(config: &PerfConfig, system: System, run_id: &str) -> anyhow::Result<Self> {
        let name = format!("orderflow_perf_{run_id}_{}", system.name());
        let database = Database::create(&config.database_url, &name).await?;
        match Self::set_up(config, system, run_id, database).await {
            Ok(sut) => Ok(sut),
            Err((e, database)) => {
                database.drop_now().await;
                Err(e)
            }
        }
    }

    async fn set_up(
        config: &PerfConfig,
        system: System,
        run_id: &str,
        database: Database,
    ) -> Result<Self, (anyhow::Error, Database)> {
        let bench_pool = match PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&database.url)
            .await
        {
            Ok(pool) => pool,
            Err(e) => return Err((e.into(), database)),
        };
        let mut sut = Self {
            system,
            target: Target::http("http://127.0.0.1:0", "")
                .expect("a client without settings builds"),
            db: bench_pool,
            database,
            client: Uuid::nil(),
            orders: Arc::default(),
            sustainable: None,
            commits: None,
            stack: None,
            naive: None,
            own_pool: None,
        };
        match sut.prepare(config, run_id).await {
            Ok(()) => Ok(sut),
            Err(e) => {
                let database = sut.stop_keeping_database().await;
                Err((e, database))
            }
        }
    }

    async fn prepare(&mut self, config: &PerfConfig, run_id: &str) -> anyhow::Result<()> {
        let own_pool = || {
            orderflow_storage::pool(&self.database.url, config.pool_size)
                .context("opening the system's pool")
        };
        match self.system {
            System::Raw | System::Naive => {
                database::migrate(&self.db).await?;
                let (client, _) = clients::create(&self.db, "perf", true).await?;
                self.client = client.id.0;
                let pool = own_pool()?;
                self.target = if self.system == System::Raw {
                    // Its messages are a direct producer's: the worker records them only for a
                    // client their broker user is granted.
                    orderflow_storage::producers::grant(&self.db, RAW_PRODUCER, client.id).await?;
                    Target::Raw(Arc::new(RawTarget {
                        applier: Applier {
                            db: pool.clone(),
                            gateway: Arc::new(SimulatedGateway {
                                decline_over_cents: None,
                            }),
                            layout: LayoutCell::new(Layout::single(config.partitions)?),
                            // The ceiling holds no leases: its transactions are not fenced.
                            fence: None,
                        },
                        client: client.id,
                        partitions: config.partitions,
                    }))
                } else {
                    let server = NaiveServer::start(pool.clone(), self.client).await?;
                    let target = Target::http(&server.url, "naive")?;
                    self.naive = Some(server);
                    target
                };
                self.own_pool = Some(pool);
            }
            System::Orderflow => {
                let extra = StackExtra {
                    api_listen: None,
                    env: config.orderflow_env.clone(),
                };
                let stack = Stack::start(
                    StackSettings {
                        api_bin: config.api_bin.clone(),
                        worker_bin: config.worker_bin.clone(),
                        database_url: self.database.url.clone(),
                        amqp_url: config.amqp_url.clone(),
                        namespace: format!("perf.{run_id}"),
                        partitions: config.partitions,
                        pool_size: config.pool_size,
                        workers: config.workers,
                        log_dir: config.out_dir.join("logs"),
                    },
                    extra,
                )
                .await?;
                self.client = orderflow_storage::perf::client_named(&self.db, "perf")
                    .await?
                    .context("the stack made no client named perf")?;
                self.target = Target::http(&stack.url, &stack.key)?;
                self.stack = Some(stack);
                self.commits = Some(Commits::listen(&self.database.url).await?);
            }
        }
        let orders = database::seed_orders(&self.db, self.client, config.orders).await?;
        self.orders = Arc::new(orders);
        Ok(())
    }

    /// The processes whose memory and CPU the report shows.
    pub fn watched(&self) -> Vec<Watched> {
        let bench = match self.system {
            System::Orderflow => "bench (load generator)",
            System::Raw | System::Naive => "bench (load generator + system)",
        };
        let mut watched = vec![Watched {
            name: bench.into(),
            pid: std::process::id(),
        }];
        if let Some(stack) = &self.stack {
            watched.extend(
                stack
                    .processes()
                    .into_iter()
                    .map(|(name, pid)| Watched { name, pid }),
            );
        }
        watched
    }

    /// The rate the open-loop phases are scaled from.
    pub fn sustainable(&self, config: &PerfConfig) -> f64 {
        self.sustainable.unwrap_or(config.fallback_rate).max(1.0)
    }

    /// After an API restart, the target follows it.
    pub fn retarget(&mut self) -> anyhow::Result<()> {
        if let Some(stack) = &self.stack {
            self.target = Target::http(&stack.url, &stack.key)?;
        }
        Ok(())
    }

    /// Stops everything and drops the database.
    pub async fn stop(self) {
        let database = self.stop_keeping_database().await;
        database.drop_now().await;
    }

    async fn stop_keeping_database(self) -> Database {
        if let Some(server) = self.naive {
            server.stop().await;
        }
        if let Some(stack) = self.stack {
            stack.stop().await;
        }
        drop(self.commits);
        if let Some(pool) = self.own_pool {
            pool.close().await;
        }
        self.db.close().await;
        self.database
    }
}
