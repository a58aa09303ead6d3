//! The consume loop of one partition, and reconnecting after broker failures.

use super::Context;
use super::ready::apply_ready;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use orderflow_runtime::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;

/// Consumes `partition` until shutdown, reconnecting with backoff after broker failures.
pub async fn run(ctx: Arc<Context>, partition: u16, shutdown: CancellationToken) {
    let mut backoff = reconnect_backoff();
    while !shutdown.is_cancelled() {
        match consume_on_channel(&ctx, partition, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(partition, error = %e, ?delay, "partition consumer stopped; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(partition, "partition consumer stopped");
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build()
}

/// Opens a channel, consumes the partition's queue on it and hands over what arrives together,
/// until shutdown (`Ok`) or a broker failure (`Err`: [`run`] reconnects).
async fn consume_on_channel(
    ctx: &Context,
    partition: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = ctx.connection.get().await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(ctx.prefetch, BasicQosOptions::default())
        .await?;
    let queue = ctx.topology.partition_queue(partition);
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _consuming = ctx.monitor.consuming(partition);
    tracing::info!(
        partition,
        queue,
        "consuming (active when the broker makes this consumer the single active one)"
    );
    // Whatever the broker has already pushed arrives together, up to a batch.
    let mut deliveries = consumer.ready_chunks(ctx.batch_max.max(1));
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => next,
        };
        let Some(ready) = next else {
            anyhow::bail!("the broker cancelled the consumer");
        };
        let mut received = Vec::with_capacity(ready.len());
        let mut broken = None;
        for delivery in ready {
            match delivery {
                Ok(delivery) => received.push(delivery),
                Err(e) => {
                    // The ones after it stay unacked; the broker redelivers them.
                    broken = Some(e);
                    break;
                }
            }
        }
        // Not cancelled by shutdown: the messages in hand are finished and acked first.
        apply_ready(ctx, partition, &received, shutdown).await?;
        if let Some(e) = broken {
            return Err(e.into());
        }
    }
    // Unacked prefetched messages go back to the queue when the channel closes.
    let _ = channel.close(200, "worker shutting down".into()).await;
    Ok(())
}
