//! Validated values. Each is built only by parsing (serde goes through the same `TryFrom`), so a
//! value that exists is a value that is within bounds: the API and the worker cannot disagree.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The bounds every input is held to. They are part of the public contract (README, JSON Schema).
pub mod limits {
    pub const SKU_MAX_LEN: usize = 64;
    pub const CUSTOMER_ID_MAX_LEN: usize = 128;
    pub const QUANTITY_MAX: i64 = 10_000;
    pub const UNIT_PRICE_MAX_CENTS: i64 = 100_000_000;
    pub const ITEMS_MAX: usize = 100;
    pub const REASON_MAX_LEN: usize = 500;
    pub const TRACKING_NUMBER_MAX_LEN: usize = 64;
}

fn printable_id(value: &str, what: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("{what} must be 1 to {max} characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(format!(
            "{what} may contain only letters, digits, '-', '_', '.' and ':'"
        ));
    }
    Ok(())
}

/// A stock-keeping unit: 1–64 of `[A-Za-z0-9-_.:]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub fn parse(value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        printable_id(&value, "sku", limits::SKU_MAX_LEN)?;
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(value)
    }
}
impl From<Sku> for String {
    fn from(value: Sku) -> String {
        value.0
    }
}
impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The caller's own customer reference: 1–128 of `[A-Za-z0-9-_.:]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for CustomerId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        printable_id(&value, "customer_id", limits::CUSTOMER_ID_MAX_LEN)?;
        Ok(Self(value))
    }
}
impl From<CustomerId> for String {
    fn from(value: CustomerId) -> String {
        value.0
    }
}

/// A carrier's tracking number, given when an order ships: 1–64 of `[A-Za-z0-9-_.:]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrackingNumber(String);

impl TrackingNumber {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for TrackingNumber {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        printable_id(&value, "tracking_number", limits::TRACKING_NUMBER_MAX_LEN)?;
        Ok(Self(value))
    }
}
impl From<TrackingNumber> for String {
    fn from(value: TrackingNumber) -> String {
        value.0
    }
}

/// An ISO 4217 code: three upper-case ASCII letters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(value))
        } else {
            Err("currency must be an ISO 4217 code: three upper-case letters".into())
        }
    }
}
impl From<Currency> for String {
    fn from(value: Currency) -> String {
        value.0
    }
}

/// A whole number as JSON Schema (2020-12) means `integer`: any number with a zero fractional
/// part, so `2`, `2.0` and `2e3` are all integers, and `2.5` is not. serde's `i64` takes only the
/// first spelling; a generic client that writes `234173.0` for an integer field is within the
/// published schema and must not be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Integer(pub i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Integer;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Integer, E> {
                Ok(Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Integer, E> {
                i64::try_from(v)
                    .map(Integer)
                    .map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Integer, E> {
                // 2^63 is the first float past i64::MAX; every float below it converts exactly.
                if v.fract() == 0.0 && v >= -(2f64.powi(63)) && v < 2f64.powi(63) {
                    Ok(Integer(v as i64))
                } else {
                    Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// For `#[serde(deserialize_with = "…")]` on an `i64` field: an [`Integer`].
pub fn deserialize_integer<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    Integer::deserialize(deserializer).map(|i| i.0)
}

/// A quantity of one SKU: 1 to 10,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "Integer", into = "i64")]
pub struct Quantity(i64);

impl TryFrom<Integer> for Quantity {
    type Error = String;
    fn try_from(value: Integer) -> Result<Self, String> {
        Self::try_from(value.0)
    }
}

impl Quantity {
    pub fn get(self) -> i64 {
        self.0
    }
}
impl TryFrom<i64> for Quantity {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        if (1..=limits::QUANTITY_MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!(
                "quantity must be between 1 and {}",
                limits::QUANTITY_MAX
            ))
        }
    }
}
impl From<Quantity> for i64 {
    fn from(value: Quantity) -> i64 {
        value.0
    }
}

/// A unit price in minor units (cents): 0 to 100,000,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Integer", into = "i64")]
pub struct UnitPrice(i64);

impl TryFrom<Integer> for UnitPrice {
    type Error = String;
    fn try_from(value: Integer) -> Result<Self, String> {
        Self::try_from(value.0)
    }
}

impl UnitPrice {
    pub fn cents(self) -> i64 {
        self.0
    }
}
impl TryFrom<i64> for UnitPrice {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        if (0..=limits::UNIT_PRICE_MAX_CENTS).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!(
                "unit_price_cents must be between 0 and {}",
                limits::UNIT_PRICE_MAX_CENTS
            ))
        }
    }
}
impl From<UnitPrice> for i64 {
    fn from(value: UnitPrice) -> i64 {
        value.0
    }
}

/// One order line. Read from a JSON object only: serde reads a struct from an array of its
/// fields in order too, which the published schema does not allow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// `deny_unknown_fields` for the OpenAPI schema's `additionalProperties: false`; `Fields` below
// is what refuses an unknown field.
#[serde(
    deny_unknown_fields,
    try_from = "serde_json::Map<String, serde_json::Value>"
)]
pub struct Item {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price_cents: UnitPrice,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for Item {
    type Error = String;
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            sku: Sku,
            quantity: Quantity,
            unit_price_cents: UnitPrice,
        }
        let f: Fields =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        Ok(Item {
            sku: f.sku,
            quantity: f.quantity,
            unit_price_cents: f.unit_price_cents,
        })
    }
}

impl Item {
    /// Cannot overflow: both factors are bounded (10^4 × 10^8).
    pub fn line_total_cents(&self) -> i64 {
        self.quantity.get() * self.unit_price_cents.cents()
    }
}

/// The lines of a new order: at most 100, each SKU at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Item>", into = "Vec<Item>")]
pub struct Items(Vec<Item>);

impl Items {
    pub fn as_slice(&self) -> &[Item] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<Item> {
        self.0
    }
}
impl TryFrom<Vec<Item>> for Items {
    type Error = String;
    fn try_from(items: Vec<Item>) -> Result<Self, String> {
        if items.len() > limits::ITEMS_MAX {
            return Err(format!("an order has at most {} items", limits::ITEMS_MAX));
        }
        let mut seen = BTreeSet::new();
        for item in &items {
            if !seen.insert(item.sku.as_str()) {
                return Err(format!("sku {} appears twice; give it one line", item.sku));
            }
        }
        Ok(Self(items))
    }
}
impl From<Items> for Vec<Item> {
    fn from(value: Items) -> Vec<Item> {
        value.0
    }
}

/// Free text a caller attaches to a cancel: at most 500 characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Note(String);

impl TryFrom<String> for Note {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if value.chars().count() > limits::REASON_MAX_LEN || value.chars().any(char::is_control) {
            Err(format!(
                "reason must be at most {} characters without control characters",
                limits::REASON_MAX_LEN
            ))
        } else {
            Ok(Self(value))
        }
    }
}
impl From<Note> for String {
    fn from(value: Note) -> String {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_may_be_written_as_a_float_with_no_fraction() {
        let parse = |json: &str| serde_json::from_str::<Integer>(json).map(|i| i.0);
        assert_eq!(parse("234173").unwrap(), 234173);
        assert_eq!(parse("234173.0").unwrap(), 234173);
        assert_eq!(parse("2e3").unwrap(), 2000);
        assert!(parse("2.5").is_err());
        assert!(parse("1e300").is_err());
        assert!(parse("\"2\"").is_err());
        assert_eq!(serde_json::from_str::<Quantity>("3.0").unwrap().get(), 3);
    }
    use serde_json::json;

    #[test]
    fn values_out_of_bounds_do_not_parse() {
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("a b").is_err());
        assert!(Sku::parse("x".repeat(65)).is_err());
        assert!(Sku::parse("SKU-1.a:b_c").is_ok());
        assert!(serde_json::from_value::<Quantity>(json!(0)).is_err());
        assert!(serde_json::from_value::<Quantity>(json!(10_001)).is_err());
        assert!(serde_json::from_value::<Quantity>(json!(1.5)).is_err());
        assert!(serde_json::from_value::<UnitPrice>(json!(-1)).is_err());
        assert!(serde_json::from_value::<Currency>(json!("eur")).is_err());
        assert!(serde_json::from_value::<Currency>(json!("EURO")).is_err());
        assert_eq!(
            serde_json::from_value::<Currency>(json!("EUR"))
                .unwrap()
                .as_str(),
            "EUR"
        );
    }

    #[test]
    fn a_line_is_an_object_never_an_array_of_its_fields() {
        let error = serde_json::from_value::<Items>(json!([["A", 1, 100]]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("map"), "{error}");
        let line: Item =
            serde_json::from_value(json!({"sku": "A", "quantity": 1, "unit_price_cents": 100}))
                .unwrap();
        assert_eq!(line.sku.as_str(), "A");
    }

    #[test]
    fn items_refuse_duplicate_skus_and_unknown_fields() {
        let dup = json!([
            {"sku": "A", "quantity": 1, "unit_price_cents": 1},
            {"sku": "A", "quantity": 2, "unit_price_cents": 1}
        ]);
        let err = serde_json::from_value::<Items>(dup)
            .unwrap_err()
            .to_string();
        assert!(err.contains("appears twice"), "{err}");
        let extra = json!([{"sku": "A", "quantity": 1, "unit_price_cents": 1, "discount": 5}]);
        assert!(serde_json::from_value::<Items>(extra).is_err());
    }
}
