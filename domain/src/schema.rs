//! OpenAPI schemas of the validated values, written out by hand because a derive cannot see the
//! bounds their `TryFrom` enforces. Every bound comes from [`limits`], so the published schema
//! and the parser cannot drift apart; the API's tests check the document against the server.

use super::values::{Currency, CustomerId, Item, Items, Note, Quantity, Sku, UnitPrice, limits};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// A string of 1 to `max` of `[A-Za-z0-9._:-]` (what `printable_id` accepts).
fn printable_id(max: usize, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(format!("^[A-Za-z0-9._:-]{{1,{max}}}$")))
        .description(Some(description))
        .into()
}

fn integer(min: i64, max: i64, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(max))
        .description(Some(description))
        .into()
}

impl PartialSchema for Sku {
    fn schema() -> RefOr<Schema> {
        printable_id(
            limits::SKU_MAX_LEN,
            "Stock-keeping unit: letters, digits, '.', '_', ':', '-'.",
        )
    }
}
impl ToSchema for Sku {}

impl PartialSchema for CustomerId {
    fn schema() -> RefOr<Schema> {
        printable_id(
            limits::CUSTOMER_ID_MAX_LEN,
            "The caller's own customer reference: letters, digits, '.', '_', ':', '-'.",
        )
    }
}
impl ToSchema for CustomerId {}

impl PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(3))
            .max_length(Some(3))
            .pattern(Some("^[A-Z]{3}$"))
            .description(Some("ISO 4217 code: three upper-case letters."))
            .into()
    }
}
impl ToSchema for Currency {}

impl PartialSchema for Quantity {
    fn schema() -> RefOr<Schema> {
        integer(1, limits::QUANTITY_MAX, "A quantity of one SKU.")
    }
}
impl ToSchema for Quantity {}

impl PartialSchema for UnitPrice {
    fn schema() -> RefOr<Schema> {
        integer(
            0,
            limits::UNIT_PRICE_MAX_CENTS,
            "Unit price in minor units (cents).",
        )
    }
}
impl ToSchema for UnitPrice {}

impl PartialSchema for Items {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(Item::name()))
            .max_items(Some(limits::ITEMS_MAX))
            .description(Some(
                "The order's lines. Each sku may appear only once (JSON Schema cannot say so; \
                 a duplicate is refused with 422).",
            ))
            .into()
    }
}
impl ToSchema for Items {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Item::name().into(), Item::schema()));
        <Item as ToSchema>::schemas(schemas);
    }
}

impl PartialSchema for Note {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(limits::REASON_MAX_LEN))
            // Control characters are C0, DEL and C1 (`char::is_control`).
            .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]*$"))
            .description(Some("Free text without control characters."))
            .into()
    }
}
impl ToSchema for Note {}
