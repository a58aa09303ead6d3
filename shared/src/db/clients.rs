//! API clients and their keys. Keys are shown once at creation; only their SHA-256 is stored.

use crate::domain::ClientId;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Client {
    pub id: ClientId,
    pub name: String,
    pub is_admin: bool,
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
    let key = new_key();
    let id = ClientId::new();
    sqlx::query!(
        "insert into clients (id, name, key_hash, is_admin) values ($1, $2, $3, $4)",
        id.0,
        name,
        hash_key(&key),
        is_admin
    )
    .execute(db)
    .await?;
    let client = Client {
        id,
        name: name.to_owned(),
        is_admin,
    };
    Ok((client, key))
}

/// The live (not revoked) client holding this key.
pub async fn find_by_key(db: impl PgExecutor<'_>, key: &str) -> sqlx::Result<Option<Client>> {
    let row = sqlx::query!(
        "select id, name, is_admin from clients where key_hash = $1 and revoked_at is null",
        hash_key(key)
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Client {
        id: ClientId(r.id),
        name: r.name,
        is_admin: r.is_admin,
    }))
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
