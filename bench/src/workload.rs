//! The workload phase: create the run's SKUs and stock, start every selected scenario with its
//! share of the client tasks, draw the progress bar, and wait for the deadline.

use crate::config::{AuditConfig, Scenario};
use crate::http::Api;
use crate::scenarios::{self, Ctx, direct_producer::Producer, hot_orders, task_rng};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Stock of the run's "plenty" SKU: more than any run can reserve.
const PLENTY: i64 = 1_000_000_000;

/// Runs the workload to its deadline. `run_id` names the run's SKUs.
pub async fn run(
    config: &AuditConfig,
    api: &Api,
    db: &sqlx::PgPool,
    run_id: &str,
) -> anyhow::Result<()> {
    let scarce: Vec<String> = (0..config.skus)
        .map(|i| format!("audit-{run_id}-{i}"))
        .collect();
    for sku in &scarce {
        api.set_stock(sku, config.stock).await?;
    }
    let plenty = format!("audit-{run_id}-plenty");
    api.set_stock(&plenty, PLENTY).await?;

    let per_scenario = (config.concurrency / config.scenarios.len().max(1)).max(1);
    let mut ctx = Ctx {
        api: api.clone(),
        scarce,
        plenty,
        deadline: Instant::now() + Duration::from_secs(3600),
    };
    // Setup (orders, connections) happens before the clock starts.
    let mut setup_rng = task_rng(config.seed, 0, u64::MAX >> 32);
    let hot = if config.scenarios.contains(&Scenario::HotOrders) {
        Some(hot_orders::setup(&ctx, config.orders, &mut setup_rng).await)
    } else {
        None
    };
    let mut producers = Vec::new();
    if config.scenarios.contains(&Scenario::DirectProducer) {
        for _ in 0..per_scenario {
            producers.push(
                Producer::connect(
                    &config.amqp_url,
                    &config.namespace,
                    config.partitions,
                    db,
                    &config.api_key,
                )
                .await?,
            );
        }
    }

    ctx.deadline = Instant::now() + config.duration;
    let mut tasks = JoinSet::new();
    for (number, &scenario) in config.scenarios.iter().enumerate() {
        for task in 0..per_scenario {
            let rng = task_rng(config.seed, number as u64 + 1, task as u64);
            let ctx = ctx.clone();
            match scenario {
                Scenario::HotOrders => {
                    let orders = hot.clone().expect("set up above");
                    tasks.spawn(hot_orders::run(ctx, orders, config.hot_skew, rng));
                }
                Scenario::ScarceStock => {
                    tasks.spawn(scenarios::scarce_stock::run(ctx, rng));
                }
                Scenario::Idempotency => {
                    tasks.spawn(scenarios::idempotency::run(ctx, rng));
                }
                Scenario::DoublePay => {
                    tasks.spawn(scenarios::double_pay::run(ctx, rng));
                }
                Scenario::DirectProducer => {
                    let producer = producers.pop().expect("one producer per task");
                    tasks.spawn(scenarios::direct_producer::run(ctx, producer, rng));
                }
            }
        }
    }

    let bar = progress_bar(config);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let started = Instant::now();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => result?,
                None => break,
            },
            _ = tick.tick() => {
                bar.set_position(started.elapsed().as_secs().min(config.duration.as_secs()));
                bar.set_message(format!("{} requests", api.log().request_count()));
            }
        }
    }
    bar.finish_with_message(format!("{} requests; draining", api.log().request_count()));
    Ok(())
}

fn progress_bar(config: &AuditConfig) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(config.duration.as_secs());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} s  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}
