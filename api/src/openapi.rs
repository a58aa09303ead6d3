//! The OpenAPI 3.1 document, generated from the code: every route is registered through
//! `utoipa_axum::routes!`, so the document lists exactly the routes the router serves; each
//! handler's `#[utoipa::path]` lists every status it can answer, with the response pieces
//! defined once here. Served at `/openapi.json`, with Swagger UI (vendored, nothing is
//! downloaded) at `/docs`; neither needs a key. CI fuzzes the live API against it (schemathesis).

use crate::state::AppState;
use orderflow_domain::Command;
use serde::Serialize;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, KnownFormat, OpenApi, Ref, RefOr, Required};
use utoipa::{IntoParams, Modify, PartialSchema, ToResponse, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

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
                       `application/problem+json`. Every `/v1` request needs `Authorization: Bearer <key>`; \
                       every POST an `Idempotency-Key`."
    ),
    // The schemas the hand-written responses below refer to; the derive collects what they
    // refer to in turn, and `routes!` the schemas of every handler's bodies.
    components(schemas(Problem, crate::intake::Accepted, crate::routes::orders::OrderView, Command)),
    modifiers(&BearerScheme),
    tags(
        (name = "orders", description = "Create orders, send them commands, read them"),
        (name = "commands", description = "The status of an accepted command"),
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
        problem(&format!(
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

// ---- Response pieces ------------------------------------------------------------------------

fn header(schema: impl Into<RefOr<Schema>>, description: &str) -> Header {
    let mut header = HeaderBuilder::new().schema(schema).build();
    header.description = Some(description.to_owned());
    header
}

fn integer(minimum: i64) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(minimum))
        .into()
}

fn string_matching(pattern: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .into()
}

fn retry_after() -> Header {
    header(integer(1), "Seconds to wait before retrying.")
}

fn json_body(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .build()
}

fn problem(description: &str) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, json_body("Problem"))
}

/// Declares a problem+json response piece, for `response = inline(..)` in `#[utoipa::path]`.
macro_rules! problem_response {
    ($(#[$doc:meta])* $name:ident, $description:expr $(, $header:expr => $value:expr)* $(,)?) => {
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                let response = problem($description)$(.header($header, $value))*;
                (stringify!($name), response.build().into())
            }
        }
    };
}

problem_response!(
    /// 400 on a route without a body.
    BadRequest,
    "`invalid-request`: a malformed path id, query parameter or header."
);
problem_response!(
    /// 400 on a route with a JSON body.
    BadBodyRequest,
    "`malformed-json`: the body is not JSON; or `invalid-request`: a missing or malformed \
     `Idempotency-Key`, `If-Match`, path id or query parameter."
);
problem_response!(
    Unauthorized,
    "`unauthorized`: no key, or an unknown or revoked one.",
    "WWW-Authenticate" => header(string_matching("^Bearer$"), "Always `Bearer`."),
);
problem_response!(Forbidden, "`forbidden`: this route needs an admin key.");
problem_response!(
    NotFound,
    "`not-found`: no such resource for this client (another client's ids answer exactly the \
     same), or no route for this path."
);
problem_response!(
    OrderNotFound,
    "`not-found`: no such order for this client (another client's ids answer exactly the same). \
     An order accepted with 202 is also 404 here until its `create` command is applied by a \
     worker (and for good if that command is rejected): its command (`Location` of the 202), \
     which exists at once, says when."
);
problem_response!(
    IdempotencyInFlight,
    "`idempotency-key-in-flight`: the first request with this `Idempotency-Key` is still being \
     processed; retry shortly."
);
problem_response!(
    PayloadTooLarge,
    "`payload-too-large`: the body is over 64 KiB."
);
problem_response!(
    UnsupportedMediaType,
    "`unsupported-media-type`: the body is not `application/json`."
);
problem_response!(
    Unprocessable,
    "`invalid-body`: JSON that is not a valid request (`detail` says which field); or \
     `idempotency-key-reused`: this `Idempotency-Key` was used with a different request."
);
problem_response!(
    /// 422 of PUT (no Idempotency-Key there).
    InvalidBody,
    "`invalid-body`: JSON that is not a valid request (`detail` says which field)."
);
problem_response!(
    RateLimited,
    "`rate-limited`: the client's token bucket is empty.",
    "Retry-After" => retry_after(),
    "RateLimit-Limit" => header(integer(1), "The bucket's size (burst)."),
    "RateLimit-Remaining" => header(integer(0), "Requests left now: 0."),
    "RateLimit-Reset" => header(integer(1), "Seconds until a request is allowed again."),
    "RateLimit-Policy" => header(string_matching("^[0-9]+;w=[0-9]+$"), "`<limit>;w=<window seconds>`."),
);
problem_response!(
    /// 429 of the long-poll route: either limit.
    RateLimitedOrTooManyWaits,
    "`rate-limited`: the client's token bucket is empty (with `RateLimit-*` headers); or \
     `too-many-waits`: the client already holds its maximum of open long-polls (`?wait=`).",
    "Retry-After" => retry_after(),
    "RateLimit-Limit" => header(integer(1), "The bucket's size (burst); `rate-limited` only."),
    "RateLimit-Remaining" => header(integer(0), "Requests left now: 0; `rate-limited` only."),
    "RateLimit-Reset" => header(integer(1), "Seconds until a request is allowed again; `rate-limited` only."),
    "RateLimit-Policy" => header(string_matching("^[0-9]+;w=[0-9]+$"), "`<limit>;w=<window seconds>`; `rate-limited` only."),
);
problem_response!(
    /// 429 of a command to an existing order: any of its limits.
    RateLimitedOrOrderBusy,
    "`rate-limited`: the client's token bucket is empty (with `RateLimit-*` headers); \
     `order-rate-limited`: the order has taken its commands per second \
     (`ORDERFLOW_ORDER_RATE_PER_SECOND`), whoever sent them; or \
     `order-busy`: the order already has its maximum of commands accepted but not yet finished \
     (`ORDERFLOW_MAX_PENDING_PER_ORDER`); nothing was accepted.",
    "Retry-After" => retry_after(),
    "RateLimit-Limit" => header(integer(1), "The bucket's size (burst); `rate-limited` only."),
    "RateLimit-Remaining" => header(integer(0), "Requests left now: 0; `rate-limited` only."),
    "RateLimit-Reset" => header(integer(1), "Seconds until a request is allowed again; `rate-limited` only."),
    "RateLimit-Policy" => header(string_matching("^[0-9]+;w=[0-9]+$"), "`<limit>;w=<window seconds>`; `rate-limited` only."),
);
problem_response!(
    /// 503 of a read.
    Unavailable,
    "`overloaded`: the server is at its in-flight limit or the request outlived its timeout; or \
     `unavailable`: PostgreSQL or RabbitMQ cannot be reached.",
    "Retry-After" => retry_after(),
);
problem_response!(
    /// 503 of a POST: nothing was accepted, nothing will run.
    NotAccepted,
    "Nothing was accepted and nothing will run; retry later. `overloaded`: the server is at its \
     in-flight limit or the request outlived its timeout; `queue-full`: the order's partition \
     queue is full; `unavailable`: PostgreSQL or RabbitMQ cannot be reached.",
    "Retry-After" => retry_after(),
);

/// 202 of both POSTs: the command was recorded and enqueued.
pub struct AcceptedResponse;

impl<'r> ToResponse<'r> for AcceptedResponse {
    fn response() -> (&'r str, RefOr<Response>) {
        let response = ResponseBuilder::new()
            .description(
                "The command was recorded and enqueued; follow `Location` (`?wait=` long-polls) \
                 for its outcome. A replay of the same request answers the same, with \
                 `Idempotent-Replayed: true`.",
            )
            .content("application/json", json_body("Accepted"))
            .header(
                "Location",
                header(
                    string_matching("^/v1/commands/[0-9a-f-]{36}$"),
                    "The command's status resource.",
                ),
            )
            .header(
                "Idempotent-Replayed",
                header(
                    string_matching("^true$"),
                    "Present when this answers a replayed request.",
                ),
            )
            .link("command", link("get_command", "command_id", "command_id"))
            .link(
                "order",
                LinkBuilder::new()
                    .operation_id("get_order")
                    .parameter("order_id", "$response.body#/order_id")
                    .description(
                        "The order's projection. It exists once the order's `create` command is \
                         applied (usually milliseconds after the 202): until then, and for good if \
                         the create is rejected, this answers 404. Follow `command` (long-poll it \
                         with `?wait=`) to know when.",
                    )
                    .build(),
            )
            .link("events", link("get_events", "order_id", "order_id"))
            .link("send_command", link("post_command", "order_id", "order_id"));
        ("Accepted", response.build().into())
    }
}

/// A link from the 202 body's `field` to the operation (named by its handler) taking it as
/// `parameter`.
fn link(operation_id: &str, parameter: &str, field: &str) -> Link {
    LinkBuilder::new()
        .operation_id(operation_id)
        .parameter(parameter, format!("$response.body#/{field}"))
        .build()
}

/// 200 of `GET /v1/orders/{order_id}`.
pub struct OrderResponse;

impl<'r> ToResponse<'r> for OrderResponse {
    fn response() -> (&'r str, RefOr<Response>) {
        let response = ResponseBuilder::new()
            .description("The order's projection.")
            .content("application/json", json_body("OrderView"))
            .header(
                "ETag",
                header(
                    string_matching("^\"[0-9]+\"$"),
                    "The order's version in quotes, for `If-Match`.",
                ),
            );
        ("Order", response.build().into())
    }
}

// ---- Parameters ----------------------------------------------------------------------------

fn parameter(
    name: &str,
    location: ParameterIn,
    required: bool,
    schema: impl Into<RefOr<Schema>>,
    description: &str,
) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .schema(Some(schema))
        .description(Some(description))
        .build()
}

fn uuid_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

/// The required `Idempotency-Key` of every POST (see [`crate::extract::IdempotencyKey`]).
pub struct IdempotencyKeyHeader;

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_IDEMPOTENCY_KEY_LEN))
            .pattern(Some(format!("^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LEN}}}$")));
        vec![parameter(
            "Idempotency-Key",
            ParameterIn::Header,
            true,
            schema,
            "Names this request: a retry with the same key and the same request answers the \
             first response. 1 to 255 visible ASCII characters, unique per request; kept at \
             least 24 h.",
        )]
    }
}

/// The optional `If-Match` of the commands route (see [`crate::extract::IfMatch`]).
pub struct IfMatchHeader;

impl IntoParams for IfMatchHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "If-Match",
            ParameterIn::Header,
            false,
            string_matching("^(\\*|\"[0-9]{1,18}\")?$"),
            "The order's ETag (`\"<version>\"`) the command expects; a stale one ends the \
             command `rejected` with `version_conflict`. `*`, empty or absent: any version.",
        )]
    }
}

/// The `{order_id}` of the order routes.
pub struct OrderIdPath;

impl IntoParams for OrderIdPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "order_id",
            ParameterIn::Path,
            true,
            uuid_schema(),
            "The order's id (from the 202 of `POST /v1/orders`).",
        )]
    }
}

/// The body of `POST /v1/orders/{order_id}/commands`: a [`Command`] other than `create`
/// (which the route refuses; orders are created with `POST /v1/orders`).
pub struct OrderCommand;

impl PartialSchema for OrderCommand {
    fn schema() -> RefOr<Schema> {
        let mut schema = serde_json::to_value(Command::schema()).expect("schemas serialize");
        let is_create = |variant: &serde_json::Value| {
            variant["properties"]["type"]["enum"] == serde_json::json!(["create"])
        };
        let variants = schema["oneOf"]
            .as_array_mut()
            .expect("a tagged enum's schema is a oneOf");
        let before = variants.len();
        variants.retain(|variant| !is_create(variant));
        assert_eq!(
            variants.len(),
            before - 1,
            "Command has one `create` variant"
        );
        close_variants(&mut schema);
        schema["description"] = "A command, tagged by `type`; any but `create`.".into();
        serde_json::from_value(schema).expect("a filtered schema is a schema")
    }
}

impl ToSchema for OrderCommand {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <Command as ToSchema>::schemas(schemas);
    }
}
