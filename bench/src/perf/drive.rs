//! The load generator: closed loop (N clients, each sending its next command as soon as the last
//! was answered: the maximum rate) and open loop (commands due at a fixed rate whatever the
//! answers do: latency at a given rate, and overload). Open-loop latency runs from when a command
//! was due, not when it could be sent, so a stalling system cannot hide its queue (coordinated
//! omission). Closed-loop clients honour `Retry-After` on a 429 or 503, as a real client would.

use super::target::{Answer, Commands, SKUS, Sample, Target};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

/// How long a closed-loop client waits after a refusal that carried `Retry-After`.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which orders a generator sends to.
#[derive(Clone)]
pub enum Picker {
    /// Uniformly among these.
    Uniform(Arc<Vec<Uuid>>),
    /// Always this one (the storm's hot order).
    Hot(Uuid),
}

impl Picker {
    fn pick(&self, rng: &mut ChaCha8Rng) -> (Uuid, bool) {
        match self {
            Picker::Uniform(orders) => (orders[rng.gen_range(0..orders.len())], false),
            Picker::Hot(order) => (*order, true),
        }
    }
}

/// What every generator of a phase shares.
#[derive(Clone)]
pub struct Load {
    pub target: Target,
    pub commands: Arc<Commands>,
    /// The phase's clock: `due` times are measured from here.
    pub start: Instant,
    pub until: Instant,
    /// Answers so far (the progress bar reads it).
    pub answered: Arc<AtomicU64>,
    pub seed: u64,
    /// Random extra wait, up to this, after [`RETRY_AFTER`] (0: refused clients come back in step).
    pub back_off_jitter: Duration,
}

impl Load {
    async fn call(&self, rng: &mut ChaCha8Rng, picker: &Picker, due: Instant) -> Sample {
        let (order, hot) = picker.pick(rng);
        let k = rng.gen_range(0..SKUS);
        let (answer, retry_after, command) = self.target.send(&self.commands, k, order).await;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Sample {
            due: due.saturating_duration_since(self.start).as_secs_f64(),
            latency_us: due.elapsed().as_micros() as u64,
            answer,
            retry_after,
            command,
            hot,
        }
    }

    fn rng(&self, stream: u64, task: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream << 32 | task);
        rng
    }
}

/// `clients` closed-loop clients until the phase ends. `stream` keeps the random choices of
/// different generators of one phase apart.
pub async fn closed(load: &Load, picker: Picker, clients: usize, stream: u64) -> Vec<Sample> {
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let load = load.clone();
        let picker = picker.clone();
        tasks.spawn(async move {
            let mut rng = load.rng(stream, client as u64);
            let mut samples = Vec::new();
            while Instant::now() < load.until {
                let sample = load.call(&mut rng, &picker, Instant::now()).await;
                // A well-behaved client honours a refusal's Retry-After (orderflow's backpressure
                // says 1 s) instead of hammering the server with retries.
                let back_off =
                    sample.retry_after && matches!(sample.answer, Answer::Status(429 | 503));
                samples.push(sample);
                if back_off {
                    let jitter = load.back_off_jitter.mul_f64(rng.gen_range(0.0..=1.0));
                    let wake = Instant::now() + RETRY_AFTER + jitter;
                    tokio::time::sleep_until(load.until.min(wake).into()).await;
                }
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.expect("a load task panicked"));
    }
    samples
}

/// Commands due at `rate` per second until the phase ends, at most `cap` in flight (the rest are
/// counted as not sent: the generator's own limit, reported, never silently skipped).
pub async fn open(load: &Load, picker: Picker, rate: f64, cap: usize, stream: u64) -> Vec<Sample> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let slots = Arc::new(Semaphore::new(cap));
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut rng = load.rng(stream, 0);
    let mut skipped = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = 0u64;
    'ticks: loop {
        tick.tick().await;
        // Everything due by now goes out at once (the timer's resolution is a millisecond).
        loop {
            let due = load.start + interval.mul_f64(next as f64);
            if due >= load.until {
                break 'ticks;
            }
            if due > Instant::now() {
                break;
            }
            next += 1;
            let call_rng = ChaCha8Rng::seed_from_u64(rng.r#gen());
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (load, picker, sender) = (load.clone(), picker.clone(), sender.clone());
                    tokio::spawn(async move {
                        let mut rng = call_rng;
                        let sample = load.call(&mut rng, &picker, due).await;
                        drop(permit);
                        let _ = sender.send(sample);
                    });
                }
                Err(_) => skipped.push(Sample {
                    due: due.saturating_duration_since(load.start).as_secs_f64(),
                    latency_us: 0,
                    answer: Answer::NotSent,
                    retry_after: false,
                    command: None,
                    hot: matches!(picker, Picker::Hot(_)),
                }),
            }
        }
    }
    drop(sender);
    let mut samples = skipped;
    while let Some(sample) = receiver.recv().await {
        samples.push(sample);
    }
    samples
}

/// Requests the open-loop generator keeps in flight at most: a quarter of the process's file
/// descriptors (the system under test may need as many again), and no more than 8,192.
pub fn in_flight_cap() -> usize {
    (super::observe::open_files_limit() / 4).clamp(64, 8_192) as usize
}
