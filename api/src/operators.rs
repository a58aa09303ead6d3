//! Operators signing in to the dashboard: their passwords (Argon2id), the throttle on guessing
//! them, and the sessions a sign-in starts (stored in `operator_sessions`; see
//! [`orderflow_storage::operators`]).
//!
//! A password check costs tens of milliseconds of CPU by design, and anyone may ask for one, so
//! the checks are bounded three ways: [`MAX_PASSWORD_CHECKS`] at once in the process (beyond it a
//! sign-in waits up to [`PASSWORD_CHECK_WAIT`], then answers 503), a token bucket per name and one
//! per address (429 `sign-in-throttled`, before any database or CPU work). An unknown name is
//! checked against a dummy hash, so the answer's timing does not say which names exist.
//!
//! A session ends on sign-out, at its expiry, or when its operator is disabled; each end is
//! announced (`orderflow_operators`), and the live feeds a session holds watch [`Sessions::changes`]
//! to end with it.

use crate::error::ApiError;
use crate::notifications::Followed;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;
use orderflow_storage::listen::Notice;
use orderflow_storage::operators::{self, Session};
use sqlx::PgPool;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Password checks (Argon2id, about 20–60 ms of one CPU each here) running at once.
pub const MAX_PASSWORD_CHECKS: usize = 2;
/// How long a sign-in waits for its turn to check a password before it answers 503.
const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(3);
/// Sign-in attempts per name: 5 at once, then one every 12 s.
const PER_NAME_BURST: u32 = 5;
const PER_NAME_PERIOD: Duration = Duration::from_secs(12);
/// Sign-in attempts per address: 20 at once, then one every 3 s.
const PER_ADDRESS_BURST: u32 = 20;
const PER_ADDRESS_PERIOD: Duration = Duration::from_secs(3);
/// Names and addresses whose attempts are remembered at most (least recently used forgotten).
const MAX_THROTTLED_KEYS: u64 = 100_000;
/// A password's length in bytes: at least this many when it is set…
pub const MIN_PASSWORD_BYTES: usize = 12;
/// …and at most this many, ever (a longer one is refused before it is hashed).
pub const MAX_PASSWORD_BYTES: usize = 1024;

type Bucket = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// Hashes a new password (Argon2id with the crate's defaults: 19 MiB, 2 passes, one lane — the
/// OWASP recommendation). Blocking: call it off the async runtime's threads.
pub fn hash_password(password: &str) -> Result<String, String> {
    if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len()) {
        return Err(format!(
            "a password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long"
        ));
    }
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("hashing the password failed: {e}"))
}

/// Does `password` match the PHC string `hash`? A malformed hash matches nothing. Blocking.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash no password matches in practice, checked for names that do not exist (made on first
/// use, off the async threads).
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&operators::new_token()).expect("a token is a password of valid length")
    })
}

/// Sign-ins and sessions of this process.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    checks: Arc<Semaphore>,
    by_name: Cache<String, Arc<Bucket>>,
    by_address: Cache<IpAddr, Arc<Bucket>>,
    /// How long a session lasts.
    ttl: Duration,
    /// Changes to operators and sessions.
    followed: Followed,
}

/// What a successful sign-in hands back: the cookie's token (known only now) and the session.
pub struct SignedIn {
    pub token: String,
    pub session: Session,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                checks: Arc::new(Semaphore::new(MAX_PASSWORD_CHECKS)),
                by_name: Cache::builder().max_capacity(MAX_THROTTLED_KEYS).build(),
                by_address: Cache::builder().max_capacity(MAX_THROTTLED_KEYS).build(),
                ttl,
                followed: Followed::default(),
            }),
        }
    }

    /// How long a new session lasts.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Signs an operator in: throttled per name and per address, then the password checked (in
    /// turn), then a session started.
    pub async fn sign_in(
        &self,
        db: &PgPool,
        name: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<SignedIn, ApiError> {
        let inner = &self.inner;
        let name = name.trim();
        if let Some(address) = address {
            let bucket = inner
                .by_address
                .get_with(address, || bucket(PER_ADDRESS_BURST, PER_ADDRESS_PERIOD));
            take(&bucket)?;
        }
        // Names are bounded before they become a cache key.
        let key: String = name.chars().take(64).collect();
        let bucket = inner
            .by_name
            .get_with(key, || bucket(PER_NAME_BURST, PER_NAME_PERIOD));
        take(&bucket)?;
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(ApiError::SignInFailed);
        }
        let credentials = operators::credentials(db, name).await?;
        let hash = credentials.as_ref().map(|c| c.password_hash.clone());
        let turn = tokio::time::timeout(PASSWORD_CHECK_WAIT, inner.checks.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Overloaded)?
            .map_err(|_| ApiError::Overloaded)?;
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            match hash {
                Some(hash) => verify_password(&password, &hash),
                // An unknown name takes as long as a known one: its answer's timing says nothing.
                None => {
                    verify_password(&password, dummy_hash());
                    false
                }
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
        let Some(credentials) = credentials.filter(|_| matches) else {
            tracing::info!(operator = %name, "sign-in refused");
            return Err(ApiError::SignInFailed);
        };
        let token = operators::new_token();
        let ttl = chrono::Duration::from_std(inner.ttl).unwrap_or(chrono::Duration::hours(12));
        let address = address.map(|a| a.to_string());
        if !operators::start_session(
            db,
            &token,
            credentials.id,
            chrono::Utc::now() + ttl,
            address.as_deref(),
        )
        .await?
        {
            // Disabled between the check and now.
            return Err(ApiError::SignInFailed);
        }
        let session = operators::session(db, &operators::hash_token(&token))
            .await?
            .ok_or(ApiError::SignInFailed)?;
        tracing::info!(operator = %session.name, role = %session.role, "signed in");
        Ok(SignedIn { token, session })
    }

    /// Takes a notice of the settings listener: an operator or a session changed, or the
    /// listener was lost or is back. Live feeds re-check their session.
    pub fn notice(&self, notice: &Notice) {
        let followed = &self.inner.followed;
        followed.announce(followed.begin(notice));
    }

    /// Changes whenever a session may have ended or an operator changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.followed.changes()
    }

    /// Is every change heard right now? (If not, re-check on a timer instead.)
    pub fn listening(&self) -> bool {
        self.inner.followed.listening()
    }
}

fn bucket(burst: u32, period: Duration) -> Arc<Bucket> {
    let quota = Quota::with_period(period)
        .expect("a non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("a non-zero burst"));
    Arc::new(RateLimiter::direct(quota))
}

fn take(bucket: &Bucket) -> Result<(), ApiError> {
    bucket.check().map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::SignInThrottled {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_matches_its_own_argon2id_hash_only() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("correct horse battery", "not a hash"));
        assert_ne!(hash, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn a_password_too_short_or_too_long_is_refused_before_hashing() {
        assert!(hash_password("short").is_err());
        assert!(hash_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_says_how_long_to_wait() {
        let b = bucket(2, Duration::from_secs(30));
        assert!(take(&b).is_ok() && take(&b).is_ok());
        match take(&b) {
            Err(ApiError::SignInThrottled { retry_after_secs }) => {
                assert!((1..=30).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("{other:?}"),
        }
    }
}
