//! Records commands for existing orders many per statement (group commit at intake). A request hands its command here and waits for the write; a free writer (of
//! a few) writes every command that arrived while the others were busy, with one statement and
//! one commit ([`commands::record_batch`]): the commit's WAL flush and the statement's round
//! trip are shared by dozens under heavy load.
//!
//! Every follow-up goes through a batch, even alone: under light load that costs latency on a
//! host whose CPUs PostgreSQL shares with everything else (a batch is one backend doing the
//! work of many, with one process's share of the CPUs). Batching only while many records were in
//! flight was measured and dropped: it fed itself (slower records, more in flight, more
//! batching) and bought neither throughput nor latency (docs/DESIGN-NOTES.md).
//!
//! Each command is recorded or not exactly as the single statement ([`commands::record_next`])
//! would record it, except that the batch does not wait for an order's stream that another
//! transaction holds: that request gets `None` and records its command alone, waiting its turn
//! as before. So does every request of a batch whose statement failed (the single statement
//! then reports the error for its own request).

use crate::metrics;
use orderflow_domain::{ClientId, CommandId, CommandKind, OrderId};
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::commands::{self, BatchEntry, BatchIntake, Intake, NewCommand, Source};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Commands written by one statement at most.
const MAX_BATCH: usize = 64;

/// Batches written at once, each on its own connection of the writers' pool. With one, every
/// record waited for the previous batch's commit (its WAL flush) even at half the maximum rate;
/// with several, a light load writes each request at once, and a heavy one still gathers the
/// requests that arrive while every writer is busy. Two, not four: with four, half the maximum
/// rate was written about two commands a batch (0.5 commits per command); two gather more per
/// commit at every rate, and measured no slower (docs/DESIGN-NOTES.md, *Fewer statements per
/// command at intake*).
pub const WRITERS: usize = 2;

/// A command to record, owned: it crosses to the writer task.
pub struct Pending {
    id: CommandId,
    client_id: ClientId,
    order_id: OrderId,
    kind: CommandKind,
    body: serde_json::Value,
    expected_version: Option<i64>,
    source: Source,
    partition: u16,
    received_at: Option<chrono::DateTime<chrono::Utc>>,
    traceparent: Option<String>,
    actor: Option<String>,
    key: String,
    fingerprint: Vec<u8>,
    max_pending: i64,
}

impl Pending {
    pub fn new(command: &NewCommand<'_>, key: &str, fingerprint: &[u8], max_pending: i64) -> Self {
        Self {
            id: command.id,
            client_id: command.client_id,
            order_id: command.order_id,
            kind: command.kind,
            body: command.body.clone(),
            expected_version: command.expected_version,
            source: command.source,
            partition: command.partition,
            received_at: command.received_at,
            traceparent: command.traceparent.map(str::to_owned),
            actor: command.actor.map(str::to_owned),
            key: key.to_owned(),
            fingerprint: fingerprint.to_vec(),
            max_pending,
        }
    }

    fn entry(&self) -> BatchEntry<'_> {
        BatchEntry {
            command: NewCommand {
                id: self.id,
                client_id: self.client_id,
                order_id: self.order_id,
                kind: self.kind,
                body: &self.body,
                expected_version: self.expected_version,
                source: self.source,
                partition: self.partition,
                received_at: self.received_at,
                traceparent: self.traceparent.as_deref(),
                actor: self.actor.as_deref(),
            },
            key: &self.key,
            fingerprint: &self.fingerprint,
        }
    }
}

/// `None`: record it alone (its stream was held by another transaction, or the batch failed).
type Reply = oneshot::Sender<Option<Intake>>;

/// A command to record and where its outcome goes.
type Request = (Pending, Reply);

/// The `application_name` of the writers' sessions.
pub const RECORDS_SESSIONS: &str = "orderflow-api records";

/// The handle requests use; cloning is cheap. The writer task ends once every handle is gone.
#[derive(Clone)]
pub struct Records {
    queue: mpsc::Sender<Request>,
}

impl Records {
    /// Starts the writer task among `tasks`, on a pool of its own ([`WRITERS`] connections)
    /// over `database_url`: its sessions use generic plans (see
    /// [`orderflow_storage::pool_with_generic_plans`]), which no other statement of the API is
    /// asked to.
    pub fn start(tasks: &mut Tasks, database_url: &str) -> Result<Self, sqlx::Error> {
        let db = orderflow_storage::pool_with_generic_plans(
            database_url,
            WRITERS as u32,
            RECORDS_SESSIONS,
        )?;
        let (queue, pending) = mpsc::channel(4 * MAX_BATCH);
        tasks.spawn("record writer", write(db, pending));
        Ok(Self { queue })
    }

    /// Records `pending` with the next batch; `None`: record it alone.
    pub async fn record(&self, pending: Pending) -> Option<Intake> {
        let (reply, written) = oneshot::channel();
        self.queue.send((pending, reply)).await.ok()?;
        written.await.ok().flatten()
    }
}

async fn write(db: PgPool, mut queue: mpsc::Receiver<Request>) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    let mut arrived = Vec::with_capacity(MAX_BATCH);
    // Requests left for the next batch: a second command for an order already in this one (the
    // order's gate lets one through at a time, so only across a gate's hand-over).
    let mut carried: Vec<Request> = Vec::new();
    loop {
        // A batch is taken from the queue only once a writer is free: while all are busy, the
        // requests that arrive wait together for the next one.
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        if carried.len() < MAX_BATCH {
            let room = MAX_BATCH - carried.len();
            if carried.is_empty() {
                if queue.recv_many(&mut arrived, room).await == 0 {
                    return;
                }
            } else {
                while arrived.len() < room {
                    match queue.try_recv() {
                        Ok(one) => arrived.push(one),
                        Err(_) => break,
                    }
                }
            }
        }
        let (batch, rest) = split_by_order(carried.drain(..).chain(arrived.drain(..)));
        carried = rest;
        let db = db.clone();
        tokio::spawn(async move {
            write_batch(&db, batch).await;
            drop(writer);
        });
    }
}

/// The requests with one per order (up to [`MAX_BATCH`], in arrival order), and the rest.
fn split_by_order(requests: impl Iterator<Item = Request>) -> (Vec<Request>, Vec<Request>) {
    let mut orders = HashSet::new();
    let (mut batch, mut rest) = (Vec::new(), Vec::new());
    for request in requests {
        if batch.len() < MAX_BATCH && orders.insert(request.0.order_id) {
            batch.push(request);
        } else {
            rest.push(request);
        }
    }
    (batch, rest)
}

async fn write_batch(db: &PgPool, batch: Vec<Request>) {
    // One cap for the whole statement: every request of a process carries the same one.
    let Some(max_pending) = batch.first().map(|(p, _)| p.max_pending) else {
        return;
    };
    let total = batch.len();
    let (same, other): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|(p, _)| p.max_pending == max_pending);
    let mut alone = other.len();
    for (_, reply) in other {
        let _ = reply.send(None);
    }
    let entries: Vec<BatchEntry<'_>> = same.iter().map(|(p, _)| p.entry()).collect();
    let outcomes = commands::record_batch(db, &entries, max_pending).await;
    drop(entries);
    match outcomes {
        Ok(outcomes) => {
            let commands = same.len();
            for ((_, reply), outcome) in same.into_iter().zip(outcomes) {
                let _ = reply.send(match outcome {
                    BatchIntake::Done(intake) => Some(intake),
                    BatchIntake::Skipped => {
                        alone += 1;
                        None
                    }
                });
            }
            tracing::debug!(commands, alone, "intake batch written");
            metrics::intake_batch(total, alone);
        }
        Err(error) => {
            tracing::warn!(%error, commands = same.len(), "intake batch failed; recording its commands one by one");
            alone += same.len();
            metrics::intake_batch(total, alone);
            for (_, reply) in same {
                let _ = reply.send(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(order: u128) -> Request {
        let body = serde_json::json!({"type": "cancel"});
        let command = NewCommand {
            id: CommandId(uuid::Uuid::now_v7()),
            client_id: ClientId(uuid::Uuid::nil()),
            order_id: OrderId(uuid::Uuid::from_u128(order)),
            kind: CommandKind::Cancel,
            body: &body,
            expected_version: None,
            source: Source::Http,
            partition: 0,
            received_at: None,
            traceparent: None,
            actor: None,
        };
        (Pending::new(&command, "k", b"f", 16), oneshot::channel().0)
    }

    #[test]
    fn a_batch_holds_one_command_per_order_and_carries_the_rest_in_order() {
        let requests = [1, 2, 1, 3, 2].map(pending);
        let (batch, rest) = split_by_order(requests.into_iter());
        let orders = |v: &[Request]| {
            v.iter()
                .map(|(p, _)| p.order_id.0.as_u128())
                .collect::<Vec<_>>()
        };
        assert_eq!(orders(&batch), [1, 2, 3]);
        assert_eq!(orders(&rest), [1, 2]);
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_commands() {
        let requests = (0..MAX_BATCH as u128 + 3).map(pending);
        let (batch, rest) = split_by_order(requests);
        assert_eq!((batch.len(), rest.len()), (MAX_BATCH, 3));
    }
}
