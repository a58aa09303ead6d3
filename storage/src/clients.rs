//! API clients and their keys. Keys are shown once at creation; only their SHA-256 is stored.

use orderflow_domain::ClientId;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Client {
    pub id: ClientId,
    pub name: String,
    pub is_admin: bool,
    /// This client's own rate limit, if it has one (else the API's default applies).
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `per_second` tokens a second, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    fn from_columns(per_second: Option<i32>, burst: Option<i32>) -> Option<Self> {
        let per_second = u32::try_from(per_second?).ok()?;
        Some(Self {
            per_second,
            burst: burst
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(per_second),
        })
    }
}

/// A new random key: `of_` and 64 hex digits (256 bits from the OS generator).
pub fn new_key() -> String {
    format!("of_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates a client and returns it with its key (the only time the key is known).
pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    is_admin: bool,
) -> sqlx::Result<(Client, String)> {
    create_with_limit(db, name, is_admin, None).await
}

/// Creates a client with its own rate limit (`None`: the API's default).
pub async fn create_with_limit(
    db: impl PgExecutor<'_>,
    name: &str,
    is_admin: bool,
    rate_limit: Option<RateLimit>,
) -> sqlx::Result<(Client, String)> {
    let key = new_key();
    let id = ClientId::new();
    let as_column = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    sqlx::query!(
        "insert into clients (id, name, key_hash, is_admin, rate_per_second, rate_burst)
         values ($1, $2, $3, $4, $5, $6)",
        id.0,
        name,
        hash_key(&key),
        is_admin,
        rate_limit.map(|r| as_column(r.per_second)),
        rate_limit.map(|r| as_column(r.burst))
    )
    .execute(db)
    .await?;
    let client = Client {
        id,
        name: name.to_owned(),
        is_admin,
        rate_limit,
    };
    Ok((client, key))
}

/// The columns a [`Client`] is read from.
struct ClientRow {
    id: Uuid,
    name: String,
    is_admin: bool,
    rate_per_second: Option<i32>,
    rate_burst: Option<i32>,
}

impl From<ClientRow> for Client {
    fn from(r: ClientRow) -> Self {
        Client {
            id: ClientId(r.id),
            name: r.name,
            is_admin: r.is_admin,
            rate_limit: RateLimit::from_columns(r.rate_per_second, r.rate_burst),
        }
    }
}

/// The live (not revoked) client holding this key.
pub async fn find_by_key(db: impl PgExecutor<'_>, key: &str) -> sqlx::Result<Option<Client>> {
    find_by_hash(db, &hash_key(key)).await
}

/// The live client whose key has this hash ([`hash_key`]).
pub async fn find_by_hash(db: impl PgExecutor<'_>, hash: &[u8]) -> sqlx::Result<Option<Client>> {
    let row = sqlx::query_as!(
        ClientRow,
        "select id, name, is_admin, rate_per_second, rate_burst
         from clients where key_hash = $1 and revoked_at is null",
        hash
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Client::from))
}

/// A live client by id (a redrive re-submits a dead letter as the client that sent it).
pub async fn get(db: impl PgExecutor<'_>, id: ClientId) -> sqlx::Result<Option<Client>> {
    let row = sqlx::query_as!(
        ClientRow,
        "select id, name, is_admin, rate_per_second, rate_burst
         from clients where id = $1 and revoked_at is null",
        id.0
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Client::from))
}

/// Does a live client with this id exist? (Direct producers name their client.)
pub async fn exists(db: impl PgExecutor<'_>, id: ClientId) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from clients where id = $1 and revoked_at is null) as "exists!""#,
        id.0
    )
    .fetch_one(db)
    .await
}

/// Revokes a client's key; `false` if there is no live client with this id.
pub async fn revoke(db: impl PgExecutor<'_>, id: ClientId) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update clients set revoked_at = now() where id = $1 and revoked_at is null",
        id.0
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
