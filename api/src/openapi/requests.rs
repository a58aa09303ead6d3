//! What requests carry, for the handlers' `#[utoipa::path]`: the `Idempotency-Key` and
//! `If-Match` headers, the `{order_id}` path parameter, and the commands route's body.

use super::schemas::{string_matching, uuid_schema};
use super::{MAX_IDEMPOTENCY_KEY_LEN, close_variants};
use orderflow_domain::Command;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, Required};
use utoipa::{IntoParams, PartialSchema, ToSchema};

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

/// The required `Idempotency-Key` of every POST (see [`crate::extract::IdempotencyKey`]).
pub struct IdempotencyKeyHeader;

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = idempotency_key_schema();
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

/// The `Last-Event-ID` of `GET /v1/events` (see [`crate::routes::events`]).
pub struct LastEventIdHeader;

impl IntoParams for LastEventIdHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "Last-Event-ID",
            ParameterIn::Header,
            false,
            string_matching("^[0-9]{1,18}$"),
            "The `id` of the last event the client handled: the feed goes on after it. What a \
             browser's `EventSource` sends when it reconnects; it wins over `after`.",
        )]
    }
}

/// 1 to 255 visible ASCII characters (what [`crate::extract::OptionalIdempotencyKey`] accepts).
fn idempotency_key_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_IDEMPOTENCY_KEY_LEN))
        .pattern(Some(format!("^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LEN}}}$")))
}

/// The optional `Idempotency-Key` of `PATCH /v1/orders/{order_id}`.
pub struct OptionalIdempotencyKeyHeader;

impl IntoParams for OptionalIdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = idempotency_key_schema();
        vec![parameter(
            "Idempotency-Key",
            ParameterIn::Header,
            false,
            schema,
            "Optional here: without it the request names itself by its order, `If-Match` and \
             patch, so the same request again answers the first response. 1 to 255 visible \
             ASCII characters.",
        )]
    }
}

/// The required `If-Match` of `PATCH /v1/orders/{order_id}`.
pub struct RequiredIfMatchHeader;

impl IntoParams for RequiredIfMatchHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "If-Match",
            ParameterIn::Header,
            true,
            string_matching("^\"[0-9]{1,18}\"$"),
            "The order's ETag (`\"<version>\"`) the patch was made against. Absent (or `*`): \
             428. Older than the order's version: 412 with the current `ETag`.",
        )]
    }
}

/// The optional `Idempotency-Key` of `PUT /v1/orders/{order_id}/shipping-address`: the PUT is
/// safe to retry without one.
pub struct PutIdempotencyKeyHeader;

impl IntoParams for PutIdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "Idempotency-Key",
            ParameterIn::Header,
            false,
            idempotency_key_schema(),
            "Optional here: the PUT is idempotent by its nature (the same address again is \
             applied with no change), so a retry without a key is safe. With one, the same \
             request again answers the first response. 1 to 255 visible ASCII characters.",
        )]
    }
}

/// The optional `If-Match` of `PUT /v1/orders/{order_id}/shipping-address`.
pub struct PutIfMatchHeader;

impl IntoParams for PutIfMatchHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "If-Match",
            ParameterIn::Header,
            false,
            string_matching("^(\\*|\"[0-9]{1,18}\")?$"),
            "The order's ETag (`\"<version>\"`) the new address was chosen against. Older than \
             the order's version: 412 with the current `ETag`; overtaken after it was accepted: \
             `rejected` with `version_conflict`. `*`, empty or absent: any version. (A retry \
             of a PUT that was applied should leave it out: the order's version has moved.)",
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
