//! Who gets in, and from which budget: every request is authenticated from its headers before
//! anything reads its body, then takes a slot from one of two budgets for as long as its handler
//! runs.
//!
//! | request | budget |
//! |---|---|
//! | `/healthz`, `/readyz`, `/metrics` | none: never shed (they read no body and do no per-request work worth bounding) |
//! | a valid key (`Authorization: Bearer`), or a live operator session (the dashboard's cookie) | the shared in-flight budget (`ORDERFLOW_MAX_IN_FLIGHT`) |
//! | no key, or one that is unknown or revoked; no session, or one that ended | a small budget of its own (`ORDERFLOW_MAX_ANONYMOUS_IN_FLIGHT`) |
//!
//! Beyond its budget a request is shed at once with 503 `overloaded`. So nobody without a valid
//! key can take a slot a client needs: a thousand sockets that start a sign-in and never send the
//! body fill the anonymous budget only, and each of them is cut off after
//! [`crate::extract::BODY_READ_TIMEOUT`] anyway. Checking a key that is not in the cache costs
//! a database read; those reads take turns ([`MAX_KEY_CHECKS`] at once), so a flood of made-up
//! keys queues behind the real ones instead of taking the pool. Sessions are read the same way
//! (one statement, in the same turns).
//!
//! The outcome of the check travels with the request ([`Credential`]), so the handlers'
//! extractors do not look the key up again.

use crate::dashboard::auth;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orderflow_storage::clients::Client;
use orderflow_storage::operators::{self, Session};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Routes outside every budget.
const EXEMPT: &[&str] = &["/healthz", "/readyz", "/metrics"];
/// Database reads of keys missing from the cache, at once across the process.
pub const MAX_KEY_CHECKS: usize = 16;
/// How long a key check waits for its turn before the request is shed.
const KEY_CHECK_WAIT: Duration = Duration::from_secs(5);

/// The two request budgets and the key checks' turns.
#[derive(Clone)]
pub struct Admission {
    authenticated: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    key_checks: Arc<Semaphore>,
}

impl Admission {
    pub fn new(max_in_flight: usize, max_anonymous_in_flight: usize) -> Self {
        Self {
            authenticated: Arc::new(Semaphore::new(max_in_flight)),
            anonymous: Arc::new(Semaphore::new(max_anonymous_in_flight)),
            key_checks: Arc::new(Semaphore::new(MAX_KEY_CHECKS)),
        }
    }
}

/// What the admission found out about the request's key (a request extension).
#[derive(Clone, Debug)]
pub enum Credential {
    /// The key is valid: this is its client.
    Valid(Client),
    /// A live operator session (the dashboard's cookie): the dashboard's routes only.
    Operator(Session),
    /// A key was sent, but it is malformed, unknown or revoked.
    Invalid,
}

/// Which key a request presents in its `Authorization: Bearer` header (`Some("")`: a header
/// that is no well-formed Bearer key). `Err` for a request that sends several.
pub fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = authorization.next() else {
        return Ok(None);
    };
    if authorization.next().is_some() {
        return Err(ApiError::InvalidRequest(
            "send one Authorization header, not several".into(),
        ));
    }
    Ok(value
        .to_str()
        .ok()
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        // A header that is not a well-formed Bearer key is still a (bad) key.
        .or(Some("")))
}

/// The middleware: authenticates, then runs the request inside its budget.
pub async fn admit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if EXEMPT.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let credential = match presented_key(request.headers()) {
        Err(e) => return e.into_response(),
        // No key: the dashboard's session cookie, if any (a key wins over a cookie).
        Ok(None) => match auth::cookie_token(request.headers()) {
            None => None,
            Some(token) => match session(&state, token).await {
                Ok(Some(session)) => Some(Credential::Operator(session)),
                Ok(None) => None,
                Err(e) => return e.into_response(),
            },
        },
        Ok(Some("")) => Some(Credential::Invalid),
        Ok(Some(key)) => match check(&state, key).await {
            Ok(client) => Some(Credential::Valid(client)),
            Err(ApiError::Unauthorized) => Some(Credential::Invalid),
            Err(e) => return e.into_response(),
        },
    };
    let budget = match &credential {
        Some(Credential::Valid(_) | Credential::Operator(_)) => &state.admission.authenticated,
        _ => &state.admission.anonymous,
    };
    let Ok(_slot) = budget.clone().try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    if let Some(credential) = credential {
        request.extensions_mut().insert(credential);
    }
    next.run(request).await
}

/// The key's client, reading the database (in turn) only when the cache does not know it.
async fn check(state: &AppState, key: &str) -> Result<Client, ApiError> {
    let _turn = turn(state).await?;
    state.keys.authenticate(&state.db, key).await
}

/// The live session holding `token` (read in turn, like a key).
async fn session(state: &AppState, token: &str) -> Result<Option<Session>, ApiError> {
    let _turn = turn(state).await?;
    Ok(operators::session(&state.db, &operators::hash_token(token)).await?)
}

/// One of the [`MAX_KEY_CHECKS`] turns to read a credential from the database, or 503 after
/// [`KEY_CHECK_WAIT`].
async fn turn(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let waited = tokio::time::timeout(
        KEY_CHECK_WAIT,
        state.admission.key_checks.clone().acquire_owned(),
    )
    .await;
    match waited {
        Ok(Ok(turn)) => Ok(turn),
        _ => Err(ApiError::Overloaded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_bearer_header_is_the_key_and_a_malformed_one_is_a_bad_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers).unwrap(), None);
        // A cookie is no key (it carries a session, which only the dashboard's routes take).
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("orderflow_session=ofs_cookie"),
        );
        assert_eq!(presented_key(&headers).unwrap(), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer of_h"),
        );
        assert_eq!(presented_key(&headers).unwrap(), Some("of_h"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert_eq!(presented_key(&headers).unwrap(), Some(""));
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut headers = HeaderMap::new();
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(matches!(
            presented_key(&headers),
            Err(ApiError::InvalidRequest(_))
        ));
    }
}
