//! Who may use the dashboard, and for what.
//!
//! - **Operators** (people) sign in on the page with their name and password
//!   (`orderflow-api operator create`). That starts a server-side session; the browser keeps only
//!   its random token, in an HttpOnly, SameSite=Strict cookie (`Secure` when the request came over
//!   TLS, as the proxy in front says with `X-Forwarded-Proto: https`). A change (any method but
//!   GET and HEAD) made with the cookie must also carry the session's CSRF token in
//!   `X-CSRF-Token`, which the page reads from `GET /dashboard/session`; other sites' pages can
//!   neither send the cookie (SameSite) nor read the token.
//! - **Scripts** read (and act) with an admin API key, `Authorization: Bearer`; a key is no
//!   ambient credential, so it needs no CSRF token.
//!
//! Roles: a viewer reads everything, an operator also acts on orders, an admin also manages
//! stock, redrives dead letters and manages operators. An admin key counts as an admin.

use crate::admission::Credential;
use crate::error::ApiError;
use crate::extract::authenticated;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Method, header, request::Parts};
use orderflow_domain::ClientId;
use orderflow_storage::clients::Client;
use orderflow_storage::operators::{Role, Session};
use sha2::{Digest, Sha256};

/// The cookie that carries a session's token.
pub const COOKIE: &str = "orderflow_session";
/// The header that carries a session's CSRF token on changes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Who is using the dashboard.
#[derive(Clone, Debug)]
pub enum Principal {
    /// An operator, signed in on the page.
    Operator(Session),
    /// A script with an admin API key.
    AdminKey(Client),
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Operator(session) => session.role,
            Principal::AdminKey(_) => Role::Admin,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::Operator(session) => &session.name,
            Principal::AdminKey(client) => &client.name,
        }
    }

    /// Who did it, for audit records: `operator:<name>` or `client:<name>`.
    pub fn actor(&self) -> String {
        match self {
            Principal::Operator(session) => format!("operator:{}", session.name),
            Principal::AdminKey(client) => format!("client:{}", client.name),
        }
    }

    /// Who the audit records (`admin_actions`, dead letters) name.
    pub fn audited_as(&self) -> orderflow_storage::dashboard::Actor {
        match self {
            Principal::Operator(session) => {
                orderflow_storage::dashboard::Actor::Operator(session.operator_id)
            }
            Principal::AdminKey(client) => orderflow_storage::dashboard::Actor::Client(client.id),
        }
    }

    /// The id that keys this principal's dashboard bucket and feed slots.
    pub fn bucket_id(&self) -> ClientId {
        match self {
            Principal::Operator(session) => ClientId(session.operator_id),
            Principal::AdminKey(client) => client.id,
        }
    }

    /// The session's CSRF token (none for a key).
    pub fn csrf_token(&self) -> Option<String> {
        match self {
            Principal::Operator(session) => Some(csrf_token(&session.token_hash)),
            Principal::AdminKey(_) => None,
        }
    }
}

/// A session's CSRF token: derived from the hash of its token (so nothing more is stored), and
/// unguessable without the token itself.
pub fn csrf_token(token_hash: &[u8]) -> String {
    let mut digest = Sha256::new();
    digest.update(b"orderflow csrf\0");
    digest.update(token_hash);
    hex::encode(digest.finalize())
}

/// Anyone signed in (any role) or an admin key.
pub struct Viewer(pub Principal);
/// An operator or an admin (people), or an admin key.
pub struct Operator(pub Principal);
/// An admin, or an admin key.
pub struct Admin(pub Principal);

async fn principal(parts: &Parts, state: &AppState, needs: Role) -> Result<Principal, ApiError> {
    let principal = match parts.extensions.get::<Credential>() {
        Some(Credential::Operator(session)) => Principal::Operator(session.clone()),
        _ => {
            let client = authenticated(parts, state).await?;
            if !client.is_admin {
                return Err(ApiError::Forbidden);
            }
            Principal::AdminKey(client)
        }
    };
    if let Principal::Operator(session) = &principal
        && !matches!(parts.method, Method::GET | Method::HEAD)
    {
        let expected = csrf_token(&session.token_hash);
        let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        // Both are 64 hex digits derived from a secret; comparing them leaks nothing useful.
        if sent != Some(expected.as_str()) {
            return Err(ApiError::CsrfTokenMissing);
        }
    }
    if principal.role() < needs {
        return Err(ApiError::RoleRequired(needs.as_str()));
    }
    // The dashboard's own bucket: a script's load on an admin key cannot lock the page out.
    let rate = match &principal {
        Principal::AdminKey(client) => client.rate_limit,
        Principal::Operator(_) => None,
    };
    state.limits.check_dashboard(principal.bucket_id(), rate)?;
    Ok(principal)
}

macro_rules! role_extractor {
    ($name:ident, $role:expr) => {
        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, ApiError> {
                principal(parts, state, $role).await.map($name)
            }
        }
    };
}
role_extractor!(Viewer, Role::Viewer);
role_extractor!(Operator, Role::Operator);
role_extractor!(Admin, Role::Admin);

/// The session token in the dashboard cookie, if there is a well-formed one.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| plausible_token(v))
}

/// Is `token` shaped like a session token (so it can go into a cookie as it is)?
fn plausible_token(token: &str) -> bool {
    (1..=100).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Did the request come over TLS (as the proxy in front says)?
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` that holds a new session's token for `max_age_secs`.
pub fn sign_in_cookie(token: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}"
    ))
    .expect("a session token is a valid cookie value")
}

/// `Set-Cookie` that forgets the session.
pub fn sign_out_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
    ))
    .expect("a static cookie is a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; orderflow_session=ofs_abc; b=2"),
        );
        assert_eq!(cookie_token(&headers), Some("ofs_abc"));
    }

    #[test]
    fn an_empty_missing_or_odd_cookie_is_no_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(cookie_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("orderflow_session="),
        );
        assert_eq!(cookie_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("orderflow_session=a%20b"),
        );
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let plain = sign_in_cookie("ofs_x", 60, false);
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(
            sign_in_cookie("ofs_x", 60, true)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        let mut headers = HeaderMap::new();
        assert!(!over_tls(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(over_tls(&headers));
    }

    #[test]
    fn each_session_has_its_own_csrf_token() {
        let (a, b) = (csrf_token(&[1; 32]), csrf_token(&[2; 32]));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(a, csrf_token(&[1; 32]));
    }
}
