//! The response pieces of the handlers' `#[utoipa::path]` (`response = inline(..)`): every
//! problem+json error, the 202 of both POSTs and the 200 of an order.

use super::PROBLEM_JSON;
use super::schemas::{header, integer, json_body, retry_after, string_matching};
use utoipa::ToResponse;
use utoipa::openapi::RefOr;
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::response::{Response, ResponseBuilder};

pub(super) fn problem(description: &str) -> ResponseBuilder {
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
    /// 415 of a merge patch route.
    MergePatchRequired,
    "`unsupported-media-type`: the body is not `application/merge-patch+json`."
);
problem_response!(
    PreconditionFailed,
    "`precondition-failed`: `If-Match` names a version older than the order's; the order's \
     current `ETag` comes with it.",
    "ETag" => header(string_matching("^\"[0-9]+\"$"), "The order's current version, quoted."),
);
problem_response!(
    PreconditionRequired,
    "`precondition-required`: `If-Match` is missing (or `*`): a patch must name the version it \
     was made against."
);
problem_response!(
    TooManyEndpoints,
    "`too-many-webhook-endpoints`: the client has 16 webhook endpoints, the most it may have."
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
    /// 410 of the clients' event feed.
    EventsPruned,
    "`events-pruned`: the events after the position asked for are older than the feed keeps \
     (`ORDERFLOW_EVENT_RETENTION_DAYS`, 7 by default); read again without one, and reconcile \
     from the orders themselves."
);
problem_response!(
    /// 429 of the clients' event feed: either limit.
    RateLimitedOrTooManyStreams,
    "`rate-limited`: the client's token bucket is empty (with `RateLimit-*` headers); or \
     `too-many-streams`: the client already holds its maximum of open event streams \
     (`ORDERFLOW_MAX_STREAMS_PER_CLIENT`).",
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
