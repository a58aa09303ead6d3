//! API-key checks, cached. A key is looked up by its SHA-256 (only the hash is stored, and an
//! indexed equality on a hash leaks nothing about the key through timing); the live client it
//! belongs to is then kept in memory for a while so that a request costs no database round trip.
//!
//! A revoked key must fail in every API process as soon as it hears of it. Every change to
//! `clients` (a trigger, so a hand-written `update` counts too) notifies [`orderflow_storage::CLIENTS_CHANNEL`]; each
//! notification starts a new cache generation, and an entry is only believed if it was read in
//! the current one. An entry read before a revocation but stored after its notification is
//! thereby still discarded.
//! While the notification connection is down nothing is believed from the cache, so a missed
//! notification cannot keep a revoked key alive.
//!
//! What outlives one request (the dashboard's live feed) watches [`Keys::changes`] and checks its
//! client again on every change, so a revocation ends it too. The listener therefore runs even
//! with the cache off.

use crate::error::ApiError;
use crate::notifications::Followed;
use moka::sync::Cache;
use orderflow_storage::clients::{self, Client};
use orderflow_storage::listen::Notice;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Keys remembered at most; beyond it the least recently used are forgotten.
const MAX_CACHED_KEYS: u64 = 100_000;

#[derive(Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

struct Inner {
    /// Key hash → the client and the generation it was read in. `None` when caching is off.
    cache: Option<Cache<Vec<u8>, (Client, u64)>>,
    /// Changes to clients: the generation, whether they are heard (so the cache can be
    /// believed), and the watch of whoever must re-check a client on every change.
    followed: Followed,
}

impl Keys {
    /// A cache whose entries live at most `ttl` (zero: no cache, every request reads the
    /// database). Call [`Keys::start`] to have it believed.
    pub fn new(ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(MAX_CACHED_KEYS)
                .time_to_live(ttl)
                .build()
        });
        Self {
            inner: Arc::new(Inner {
                cache,
                followed: Followed::default(),
            }),
        }
    }

    /// Takes a notice of the settings listener (see `startup`): any change to clients, or the
    /// listener lost or back, empties the cache.
    pub fn notice(&self, notice: &Notice) {
        let inner = &self.inner;
        let generation = inner.followed.begin(notice);
        if let Some(cache) = &inner.cache {
            // Changes to clients are rare: forget everyone rather than look for the one.
            cache.invalidate_all();
        }
        // After the cache is emptied: whoever re-checks now reads the database.
        inner.followed.announce(generation);
    }

    /// Changes when any client may have changed (and when the notification connection is lost
    /// or back): re-check what was authenticated before.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.followed.changes()
    }

    /// Is every change to clients heard right now? (If not, re-check on a timer instead.)
    pub fn listening(&self) -> bool {
        self.inner.followed.listening()
    }

    /// The live client holding `key`, or 401.
    pub async fn authenticate(&self, db: &PgPool, key: &str) -> Result<Client, ApiError> {
        let hash = clients::hash_key(key);
        let inner = &self.inner;
        let Some(cache) = &inner.cache else {
            return Self::read(db, &hash).await;
        };
        let generation = inner.followed.generation();
        let believable = inner.followed.listening();
        if believable
            && let Some((client, read_in)) = cache.get(&hash)
            && read_in == generation
        {
            metrics::counter!("orderflow_api_key_lookups_total", "result" => "cached").increment(1);
            return Ok(client);
        }
        let client = Self::read(db, &hash).await?;
        if believable {
            cache.insert(hash, (client.clone(), generation));
        }
        Ok(client)
    }

    async fn read(db: &PgPool, hash: &[u8]) -> Result<Client, ApiError> {
        metrics::counter!("orderflow_api_key_lookups_total", "result" => "database").increment(1);
        clients::find_by_hash(db, hash)
            .await?
            .ok_or(ApiError::Unauthorized)
    }
}
