//! Extractors that turn a request into validated values or an [`ApiError`] — never axum's
//! plain-text rejections, so every 4xx has the same problem+json shape.

use crate::admission::{Credential, presented_key};
use crate::error::ApiError;
use crate::openapi::MAX_IDEMPOTENCY_KEY_LEN;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use orderflow_storage::clients::Client;
use serde::de::DeserializeOwned;

/// The authenticated client.
pub struct Caller(pub Client);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = authenticated(parts, state).await?;
        state.limits.check(&client)?;
        Ok(Caller(client))
    }
}

/// The client whose key the request presents (`Authorization: Bearer`), as the admission
/// middleware found it (see [`crate::admission`]); looked up here only where that did not run.
/// An operator's session is no client: the API's routes answer it 401.
pub async fn authenticated(parts: &Parts, state: &AppState) -> Result<Client, ApiError> {
    match parts.extensions.get::<Credential>() {
        Some(Credential::Valid(client)) => return Ok(client.clone()),
        Some(Credential::Invalid | Credential::Operator(_)) => return Err(ApiError::Unauthorized),
        None => {}
    }
    match presented_key(&parts.headers)? {
        Some(key) if !key.is_empty() => state.keys.authenticate(&state.db, key).await,
        _ => Err(ApiError::Unauthorized),
    }
}

/// The address the request came from (the TCP peer: behind a proxy, the proxy's), when the
/// server loop recorded it.
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// An authenticated admin client.
pub struct Admin(pub Client);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(client) = Caller::from_request_parts(parts, state).await?;
        if client.is_admin {
            Ok(Admin(client))
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// A JSON body parsed strictly into `T`, keeping the raw value for fingerprinting.
pub struct StrictJson<T> {
    pub value: T,
    /// The body as parsed JSON, for the idempotency fingerprint.
    pub raw: serde_json::Value,
}

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a request may take to send its whole body: a client that starts a body and stalls
/// gets 408 and gives its in-flight slot back (see [`crate::admission`]).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = media_type(&req)
            .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::BodyTimeout(BODY_READ_TIMEOUT.as_secs()))?
            .map_err(|_| ApiError::PayloadTooLarge(MAX_BODY_BYTES))?;
        let raw: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        // Serde reads a struct from a JSON array too (its fields in order); every body here is an
        // object with named fields.
        if !raw.is_object() {
            return Err(ApiError::InvalidBody(
                "the body must be a JSON object".into(),
            ));
        }
        // Straight from the bytes (not from `raw`), so that a duplicated key is refused rather
        // than silently merged; the detail names the field that was refused
        // (`shipping_address.country: must be …`).
        let mut reader = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            let culprit = (e.path().to_string() == ".")
                .then(|| tagged_member_at_fault::<T>(&raw))
                .flatten();
            ApiError::InvalidBody(match culprit {
                Some(member) => format!("{member}: {}", e.inner()),
                None => e.to_string(),
            })
        })?;
        Ok(StrictJson { value, raw })
    }
}

/// The member of an internally tagged body (`{"type": …, …}`, a command) whose value was refused.
/// Serde reads such a body into a buffer before it knows the variant, and an error from the
/// buffer carries no path, so `serde_path_to_error` cannot name the member as it does for a
/// plain struct (`"quantity": "2"` said only `invalid type: string "2", expected i64`). Only on
/// that error path: the tag is read again with each member alone; the member whose value is
/// refused there is the one (a valid member alone is refused only as `missing field`). A body
/// is at most [`MAX_BODY_BYTES`], so this costs at most a few reads of it.
fn tagged_member_at_fault<T: DeserializeOwned>(raw: &serde_json::Value) -> Option<String> {
    let object = raw.as_object()?;
    let tag = object.get("type")?;
    object
        .iter()
        .filter(|(name, _)| name.as_str() != "type")
        .find_map(|(name, value)| {
            let alone = serde_json::Value::Object(serde_json::Map::from_iter([
                ("type".to_owned(), tag.clone()),
                (name.clone(), value.clone()),
            ]));
            match serde_json::from_value::<T>(alone) {
                Ok(_) => None,
                Err(e) => {
                    let refusal = e.to_string();
                    let about_another = refusal.starts_with("missing field")
                        || refusal.starts_with("unknown field")
                        || refusal.starts_with("unknown variant");
                    (!about_another).then(|| name.clone())
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::tagged_member_at_fault;
    use orderflow_domain::Command;
    use serde_json::json;

    #[test]
    fn the_member_of_a_command_whose_value_was_refused_is_named() {
        for (body, member) in [
            (
                json!({"type": "add_item", "sku": "A", "quantity": "2", "unit_price_cents": 1}),
                Some("quantity"),
            ),
            (
                json!({"type": "ship", "tracking_number": 12}),
                Some("tracking_number"),
            ),
            (
                json!({"type": "add_item", "sku": "a b", "quantity": 1, "unit_price_cents": 1}),
                Some("sku"),
            ),
            // Refusals that are not about one member's value name none.
            (json!({"type": "add_item", "sku": "A"}), None),
            (json!({"type": "ship", "floor": 3}), None),
            (json!({"type": "teleport", "to": "Mars"}), None),
        ] {
            assert_eq!(
                tagged_member_at_fault::<Command>(&body).as_deref(),
                member,
                "{body}"
            );
        }
    }
}

/// The request's media type, lower-case, without parameters.
fn media_type(req: &Request) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
}

/// A merge patch body (RFC 7396): `application/merge-patch+json` only, then as [`StrictJson`].
pub struct MergePatchJson<T>(pub StrictJson<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for MergePatchJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_merge_patch =
            media_type(&req).is_some_and(|mime| mime == "application/merge-patch+json");
        if !is_merge_patch {
            return Err(ApiError::MergePatchRequired);
        }
        StrictJson::from_request(req, state)
            .await
            .map(MergePatchJson)
    }
}

/// Path parameters, parsed; a malformed id is a 400 with the reason.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::InvalidRequest(format!("invalid path: {}", e.body_text())))
    }
}

/// Query parameters, parsed; unknown or malformed ones are a 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::InvalidRequest(format!("invalid query: {}", e.body_text())))
    }
}

/// The required `Idempotency-Key` header of a POST: 1–255 visible ASCII characters.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let OptionalIdempotencyKey(key) =
            OptionalIdempotencyKey::from_request_parts(parts, state).await?;
        key.map(IdempotencyKey).ok_or_else(|| {
            ApiError::InvalidRequest("the Idempotency-Key header is required on every POST".into())
        })
    }
}

/// An `Idempotency-Key` header where it may be left out (a PATCH, safe to retry by its
/// `If-Match`): the same rules when it is sent.
pub struct OptionalIdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for OptionalIdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.headers.get_all("idempotency-key").iter().count() > 1 {
            return Err(ApiError::InvalidRequest(
                "send one Idempotency-Key header, not several".into(),
            ));
        }
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(OptionalIdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| {
                (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&k.len())
                    && k.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::InvalidRequest(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                )
            })?;
        Ok(OptionalIdempotencyKey(Some(key.to_owned())))
    }
}

/// The optional `If-Match: "<version>"` header: the version the command expects.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(header::IF_MATCH).iter();
        let Some(value) = values.next() else {
            return Ok(IfMatch(None));
        };
        // Which one would be meant? Refused rather than guessed.
        if values.next().is_some() {
            return Err(ApiError::InvalidRequest(
                "send one If-Match header, not several".into(),
            ));
        }
        let invalid = || {
            ApiError::InvalidRequest(
                "If-Match must be an order ETag such as \"3\" (the order's version)".into(),
            )
        };
        let text = value.to_str().map_err(|_| invalid())?.trim();
        // `*`, or an empty list of ETags (RFC 9110 §13.1.1, §5.6.1): no condition.
        if text == "*" || text.is_empty() {
            return Ok(IfMatch(None));
        }
        let version = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .filter(|t| !t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(invalid)?;
        Ok(IfMatch(Some(version)))
    }
}

/// When the API received the request (set by the first middleware; now, if it did not run).
#[derive(Clone, Copy, Debug)]
pub struct Received(pub chrono::DateTime<chrono::Utc>);

impl<S: Send + Sync> FromRequestParts<S> for Received {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Received>()
            .copied()
            .unwrap_or_else(|| Received(chrono::Utc::now())))
    }
}
