//! OpenAPI schemas of the validated values, written out by hand because a derive cannot see the
//! bounds their `TryFrom` enforces. Every bound comes from [`limits`], so the published schema
//! and the parser cannot drift apart; the API's tests check the document against the server.

use super::values::{
    Currency, CustomerId, Item, Items, Note, Quantity, Sku, TrackingNumber, UnitPrice, limits,
};
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

impl PartialSchema for TrackingNumber {
    fn schema() -> RefOr<Schema> {
        printable_id(
            limits::TRACKING_NUMBER_MAX_LEN,
            "The carrier's tracking number: letters, digits, '.', '_', ':', '-'.",
        )
    }
}
impl ToSchema for TrackingNumber {}

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

// ---- an order's details (crate::details): inline schemas, every bound from its `limits` ----------

use super::details::{DetailsPatch, OrderDetails, ShippingAddress, limits as details_limits};
use utoipa::openapi::schema::{AdditionalProperties, OneOfBuilder};

/// C0, DEL and C1: what `char::is_control` refuses.
const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

fn text(max: usize, pattern: &str, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

fn nullable(schema: RefOr<Schema>) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(schema)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

fn closed_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

/// (name, schema) of the address's members.
fn address_members() -> [(&'static str, RefOr<Schema>); 5] {
    [
        (
            "name",
            text(
                details_limits::LINE_MAX_CHARS,
                NO_CONTROL,
                "Who receives it.",
            ),
        ),
        (
            "lines",
            ArrayBuilder::new()
                .items(text(
                    details_limits::LINE_MAX_CHARS,
                    NO_CONTROL,
                    "A street line.",
                ))
                .min_items(Some(1))
                .max_items(Some(details_limits::ADDRESS_LINES_MAX))
                .into(),
        ),
        (
            "city",
            text(details_limits::CITY_MAX_CHARS, NO_CONTROL, "The city."),
        ),
        (
            "postal_code",
            text(
                details_limits::POSTAL_CODE_MAX_CHARS,
                "^[A-Za-z0-9 -]*[A-Za-z0-9][A-Za-z0-9 -]*$",
                "Letters, digits, spaces and dashes.",
            ),
        ),
        ("country", text(2, "^[A-Z]{2}$", "ISO 3166-1 alpha-2 code.")),
    ]
}

fn shipping_address() -> RefOr<Schema> {
    let mut object = closed_object().description(Some("Where the order ships to."));
    for (name, schema) in address_members() {
        object = object.property(name, schema).required(name);
    }
    object.into()
}

/// Printable ASCII but `@`; the same without `.` (what `details::Email` accepts).
const EMAIL: &str = "^[!-?A-~]+@[!-\\-/-?A-~][!-?A-~]*\\.[!-?A-~]*[!-\\-/-?A-~]$";
const PHONE: &str = "^\\+?(?:[ ().-]*[0-9]){5}[0-9 ().-]*$";
/// Line breaks and tabs allowed; no other control character.
const NOTE: &str = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$";

fn email() -> RefOr<Schema> {
    text(
        details_limits::EMAIL_MAX_CHARS,
        EMAIL,
        "An email address: local@domain.tld, printable ASCII.",
    )
}

fn phone() -> RefOr<Schema> {
    text(
        details_limits::PHONE_MAX_CHARS,
        PHONE,
        "A phone number: digits, spaces and ( ) - ., an optional leading +, at least 5 digits.",
    )
}

fn note() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(details_limits::NOTE_MAX_CHARS))
        .pattern(Some(NOTE))
        .description(Some("Free text; line breaks and tabs allowed."))
        .into()
}

impl PartialSchema for ShippingAddress {
    fn schema() -> RefOr<Schema> {
        shipping_address()
    }
}
impl ToSchema for ShippingAddress {}

impl PartialSchema for OrderDetails {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .description(Some(
                "What people edit on an order; each member is absent until it is set.",
            ))
            .property("shipping_address", shipping_address())
            .property("contact_email", email())
            .property("contact_phone", phone())
            .property("note", note())
            .into()
    }
}
impl ToSchema for OrderDetails {}

impl PartialSchema for DetailsPatch {
    fn schema() -> RefOr<Schema> {
        let mut address = closed_object().description(Some(
            "The address members to set (each left out stays as it is; none may be null). The \
             merged address must be whole: name, lines, city, postal_code and country.",
        ));
        for (name, schema) in address_members() {
            address = address.property(name, schema);
        }
        closed_object()
            .description(Some(
                "An RFC 7396 merge patch of the order's details: a member left out stays as it \
                 is, null removes it, a value replaces it (shipping_address merges member by \
                 member). At least one member.",
            ))
            .min_properties(Some(1))
            .property("shipping_address", nullable(address.into()))
            .property("contact_email", nullable(email()))
            .property("contact_phone", nullable(phone()))
            .property("note", nullable(note()))
            .into()
    }
}
impl ToSchema for DetailsPatch {}
