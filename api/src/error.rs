//! The HTTP error policy. Every error is `application/problem+json` (RFC 9457) with a stable
//! `type`; callers branch on `type`, people read `detail`. 4xx bodies say exactly what was
//! wrong; 5xx bodies are opaque and the full error chain is logged once, here. A 503 always
//! carries `Retry-After`. Nothing is written when a request fails validation.

use crate::openapi::Problem;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no key, a malformed key, or one that is unknown or revoked.
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// 403: the key is valid but this route needs an admin key.
    #[error("this route needs an admin key")]
    Forbidden,
    /// 403: the operator's role does not allow this (viewer, operator, admin).
    #[error("this needs the {0} role")]
    RoleRequired(&'static str),
    /// 403: presence and edit leases are people's: an admin API key may read them only.
    #[error(
        "presence and edit leases belong to people signed in on the dashboard; an API key may only read them"
    )]
    PeopleOnly,
    /// 403: a change sent with a session cookie but without the session's CSRF token.
    #[error("a signed-in page's change must carry its session's X-CSRF-Token header")]
    CsrfTokenMissing,
    /// 401: the name and password did not match a live operator.
    #[error("no operator with this name and password can sign in")]
    SignInFailed,
    /// 429: too many sign-in attempts for this name or from this address.
    #[error(
        "too many sign-in attempts for this name or from this address; retry after {retry_after_secs} s"
    )]
    SignInThrottled { retry_after_secs: u64 },
    /// 409: the request conflicts with what exists (the detail says what).
    #[error("{0}")]
    Conflict(String),
    /// 404: no such resource for this client (another client's ids look exactly like this).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 400: the body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 422: the body is JSON but not a valid request (unknown field, bad value, …).
    #[error("{0}")]
    InvalidBody(String),
    /// 415
    #[error("the body must be `application/json`")]
    UnsupportedMediaType,
    /// 415 on a route that takes a merge patch.
    #[error("the body must be `application/merge-patch+json` (RFC 7396)")]
    MergePatchRequired,
    /// 428: a route that changes an order by a patch needs `If-Match`.
    #[error(
        "send If-Match with the order's ETag (its version, e.g. \"3\") you are changing: a patch is never applied blind"
    )]
    PreconditionRequired,
    /// 412: `If-Match` names a version older than the order's: the current ETag comes with it.
    #[error(
        "the order is at version {current} already, newer than the If-Match: read it again (its ETag is in this response)"
    )]
    PreconditionFailed { current: i64 },
    /// 413
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 408: the body did not arrive in time.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// 431: too many request headers, or too many bytes of them.
    #[error("the request headers are too large: at most {max_count} headers and {max_bytes} bytes")]
    HeadersTooLarge { max_count: usize, max_bytes: usize },
    /// 400: a header, path segment or query parameter is missing or malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// 422: the Idempotency-Key was used before with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// 409: the first request with this Idempotency-Key is still being processed.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyInFlight,
    /// 429: the client's rate limit is exhausted.
    #[error(
        "rate limit exceeded: at most {limit} requests per {window_secs} s; retry after {retry_after_secs} s"
    )]
    RateLimited {
        retry_after_secs: u64,
        limit: u32,
        window_secs: u64,
    },
    /// 429: the order's own token bucket is empty: more commands for one order than it may take
    /// per second (per API process), however many clients send them.
    #[error(
        "this order takes at most {per_second} commands per second; retry after {retry_after_secs} s"
    )]
    OrderRateLimited {
        per_second: u32,
        retry_after_secs: u64,
    },
    /// 429: the order has its maximum of commands accepted but not yet finished, or as many
    /// requests for it are already waiting at its gate in this API process.
    #[error(
        "this order already has {0} commands waiting for the worker, or as many requests arriving at once; retry when some have finished"
    )]
    OrderBusy(i64),
    /// 429: the client already holds its maximum of open long-polls.
    #[error("at most {0} long-polls (?wait=) per client may be open at once")]
    TooManyWaits(usize),
    /// 429: the client already holds its maximum of open SSE streams.
    #[error("at most {0} event streams per client may be open at once")]
    TooManyStreams(usize),
    /// 409: the client has as many webhook endpoints as it may.
    #[error("this client has {0} webhook endpoints, the most it may have: delete one first")]
    TooManyEndpoints(i64),
    /// 410: the events after the position a feed asked for were pruned (older than the
    /// retention): reading on from there would skip some without saying.
    #[error(
        "the events after {after} are no longer kept (the feed keeps events for a limited time and \
         has pruned everything up to {pruned_through}); read again without a position (from the \
         oldest event kept) or from now, and reconcile what was missed from the orders themselves"
    )]
    EventsPruned { after: i64, pruned_through: i64 },
    /// 503: the server is at its in-flight limit or the request took too long.
    #[error("the server is overloaded; retry later")]
    Overloaded,
    /// 503: the partition queue is full; the command was not enqueued and will never run.
    #[error("the order's partition queue is full; the command was not accepted and will not run")]
    QueueFull,
    /// 503: a dependency (PostgreSQL, RabbitMQ) is unavailable; nothing was accepted.
    #[error("a backing service is unavailable; nothing was accepted")]
    Unavailable(#[source] anyhow::Error),
    /// 500: a bug. The body says nothing more.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RoleRequired(_) => (StatusCode::FORBIDDEN, "role-required"),
            ApiError::CsrfTokenMissing => (StatusCode::FORBIDDEN, "csrf-token-missing"),
            ApiError::PeopleOnly => (StatusCode::FORBIDDEN, "people-only"),
            ApiError::SignInFailed => (StatusCode::UNAUTHORIZED, "sign-in-failed"),
            ApiError::SignInThrottled { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "sign-in-throttled")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json"),
            ApiError::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
            ApiError::MergePatchRequired => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            ApiError::PreconditionRequired => {
                (StatusCode::PRECONDITION_REQUIRED, "precondition-required")
            }
            ApiError::PreconditionFailed { .. } => {
                (StatusCode::PRECONDITION_FAILED, "precondition-failed")
            }
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body-timeout"),
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
            ),
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid-request"),
            ApiError::IdempotencyMismatch => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused")
            }
            ApiError::IdempotencyInFlight => (StatusCode::CONFLICT, "idempotency-key-in-flight"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            ApiError::OrderBusy(_) => (StatusCode::TOO_MANY_REQUESTS, "order-busy"),
            ApiError::OrderRateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "order-rate-limited")
            }
            ApiError::TooManyWaits(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many-waits"),
            ApiError::TooManyStreams(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many-streams"),
            ApiError::EventsPruned { .. } => (StatusCode::GONE, "events-pruned"),
            ApiError::TooManyEndpoints(_) => (StatusCode::CONFLICT, "too-many-webhook-endpoints"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "queue-full"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that cannot be reached is a 503 (retry later); anything else is a bug.
    fn from(error: sqlx::Error) -> Self {
        if orderflow_storage::is_transient(&error) {
            ApiError::Unavailable(error.into())
        } else {
            ApiError::Internal(error.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_type();
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            ApiError::Unavailable(e) => tracing::warn!(error = ?e, "dependency unavailable"),
            _ => {}
        }
        let body = Problem {
            kind: format!("https://orderflow.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // A bucket knows when its next token comes; the other refusals say a second.
        let retry_after = match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::OrderRateLimited {
                retry_after_secs, ..
            }
            | ApiError::SignInThrottled { retry_after_secs } => {
                Some(HeaderValue::from(*retry_after_secs))
            }
            ApiError::TooManyWaits(_) | ApiError::TooManyStreams(_) | ApiError::OrderBusy(_) => {
                Some(HeaderValue::from_static(RETRY_AFTER_SECS))
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                Some(HeaderValue::from_static(RETRY_AFTER_SECS))
            }
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
        if let ApiError::RateLimited {
            retry_after_secs,
            limit,
            window_secs,
        } = &self
        {
            // RateLimit-* as in draft-ietf-httpapi-ratelimit-headers.
            let number = |n: u64| HeaderValue::from(n);
            headers.insert("ratelimit-limit", number(u64::from(*limit)));
            headers.insert("ratelimit-remaining", number(0));
            headers.insert("ratelimit-reset", number(*retry_after_secs));
            headers.insert(
                "ratelimit-policy",
                HeaderValue::from_str(&format!("{limit};w={window_secs}"))
                    .expect("digits and ';w=' are a valid header"),
            );
        }
        if let ApiError::PreconditionFailed { current } = &self {
            headers.insert(
                header::ETAG,
                HeaderValue::from_str(&format!("\"{current}\""))
                    .expect("a number in quotes is a valid header"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
