//! Operators — the people who sign in to the dashboard — and their sessions. Apart from API
//! clients: a client is a program holding a key, an operator a person holding a password (an
//! Argon2id PHC string here; hashing and checking it is the API's job) and, once signed in, a
//! session. The cookie carries the session's random token; only its SHA-256 is stored.
//!
//! Disabling an operator ends every session of theirs in the same statement, and ending a session
//! notifies [`OPERATORS_CHANNEL`] (a trigger), so the live feeds it holds end at once.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

/// LISTEN/NOTIFY channel woken when an operator changes (disabled, new role) or a session ends
/// (payload empty; triggers of the migration `operators`).
pub const OPERATORS_CHANNEL: &str = "orderflow_operators";

/// What an operator may do on the dashboard; each role may do what the one before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also acts on orders.
    Operator,
    /// Also stock, redrive and operators.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Is `name` a valid operator name (what the table's check allows)?
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

/// One operator, as `orderflow-api operator list` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Sessions not ended and not expired.
    pub live_sessions: i64,
}

/// What [`create`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    Created(Uuid),
    /// An operator (live or disabled) has this name already: nothing written.
    NameTaken,
}

/// Creates an operator with a password already hashed.
pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    role: Role,
    password_hash: &str,
) -> sqlx::Result<Created> {
    let id = Uuid::now_v7();
    let inserted = sqlx::query_scalar!(
        "insert into operators (id, name, role, password_hash) values ($1, $2, $3, $4)
         on conflict (name) do nothing
         returning id",
        id,
        name,
        role.as_str(),
        password_hash
    )
    .fetch_optional(db)
    .await?;
    Ok(inserted.map_or(Created::NameTaken, Created::Created))
}

/// Every operator, by name.
pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Operator>> {
    let rows = sqlx::query!(
        r#"select o.id, o.name, o.role, o.created_at, o.disabled_at,
                  (select count(*) from operator_sessions s
                    where s.operator_id = o.id and s.ended_at is null
                      and s.expires_at > now()) as "live_sessions!"
             from operators o
            order by o.name"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Operator {
            id: r.id,
            name: r.name,
            role: Role::parse(&r.role).unwrap_or(Role::Viewer),
            created_at: r.created_at,
            disabled_at: r.disabled_at,
            live_sessions: r.live_sessions,
        })
        .collect())
}

/// Disables an operator and ends their sessions (one statement); `false` if no live operator has
/// this name.
pub async fn disable(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<bool> {
    let disabled = sqlx::query_scalar!(
        r#"with disabled as (
               update operators set disabled_at = now()
                where name = $1 and disabled_at is null
               returning id),
           ended as (
               update operator_sessions set ended_at = now()
                where operator_id in (select id from disabled) and ended_at is null
               returning 1)
           select count(*) as "disabled!" from disabled, (select count(*) from ended) e"#,
        name
    )
    .fetch_one(db)
    .await?;
    Ok(disabled > 0)
}

/// Sets a live operator's password and ends their sessions (one statement); `false` if no live
/// operator has this name.
pub async fn set_password(
    db: impl PgExecutor<'_>,
    name: &str,
    password_hash: &str,
) -> sqlx::Result<bool> {
    let changed = sqlx::query_scalar!(
        r#"with changed as (
               update operators set password_hash = $2
                where name = $1 and disabled_at is null
               returning id),
           ended as (
               update operator_sessions set ended_at = now()
                where operator_id in (select id from changed) and ended_at is null
               returning 1)
           select count(*) as "changed!" from changed, (select count(*) from ended) e"#,
        name,
        password_hash
    )
    .fetch_one(db)
    .await?;
    Ok(changed > 0)
}

/// What signing in needs to know about a name.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub id: Uuid,
    pub role: Role,
    pub password_hash: String,
}

/// The live operator with this name, with their password hash.
pub async fn credentials(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<Option<Credentials>> {
    if !valid_name(name) {
        return Ok(None);
    }
    let row = sqlx::query!(
        "select id, role, password_hash from operators where name = $1 and disabled_at is null",
        name
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Credentials {
        id: r.id,
        role: Role::parse(&r.role).unwrap_or(Role::Viewer),
        password_hash: r.password_hash,
    }))
}

/// A new session token: 244 random bits, URL- and cookie-safe.
pub fn new_token() -> String {
    format!("ofs_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Starts a session for a live operator; `false` (nothing written) if they were disabled
/// meanwhile.
pub async fn start_session(
    db: impl PgExecutor<'_>,
    token: &str,
    operator: Uuid,
    expires_at: DateTime<Utc>,
    address: Option<&str>,
) -> sqlx::Result<bool> {
    let started = sqlx::query!(
        "insert into operator_sessions (token_hash, operator_id, expires_at, address)
         select $1, id, $3, $4 from operators where id = $2 and disabled_at is null",
        hash_token(token),
        operator,
        expires_at,
        address.map(|a| a.chars().take(100).collect::<String>())
    )
    .execute(db)
    .await?;
    Ok(started.rows_affected() == 1)
}

/// A live session and its operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub token_hash: Vec<u8>,
    pub operator_id: Uuid,
    pub name: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
}

/// The session holding this token hash, if it is live (not ended, not expired, its operator not
/// disabled). Records its use, at most once a minute (one statement either way).
pub async fn session(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<Session>> {
    let row = sqlx::query!(
        r#"with live as (
               select s.token_hash, s.operator_id, o.name, o.role, s.expires_at, s.last_used_at
                 from operator_sessions s join operators o on o.id = s.operator_id
                where s.token_hash = $1 and s.ended_at is null and s.expires_at > now()
                  and o.disabled_at is null),
           used as (
               update operator_sessions s set last_used_at = now()
                 from live
                where s.token_hash = live.token_hash
                  and live.last_used_at < now() - interval '1 minute')
           select token_hash, operator_id, name, role, expires_at from live"#,
        token_hash
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Session {
        token_hash: r.token_hash,
        operator_id: r.operator_id,
        name: r.name,
        role: Role::parse(&r.role).unwrap_or(Role::Viewer),
        expires_at: r.expires_at,
    }))
}

/// Ends a session (signing out); `false` if it had ended already.
pub async fn end_session(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<bool> {
    let ended = sqlx::query!(
        "update operator_sessions set ended_at = now() where token_hash = $1 and ended_at is null",
        token_hash
    )
    .execute(db)
    .await?;
    Ok(ended.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_words_with_dots_dashes_and_underscores() {
        assert!(valid_name("alice"));
        assert!(valid_name("a.b-c_d9"));
        assert!(valid_name(&"a".repeat(64)));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name(""));
        assert!(!valid_name("Alice"));
        assert!(!valid_name("-alice"));
        assert!(!valid_name("al ice"));
        assert!(!valid_name("al\0ice"));
    }

    #[test]
    fn roles_round_trip_and_are_ordered_by_what_they_may_do() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn tokens_are_distinct_and_cookie_safe() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
        assert_eq!(hash_token(&a).len(), 32);
    }
}
