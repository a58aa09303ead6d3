//! The OpenAPI 3.1 document, generated from the code: every route is registered through
//! `utoipa_axum::routes!`, so the document lists exactly the routes the router serves; each
//! handler's `#[utoipa::path]` lists every status it can answer, with the response pieces
//! defined once (in `responses`). Served at `/openapi.json`, with Swagger UI (vendored, nothing
//! is downloaded) at `/docs`; neither needs a key. CI fuzzes the live API against it
//! (schemathesis).
//!
//! | module | what |
//! |---|---|
//! | this one | the document: [`ApiDoc`], its security scheme, and what [`document`] adds to it |
//! | `responses` | the response pieces the handlers' `#[utoipa::path]` name |
//! | `requests` | the request headers, path parameters and body schemas they name |
//! | `schemas` | the small schemas and headers both are built from |

mod requests;
mod responses;
mod schemas;

use crate::state::AppState;
use orderflow_domain::Command;
use serde::Serialize;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

pub use requests::{
    IdempotencyKeyHeader, IfMatchHeader, LastEventIdHeader, OptionalIdempotencyKeyHeader,
    OrderCommand, OrderIdPath, PutIdempotencyKeyHeader, PutIfMatchHeader, RequiredIfMatchHeader,
};
pub use responses::{
    AcceptedResponse, BadBodyRequest, BadRequest, EventsPruned, Forbidden, IdempotencyInFlight,
    InvalidBody, MergePatchRequired, NotAccepted, NotFound, OrderNotFound, OrderResponse,
    PayloadTooLarge, PreconditionFailed, PreconditionRequired, RateLimited, RateLimitedOrOrderBusy,
    RateLimitedOrTooManyStreams, RateLimitedOrTooManyWaits, TooManyEndpoints, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};

/// The security scheme every `/v1` operation requires (the handlers' `security(("bearer" = []))`).
pub const BEARER: &str = "bearer";

/// Longest `Idempotency-Key` (see [`crate::extract::IdempotencyKey`]).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Response headers that are always present when a response documents them; the rest
/// (`RateLimit-*`, `Idempotent-Replayed`) only sometimes. utoipa's `Header` cannot say
/// `required`, so [`document`] adds it.
const REQUIRED_RESPONSE_HEADERS: [&str; 4] =
    ["Retry-After", "WWW-Authenticate", "Location", "ETag"];

/// An error body (RFC 9457 problem details); `type` is stable, callers branch on it.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `https://orderflow.dev/problems/<name>`, e.g. `…/invalid-body`.
    #[serde(rename = "type")]
    #[schema(pattern = "^https://orderflow\\.dev/problems/[a-z-]+$")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status code, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What exactly was wrong (4xx), or nothing specific (5xx).
    pub detail: String,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "orderflow",
        description = "Order-processing API: commands are recorded, enqueued and answered `202 Accepted`; \
                       a worker applies them one at a time per order. Every error is \
                       `application/problem+json`. Every `/v1` request needs `Authorization: Bearer <key>`. \
                       Retrying safely: every POST needs an `Idempotency-Key` (a retry with it answers the \
                       first response); `PATCH /v1/orders/{order_id}` may leave it out, as it names the \
                       version it changes (`If-Match`, required) and the same patch on the same version \
                       is the same request; `PUT /v1/orders/{order_id}/shipping-address` and \
                       `PUT /v1/inventory/{sku}` are idempotent by their nature and need no key (the \
                       same address again is applied with no change: reason `unchanged`); GETs change \
                       nothing."
    ),
    // The schemas the hand-written responses below refer to; the derive collects what they
    // refer to in turn, and `routes!` the schemas of every handler's bodies.
    components(schemas(Problem, crate::intake::Accepted, crate::routes::orders::OrderView, Command)),
    modifiers(&BearerScheme),
    tags(
        (name = "orders", description = "Create orders, send them commands, read them"),
        (name = "commands", description = "The status of an accepted command"),
        (name = "events", description = "The caller's own feed of what became of its commands"),
        (name = "webhooks", description = "The caller's events, POSTed to its endpoints, signed"),
        (name = "inventory", description = "Stock per SKU"),
        (name = "health", description = "Liveness and readiness")
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `orderflow-api client create`, as `Authorization: Bearer <key>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The final document: utoipa's, with what utoipa cannot express added: `required: true` on
/// the headers that always come, closed variants of [`Command`], links spelled right, and the
/// 431 that every route answers (a server-wide layer, not a handler, sends it).
pub fn document(openapi: &OpenApi) -> serde_json::Value {
    let mut document = serde_json::to_value(openapi).expect("the OpenAPI document serializes");
    close_variants(&mut document["components"]["schemas"]["Command"]);
    let headers_too_large = serde_json::to_value(
        responses::problem(&format!(
            "`headers-too-large`: more than {} request headers, or more than {} bytes of them.",
            crate::routes::MAX_HEADERS,
            crate::routes::MAX_HEADER_BYTES
        ))
        .build(),
    )
    .expect("a response serializes");
    let operations = document["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let responses = operation
            .get_mut("responses")
            .and_then(|r| r.as_object_mut());
        if let Some(responses) = responses {
            responses.insert("431".to_owned(), headers_too_large.clone());
        }
        let responses = operation["responses"].as_object_mut().into_iter();
        for response in responses.flat_map(|r| r.values_mut()) {
            // utoipa 5.5 writes a link's fields in snake case; OpenAPI spells them in camel case.
            let links = response.get_mut("links").and_then(|l| l.as_object_mut());
            for link in links.into_iter().flat_map(|l| l.values_mut()) {
                let link = link.as_object_mut().expect("a link is an object");
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(value) = link.remove(snake) {
                        link.insert(camel.to_owned(), value);
                    }
                }
            }
            let headers = response.get_mut("headers").and_then(|h| h.as_object_mut());
            for (name, header) in headers.into_iter().flatten() {
                if REQUIRED_RESPONSE_HEADERS.contains(&name.as_str()) {
                    header["required"] = serde_json::Value::Bool(true);
                }
            }
        }
    }
    document
}

/// Refuses unknown fields in every variant of a tagged enum's schema, as
/// `#[serde(deny_unknown_fields)]` does (utoipa only says so for structs), and titles each
/// variant with its tag.
fn close_variants(schema: &mut serde_json::Value) {
    for variant in schema["oneOf"].as_array_mut().into_iter().flatten() {
        variant["additionalProperties"] = false.into();
        if let Some(tag) = variant["properties"]["type"]["enum"][0].as_str() {
            variant["title"] = tag.into();
        }
    }
}

/// `/openapi.json` (the document) and `/docs` (Swagger UI reading it), without authentication.
pub fn router(openapi: &OpenApi) -> axum::Router<AppState> {
    SwaggerUi::new("/docs")
        .external_url_unchecked("/openapi.json", document(openapi))
        .into()
}
