//! `orderflow-api partitions`: show the partition layout, and grow it online by doubling.
//!
//! A growth declares the new partitions' queues first (bound to the command exchange like the
//! others), then records the doubled count as the next generation with its lease rows and
//! notifies every process (`layout::grow`, one transaction). From that commit on the APIs route by
//! the new count (each as soon as its listener hears of it), the workers rebalance over the new
//! partitions on their next lease round, and messages routed by the old count stay valid: an
//! order's commands are applied in the order of their seq whichever queue carried them.

use anyhow::Context;
use orderflow_contract::partition::Layout;
use orderflow_messaging::{self as amqp, Publisher, Topology};
use orderflow_runtime::config::{CommonConfig, ExposeSecret};
use orderflow_storage::{self as db, layout};

/// The layout, as stored (seeded from ORDERFLOW_PARTITIONS on a deployment that has none).
pub async fn show(common: &CommonConfig) -> anyhow::Result<Layout> {
    let pool = db::pool(common.database_url.expose_secret(), 1)?;
    db::check_schema(&pool).await?;
    Ok(layout::ensure(&pool, common.partitions).await?)
}

/// Doubles the partition count; returns the layouts before and after.
pub async fn grow(common: &CommonConfig) -> anyhow::Result<(Layout, Layout)> {
    let pool = db::pool(common.database_url.expose_secret(), 1)?;
    db::check_schema(&pool).await?;
    let before = layout::ensure(&pool, common.partitions).await?;
    let after = before
        .doubled()
        .context("the partition count cannot grow further")?;
    // The queues first: from the generation's commit on, the APIs publish to them.
    let topology = Topology {
        namespace: common.namespace.clone(),
        partitions: after.partitions(),
        queue_max_length: common.queue_max_length,
    };
    let publisher = Publisher::new(
        amqp::pool(
            common.amqp_url.expose_secret(),
            &format!("orderflow-api partitions {}", common.namespace),
        )
        .map_err(|e| anyhow::anyhow!("AMQP_URL: {e}"))?,
    );
    let channel = publisher
        .channel()
        .await
        .context("connecting to RabbitMQ")?;
    amqp::answered(
        "declaring the new partitions' queues",
        topology.declare(&channel),
    )
    .await
    .context("declaring the new partitions' queues")?;
    anyhow::ensure!(
        layout::grow(&pool, &before, &after).await?,
        "the partition count changed while growing it (another growth ran): it is now {}; \
         run the command again to double it once more",
        layout::current(&pool).await?.partitions()
    );
    Ok((before, after))
}
