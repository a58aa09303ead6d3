//! One PostgreSQL `LISTEN` task per channel, kept for the life of the server on the workspace's
//! one listener ([`orderflow_storage::listen`]): the owner is told when it is listening, when
//! the connection is lost (notifications sent meanwhile are gone, so whatever depends on them
//! must be re-checked) and of every payload. Stops on shutdown.

use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::listen::{Listener, Notice};
use sqlx::PgPool;

/// Spawns the listener task for `channels` among `tasks`; `on` runs on the task, so keep it
/// short.
pub fn spawn(
    tasks: &mut Tasks,
    db: PgPool,
    channels: &'static [&'static str],
    shutdown: CancellationToken,
    mut on: impl FnMut(Notice) + Send + 'static,
) {
    tasks.spawn(format!("LISTEN {}", channels.join(", ")), async move {
        let mut listener = Listener::new(db, channels);
        loop {
            tokio::select! {
                notice = listener.next() => on(notice),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// What a process knows of a notification channel it follows: a generation bumped by every
/// notice (so a read made before a change can be told from one made after), whether every
/// notification is heard right now, and a watch that tells whoever must re-check on each change.
/// The API-key cache and the operators' sessions each follow one.
pub struct Followed {
    generation: std::sync::atomic::AtomicU64,
    listening: std::sync::atomic::AtomicBool,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Followed {
    fn default() -> Self {
        Self {
            generation: Default::default(),
            listening: Default::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Followed {
    /// Takes a notice: a new generation first (nothing read before this moment is believed
    /// after it), and whether the channel is heard. Announce the generation it returns once the
    /// caller has dropped what the change makes stale ([`Followed::announce`]).
    pub fn begin(&self, notice: &Notice) -> u64 {
        use std::sync::atomic::Ordering;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        match notice {
            Notice::Listening => self.listening.store(true, Ordering::SeqCst),
            Notice::Lost => self.listening.store(false, Ordering::SeqCst),
            Notice::Notification { .. } => {}
        }
        generation
    }

    /// Tells the watchers: re-check now.
    pub fn announce(&self, generation: u64) {
        self.changes.send_replace(generation);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Is every notification heard right now? (If not, re-check on a timer instead.)
    pub fn listening(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Changes on every notice.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
