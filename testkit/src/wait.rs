//! The one way a test waits for something that happens asynchronously to it: poll with a
//! deadline, and panic naming what was awaited (and what was last seen) when it never came. Never
//! a fixed sleep: a fast machine does not wait longer than it must, a slow one gets the whole
//! deadline.
//!
//! ```ignore
//! let status = wait_for("the command to be parked")
//!     .within(Duration::from_secs(10))
//!     .until(|| async { parked(&db).await.then_some(()) })
//!     .await;
//! ```

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a wait lasts unless [`Wait::within`] says otherwise.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(20);

/// Waits for `what` (named in the panic message): 20 s at most, polling every 50 ms, unless
/// [`Wait::within`] and [`Wait::every`] say otherwise.
pub fn wait_for(what: impl Into<String>) -> Wait {
    Wait {
        what: what.into(),
        limit: DEFAULT_LIMIT,
        every: Duration::from_millis(50),
    }
}

/// A wait being set up; [`Wait::until`] runs it.
#[must_use = "a wait does nothing until `.until(...)` is awaited"]
pub struct Wait {
    what: String,
    limit: Duration,
    every: Duration,
}

impl Wait {
    /// The deadline (20 s unless set).
    pub fn within(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// The pause between two probes (50 ms unless set; zero probes again at once, after
    /// yielding, for a probe that waits by itself, like a long-poll or a request).
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = interval;
        self
    }

    /// Calls `probe` until it reports done ([`Probe`]: `Some`, `Ok` or `true`) and returns its
    /// value. Past the deadline it panics with what was awaited, how long, and the last thing
    /// the probe saw (the `Err` of a `Result` probe). A probe that itself takes long is not cut
    /// off: the deadline is checked between probes.
    pub async fn until<P, F, Fut>(self, mut probe: F) -> P::Output
    where
        P: Probe,
        F: FnMut() -> Fut,
        Fut: Future<Output = P>,
    {
        let started = Instant::now();
        loop {
            let seen = match probe().await.done() {
                Ok(value) => return value,
                Err(seen) => seen,
            };
            if started.elapsed() >= self.limit {
                match seen {
                    Some(seen) => panic!(
                        "timed out after {:?} waiting for {}; last seen: {seen}",
                        self.limit, self.what
                    ),
                    None => panic!("timed out after {:?} waiting for {}", self.limit, self.what),
                }
            }
            if self.every.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(self.every).await;
            }
        }
    }
}

/// What a probe of [`Wait::until`] reports: done with a value, or not yet (with what it saw).
pub trait Probe {
    type Output;
    /// `Ok(value)` when done; `Err(what was seen)` when not yet.
    fn done(self) -> Result<Self::Output, Option<String>>;
}

/// `Some(value)`: done.
impl<T> Probe for Option<T> {
    type Output = T;
    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Ok(value)`: done; `Err(seen)`: not yet, and `seen` goes into the panic message.
impl<T, E: Display> Probe for Result<T, E> {
    type Output = T;
    fn done(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// `true`: done.
impl Probe for bool {
    type Output = ();
    fn done(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}
