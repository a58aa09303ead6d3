//! Who may use the dashboard: an admin key, sent as `Authorization: Bearer` (scripts) or held in
//! an HttpOnly, SameSite=Strict cookie set by signing in on the page (browsers cannot put a
//! header on page loads or on `EventSource`). The cookie holds the key itself, so it is exactly
//! as strong as the header and a revoked key fails at once; SameSite=Strict keeps other sites'
//! pages from riding on it, and every state-changing request must also be `application/json`,
//! which a cross-site form cannot send.

use crate::error::ApiError;
use crate::extract::authenticated;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, header, request::Parts};
use orderflow_storage::clients::Client;

/// The cookie that carries the admin key.
pub const COOKIE: &str = "orderflow_dashboard";
/// How long a browser keeps the sign-in (12 h).
const COOKIE_MAX_AGE_SECS: u32 = 12 * 3600;

/// An admin, by header or by dashboard cookie.
pub struct DashboardAdmin(pub Client);

impl FromRequestParts<AppState> for DashboardAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = authenticated(parts, state).await?;
        if !client.is_admin {
            return Err(ApiError::Forbidden);
        }
        // The dashboard's own bucket: a script's load on the same key cannot sign the page out.
        state.limits.check_dashboard(&client)?;
        Ok(DashboardAdmin(client))
    }
}

/// The key in the dashboard cookie, if there is a well-formed one.
pub fn cookie_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// `Set-Cookie` that signs the browser in with `key`.
pub fn sign_in_cookie(key: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={key}; HttpOnly; SameSite=Strict; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}"
    ))
    .expect("a validated key is a valid cookie value")
}

/// `Set-Cookie` that signs the browser out.
pub fn sign_out_cookie() -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    ))
    .expect("a static cookie is a valid header")
}

/// Is `key` shaped like an API key (so it can go into a cookie as it is)?
pub fn plausible_key(key: &str) -> bool {
    (1..=200).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_found_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; orderflow_dashboard=of_abc; b=2"),
        );
        assert_eq!(cookie_key(&headers), Some("of_abc"));
    }

    #[test]
    fn an_empty_or_missing_cookie_is_no_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(cookie_key(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("orderflow_dashboard="),
        );
        assert_eq!(cookie_key(&headers), None);
    }

    #[test]
    fn keys_that_could_break_a_cookie_are_not_plausible() {
        assert!(plausible_key("of_0123abcd"));
        assert!(!plausible_key("of_1; Path=/evil"));
        assert!(!plausible_key(""));
    }
}
