//! The small schemas and headers the response pieces and parameters are built from.

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{ContentBuilder, KnownFormat, Ref, RefOr};

pub(super) fn header(schema: impl Into<RefOr<Schema>>, description: &str) -> Header {
    let mut header = HeaderBuilder::new().schema(schema).build();
    header.description = Some(description.to_owned());
    header
}

pub(super) fn integer(minimum: i64) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(minimum))
        .into()
}

pub(super) fn string_matching(pattern: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .into()
}

pub(super) fn retry_after() -> Header {
    header(integer(1), "Seconds to wait before retrying.")
}

pub(super) fn json_body(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .build()
}

pub(super) fn uuid_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}
