//! A test's own stack: a fresh database (a copy of the migrated template) and a fresh queue
//! namespace, an admin client and an ordinary one, and the real API and workers in-process
//! (`Application::build` on port 0, `Worker::build` with its metrics on port 0), each with the
//! settings the test changes. Dropping it stops them and removes the database and the namespace.

mod producer;

#[cfg(feature = "api")]
mod dashboard;
#[cfg(feature = "api")]
mod http;
#[cfg(feature = "api")]
mod refusals;

#[cfg(feature = "api")]
pub use dashboard::{SignedIn, SseFrame, read_frames, read_sse};
#[cfg(feature = "api")]
pub use refusals::{Writes, problem};

use crate::{broker, database, servers};
use lapin::options::ConfirmSelectOptions;
use orderflow_domain::ClientId;
use orderflow_messaging::Topology;
use orderflow_runtime::config::CommonConfig;
use orderflow_storage::clients;
use sqlx::PgPool;
#[cfg(any(feature = "api", feature = "worker"))]
use {orderflow_runtime::shutdown::CancellationToken, std::sync::Arc, std::time::Duration};

#[cfg(feature = "api")]
use orderflow_api::{ApiConfig, Application};
#[cfg(feature = "worker")]
use {
    crate::{Scrape, wait_for},
    orderflow_worker::{Worker, WorkerConfig},
};

/// The partitions of a stack unless [`StackBuilder::partitions`] says otherwise.
pub const DEFAULT_PARTITIONS: u16 = 4;

#[cfg(any(feature = "api", feature = "worker"))]
type Task = tokio::task::JoinHandle<anyhow::Result<()>>;
#[cfg(feature = "api")]
type ApiChange = Arc<dyn Fn(&mut ApiConfig) + Send + Sync>;
#[cfg(feature = "worker")]
type WorkerChange = Arc<dyn Fn(&mut WorkerConfig) + Send + Sync>;

/// What a [`Stack`] is made of, and with which settings. Settings are changes to the defaults
/// (`ApiConfig::with_defaults`, `WorkerConfig::with_defaults`: the binaries' own, listening on
/// free ports), applied in the order given.
#[must_use = "nothing runs until `.start()` is awaited"]
pub struct StackBuilder {
    partitions: u16,
    queue_max_length: i64,
    #[cfg(feature = "api")]
    api: bool,
    #[cfg(feature = "api")]
    api_changes: Vec<ApiChange>,
    #[cfg(feature = "worker")]
    worker: bool,
    #[cfg(feature = "worker")]
    worker_changes: Vec<WorkerChange>,
}

impl StackBuilder {
    /// The namespace's partitions, for every process of the stack (4 unless set).
    pub fn partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions;
        self
    }

    /// Every partition queue's `x-max-length`, for every process of the stack (100,000 unless
    /// set).
    pub fn queue_max_length(mut self, max: i64) -> Self {
        self.queue_max_length = max;
        self
    }

    /// Run the API.
    #[cfg(feature = "api")]
    pub fn api(mut self) -> Self {
        self.api = true;
        self
    }

    /// A change to the API's settings.
    #[cfg(feature = "api")]
    pub fn api_config(mut self, change: impl Fn(&mut ApiConfig) + Send + Sync + 'static) -> Self {
        self.api_changes.push(Arc::new(change));
        self
    }

    /// Run a worker from the start (more, or a later one: [`Stack::start_worker`]).
    #[cfg(feature = "worker")]
    pub fn worker(mut self) -> Self {
        self.worker = true;
        self
    }

    /// A change to the settings of every worker of the stack, whenever it starts.
    #[cfg(feature = "worker")]
    pub fn worker_config(
        mut self,
        change: impl Fn(&mut WorkerConfig) + Send + Sync + 'static,
    ) -> Self {
        self.worker_changes.push(Arc::new(change));
        self
    }

    /// Makes the database and the namespace (declared, so that messages can be published before
    /// any worker runs), the two clients, then starts the API and the worker if asked for.
    pub async fn start(self) -> Stack {
        orderflow_runtime::telemetry::init("text");
        #[cfg(feature = "api")]
        assert!(
            self.api || self.api_changes.is_empty(),
            "API settings were given but no API runs: add `.api()`"
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (database_url, database_name) =
            database::create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
        let topology = Topology {
            namespace: format!("test.{id}"),
            partitions: self.partitions,
            queue_max_length: self.queue_max_length,
        };
        let db = PgPool::connect(&database_url)
            .await
            .expect("connecting to the test database");
        let (_, admin_key) = clients::create(&db, "test-admin", true).await.unwrap();
        let (client, key) = clients::create(&db, "test-client", false).await.unwrap();
        // The tests' direct producer publishes as the broker user of AMQP_URL, for this client.
        orderflow_storage::producers::grant(&db, &servers::amqp_user(), client.id)
            .await
            .unwrap();
        let (connection, publisher) = broker::channel().await;
        topology
            .declare(&publisher)
            .await
            .expect("declaring the namespace");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();

        #[allow(unused_mut)]
        let mut stack = Stack {
            db,
            database_url,
            database_name,
            namespace: topology.namespace.clone(),
            topology,
            admin_key,
            key,
            client_id: client.id,
            http: reqwest::Client::new(),
            connection,
            publisher,
            #[cfg(feature = "api")]
            api: None,
            #[cfg(feature = "api")]
            api_changes: self.api_changes,
            #[cfg(feature = "worker")]
            workers: Vec::new(),
            #[cfg(feature = "worker")]
            workers_started: 0,
            #[cfg(feature = "worker")]
            worker_changes: self.worker_changes,
        };
        #[cfg(feature = "api")]
        if self.api {
            stack.start_api().await;
        }
        #[cfg(feature = "worker")]
        if self.worker {
            stack.start_worker().await;
        }
        stack
    }
}

/// A running test stack (see the module). Its fields are what tests read directly.
pub struct Stack {
    /// A pool on the test's database, for checks straight on the truth.
    pub db: PgPool,
    pub database_url: String,
    database_name: String,
    /// `test.<id>`: every queue and exchange of the stack is named under it.
    pub namespace: String,
    pub topology: Topology,
    /// The key of `test-admin`, an admin client.
    pub admin_key: String,
    /// The key of `test-client`, an ordinary client: the one `Stack::request` sends and
    /// direct producer messages ([`Stack::message`]) come from.
    pub key: String,
    pub client_id: ClientId,
    pub http: reqwest::Client,
    /// The stack's own broker connection, and a confirm-mode channel on it for publishing.
    connection: lapin::Connection,
    publisher: lapin::Channel,
    #[cfg(feature = "api")]
    api: Option<RunningApi>,
    #[cfg(feature = "api")]
    api_changes: Vec<ApiChange>,
    #[cfg(feature = "worker")]
    workers: Vec<RunningWorker>,
    /// How many workers this stack started, for their default names.
    #[cfg(feature = "worker")]
    workers_started: usize,
    #[cfg(feature = "worker")]
    worker_changes: Vec<WorkerChange>,
}

#[cfg(feature = "api")]
struct RunningApi {
    address: String,
    shutdown: CancellationToken,
    task: Option<Task>,
}

#[cfg(feature = "worker")]
struct RunningWorker {
    name: String,
    metrics: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: Task,
}

#[cfg(feature = "worker")]
impl RunningWorker {
    /// Stops it gracefully and waits until it has (30 s at most), checking it ended without an
    /// error.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the worker stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

impl Stack {
    /// Nothing runs but the database and the namespace until the builder says what does.
    pub fn builder() -> StackBuilder {
        StackBuilder {
            partitions: DEFAULT_PARTITIONS,
            queue_max_length: 100_000,
            #[cfg(feature = "api")]
            api: false,
            #[cfg(feature = "api")]
            api_changes: Vec::new(),
            #[cfg(feature = "worker")]
            worker: false,
            #[cfg(feature = "worker")]
            worker_changes: Vec::new(),
        }
    }

    /// Doubles the namespace's partition count while the stack runs, as `orderflow-api
    /// partitions grow` does; the stack's own routing (`publish`, `order_in`) then follows it,
    /// and its teardown removes the new queues too. Returns the new count.
    #[cfg(feature = "api")]
    pub async fn grow_partitions(&mut self) -> u16 {
        let (_, after) = orderflow_api::partitions::grow(&self.common_config())
            .await
            .expect("growing the partitions");
        self.topology.partitions = after.partitions();
        after.partitions()
    }

    /// The name of the test's database.
    pub fn database_name(&self) -> &str {
        &self.database_name
    }

    /// The settings both binaries share, for this stack's database, broker and namespace.
    pub fn common_config(&self) -> CommonConfig {
        let mut common = CommonConfig::for_tests(
            self.database_url.clone(),
            self.namespace.clone(),
            self.topology.partitions,
        );
        common.amqp_url = servers::amqp_url().into();
        common.queue_max_length = self.topology.queue_max_length;
        common
    }

    /// The API's settings in this stack: the defaults on port 0, with the builder's changes.
    #[cfg(feature = "api")]
    pub fn api_config(&self) -> ApiConfig {
        let mut config = ApiConfig::with_defaults(self.common_config(), "127.0.0.1:0");
        for change in &self.api_changes {
            change(&mut config);
        }
        config
    }

    #[cfg(feature = "api")]
    async fn start_api(&mut self) {
        let shutdown = CancellationToken::new();
        let app = Application::build(self.api_config(), shutdown.clone())
            .await
            .expect("the API builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let task = tokio::spawn(app.run_until_stopped());
        self.api = Some(RunningApi {
            address,
            shutdown,
            task: Some(task),
        });
    }

    /// Shuts the API down gracefully; true if it stopped within `limit`.
    #[cfg(feature = "api")]
    pub async fn stop_api(&mut self, limit: Duration) -> bool {
        let api = self.api.as_mut().expect("the stack runs an API");
        api.shutdown.cancel();
        let task = api.task.take().expect("the API runs");
        match tokio::time::timeout(limit, task).await {
            Ok(result) => {
                result.unwrap().unwrap();
                true
            }
            Err(_) => false,
        }
    }

    /// A worker's settings in this stack: the defaults (metrics on port 0), with the builder's
    /// changes.
    #[cfg(feature = "worker")]
    pub fn worker_config(&self) -> WorkerConfig {
        let mut config = WorkerConfig::with_defaults(self.common_config());
        for change in &self.worker_changes {
            change(&mut config);
        }
        config
    }

    /// Starts another worker (the real `Worker`) with the stack's worker settings.
    #[cfg(feature = "worker")]
    pub async fn start_worker(&mut self) {
        self.start_worker_with(|_| {}).await;
    }

    /// Starts another worker with the stack's worker settings and then `change`.
    #[cfg(feature = "worker")]
    pub async fn start_worker_with(&mut self, change: impl FnOnce(&mut WorkerConfig)) {
        let mut config = self.worker_config();
        // Workers of one process would share the default name (host:pid), and a name is one
        // member of the live workers: each gets its own unless the test names it.
        if config.worker_name.is_none() {
            config.worker_name = Some(format!("test-worker-{}", self.workers_started));
        }
        self.workers_started += 1;
        change(&mut config);
        let worker = Worker::build(config).await.expect("the worker builds");
        let name = worker.name().to_owned();
        let metrics = worker.metrics_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        self.workers.push(RunningWorker {
            name,
            metrics,
            shutdown,
            task,
        });
    }

    /// Stops every worker gracefully and waits until each has (30 s at most), checking each
    /// ended without an error.
    #[cfg(feature = "worker")]
    pub async fn stop_workers(&mut self) {
        assert!(!self.workers.is_empty(), "a worker is running");
        for worker in std::mem::take(&mut self.workers) {
            worker.stop().await;
        }
    }

    /// Stops the worker named `name` gracefully and waits until it has (30 s at most), checking
    /// it ended without an error.
    #[cfg(feature = "worker")]
    pub async fn stop_worker(&mut self, name: &str) {
        let at = self
            .workers
            .iter()
            .position(|w| w.name == name)
            .unwrap_or_else(|| panic!("no running worker is named {name:?}"));
        self.workers.remove(at).stop().await;
    }

    /// The name of the (first) running worker, as in `worker_partitions`.
    #[cfg(feature = "worker")]
    pub fn worker_name(&self) -> String {
        self.first_worker().name.clone()
    }

    /// The (first) running worker's `/metrics` URL.
    #[cfg(feature = "worker")]
    pub fn worker_metrics_url(&self) -> String {
        format!("http://{}/metrics", self.first_worker().metrics)
    }

    /// One scrape of the (first) worker's `/metrics`, which must answer Prometheus text 0.0.4.
    #[cfg(feature = "worker")]
    pub async fn worker_metrics(&self) -> Scrape {
        let response = self
            .http
            .get(self.worker_metrics_url())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "text/plain; version=0.0.4");
        Scrape::parse(&response.text().await.unwrap())
    }

    /// Scrapes the worker's `/metrics` until `check` holds; returns that scrape. Panics after
    /// 20 s with `what` and the last scrape.
    #[cfg(feature = "worker")]
    pub async fn worker_metrics_until(
        &self,
        what: &str,
        check: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        wait_for(what)
            .every(Duration::from_millis(100))
            .until(|| async {
                let scrape = self.worker_metrics().await;
                if check(&scrape) {
                    Ok(scrape)
                } else {
                    Err(format!("the scrape\n{}", scrape.text))
                }
            })
            .await
    }

    #[cfg(feature = "worker")]
    fn first_worker(&self) -> &RunningWorker {
        self.workers.first().expect("a worker is running")
    }
}

impl Drop for Stack {
    /// Stops the API and the workers, and removes the database and every queue and exchange of
    /// the namespace.
    fn drop(&mut self) {
        #[cfg(feature = "api")]
        if let Some(api) = &self.api {
            api.shutdown.cancel();
        }
        #[cfg(feature = "worker")]
        for worker in &self.workers {
            worker.shutdown.cancel();
        }
        crate::remove(Some(self.topology.clone()), self.database_name.clone());
    }
}
