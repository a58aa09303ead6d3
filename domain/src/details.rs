//! An order's details — what people edit: the shipping address, a contact email and phone, a
//! note — and the RFC 7396 merge patch that changes them.
//!
//! A patch names only what changes: a member left out stays as it is, `null` removes it, a value
//! replaces it; `shipping_address` merges member by member, and the result must still be a whole
//! address (to remove the address, patch it with `null`). Every value is validated when the patch
//! is parsed, so a patch that exists is within bounds; only whether the merged address is whole
//! depends on the order, and [`merge`] says so.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The bounds of the details (part of the public contract, like [`crate::values::limits`]).
pub mod limits {
    pub const LINE_MAX_CHARS: usize = 200;
    pub const ADDRESS_LINES_MAX: usize = 3;
    pub const CITY_MAX_CHARS: usize = 100;
    pub const POSTAL_CODE_MAX_CHARS: usize = 16;
    pub const EMAIL_MAX_CHARS: usize = 254;
    pub const PHONE_MAX_CHARS: usize = 32;
    pub const NOTE_MAX_CHARS: usize = 2000;
}

macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&value).map(|()| Self(value))
            }
        }
        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(value: &str) -> Result<Self, String> {
                Self::try_from(value.to_owned())
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

/// 1 to `max` characters without control characters.
fn line(value: &str, max: usize) -> Result<(), String> {
    let chars = value.chars().count();
    if chars == 0 || chars > max {
        return Err(format!("must be 1 to {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

string_value!(
    /// A line of an address, or the addressee's name: 1–200 characters.
    Line,
    |v| line(v, limits::LINE_MAX_CHARS)
);
string_value!(
    /// A city: 1–100 characters.
    City,
    |v| line(v, limits::CITY_MAX_CHARS)
);
string_value!(
    /// A postal code: 1–16 letters, digits, spaces and dashes.
    PostalCode,
    |v| {
        let ok = (1..=limits::POSTAL_CODE_MAX_CHARS).contains(&v.len())
            && v.bytes().any(|b| b.is_ascii_alphanumeric())
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "must be 1 to {} letters, digits, spaces and dashes",
                limits::POSTAL_CODE_MAX_CHARS
            ))
        }
    }
);
string_value!(
    /// An ISO 3166-1 alpha-2 country code: two upper-case letters.
    Country,
    |v| {
        if v.len() == 2 && v.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(())
        } else {
            Err("must be an ISO 3166-1 alpha-2 code: two upper-case letters".into())
        }
    }
);
string_value!(
    /// A contact email address, ASCII: `local@domain.tld`, at most 254 characters, no spaces.
    /// (The OpenAPI document's pattern says exactly this.)
    Email,
    |v| {
        let printable = |c: char| ('!'..='~').contains(&c) && c != '@';
        let shaped = v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.chars().all(printable)
                && domain.len() >= 3
                && domain.chars().all(printable)
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
        if shaped && v.len() <= limits::EMAIL_MAX_CHARS {
            Ok(())
        } else {
            Err(format!(
                "must be an email address (local@domain.tld, printable ASCII, at most {} characters)",
                limits::EMAIL_MAX_CHARS
            ))
        }
    }
);
string_value!(
    /// A contact phone number: digits, spaces and `( ) - .`, an optional leading `+`, at least
    /// five digits, at most 32 characters.
    Phone,
    |v| {
        let body = v.strip_prefix('+').unwrap_or(v);
        let ok = v.len() <= limits::PHONE_MAX_CHARS
            && body.bytes().filter(u8::is_ascii_digit).count() >= 5
            && body
                .bytes()
                .all(|b| b.is_ascii_digit() || b" ()-.".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "must be a phone number: digits, spaces and ( ) - ., an optional leading +, at least 5 digits, at most {} characters",
                limits::PHONE_MAX_CHARS
            ))
        }
    }
);
string_value!(
    /// A free-text note on an order: at most 2,000 characters; line breaks and tabs allowed,
    /// no other control characters.
    DetailsNote,
    |v| {
        if v.chars().count() > limits::NOTE_MAX_CHARS {
            return Err(format!("must be at most {} characters", limits::NOTE_MAX_CHARS));
        }
        if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err("must not contain control characters other than line breaks and tabs".into());
        }
        Ok(())
    }
);

/// The street lines of an address: one to three.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Line>", into = "Vec<Line>")]
pub struct AddressLines(Vec<Line>);

impl AddressLines {
    pub fn as_slice(&self) -> &[Line] {
        &self.0
    }
}
impl TryFrom<Vec<Line>> for AddressLines {
    type Error = String;
    fn try_from(lines: Vec<Line>) -> Result<Self, String> {
        if (1..=limits::ADDRESS_LINES_MAX).contains(&lines.len()) {
            Ok(Self(lines))
        } else {
            Err(format!(
                "an address has 1 to {} lines",
                limits::ADDRESS_LINES_MAX
            ))
        }
    }
}
impl From<AddressLines> for Vec<Line> {
    fn from(value: AddressLines) -> Vec<Line> {
        value.0
    }
}

/// Where an order ships to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    /// Who receives it.
    pub name: Line,
    pub lines: AddressLines,
    pub city: City,
    pub postal_code: PostalCode,
    pub country: Country,
}

/// An order's details: each may be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<ShippingAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<Email>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_phone: Option<Phone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<DetailsNote>,
}

/// One member of a merge patch: left out (keep), `null` (remove) or a value (set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Patch<T> {
    #[default]
    Keep,
    Remove,
    Set(T),
}

impl<T> Patch<T> {
    pub fn is_keep(&self) -> bool {
        matches!(self, Patch::Keep)
    }

    /// The member applied to what it patches.
    pub fn apply(&self, current: Option<T>) -> Option<T>
    where
        T: Clone,
    {
        match self {
            Patch::Keep => current,
            Patch::Remove => None,
            Patch::Set(value) => Some(value.clone()),
        }
    }
}

/// Present means `null` or a value; a member left out never reaches here (`#[serde(default)]`
/// makes it [`Patch::Keep`]).
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(deserializer)?.map_or(Patch::Remove, Patch::Set))
    }
}

impl<T: Serialize> Serialize for Patch<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // Left out by `skip_serializing_if`; should it be asked for, it reads as "no change".
            Patch::Keep | Patch::Remove => serializer.serialize_none(),
            Patch::Set(value) => value.serialize(serializer),
        }
    }
}

/// The members of an address a patch sets; an address member cannot be removed (the address
/// would no longer be whole): remove the whole address instead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Line>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<AddressLines>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<City>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<PostalCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<Country>,
}

/// An RFC 7396 merge patch of an order's details. At least one member. Read from a JSON object
/// only (serde would read a struct from an array of its fields in order, too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "serde_json::Map<String, serde_json::Value>",
    into = "RawDetailsPatch"
)]
pub struct DetailsPatch(RawDetailsPatch);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetailsPatch {
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub shipping_address: Patch<AddressPatchValue>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub contact_email: Patch<Email>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub contact_phone: Patch<Phone>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub note: Patch<DetailsNote>,
}

/// An address member of a patch: its members may not be `null` (see [`AddressPatch`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "serde_json::Map<String, serde_json::Value>",
    into = "AddressPatch"
)]
pub struct AddressPatchValue(pub AddressPatch);

impl TryFrom<serde_json::Map<String, serde_json::Value>> for AddressPatchValue {
    type Error = String;
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        if let Some((name, _)) = map.iter().find(|(_, v)| v.is_null()) {
            return Err(format!(
                "shipping_address.{name} cannot be null: an address needs every member (send \"shipping_address\": null to remove the address)"
            ));
        }
        serde_json::from_value(serde_json::Value::Object(map))
            .map(AddressPatchValue)
            .map_err(|e| format!("shipping_address: {e}"))
    }
}
impl From<AddressPatchValue> for AddressPatch {
    fn from(value: AddressPatchValue) -> AddressPatch {
        value.0
    }
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for DetailsPatch {
    type Error = String;
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let raw: RawDetailsPatch =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        let empty = raw.shipping_address.is_keep()
            && raw.contact_email.is_keep()
            && raw.contact_phone.is_keep()
            && raw.note.is_keep();
        if empty {
            return Err(
                "the patch changes nothing: give at least one of shipping_address, contact_email, contact_phone, note"
                    .into(),
            );
        }
        Ok(Self(raw))
    }
}
impl From<DetailsPatch> for RawDetailsPatch {
    fn from(value: DetailsPatch) -> RawDetailsPatch {
        value.0
    }
}

impl DetailsPatch {
    pub fn members(&self) -> &RawDetailsPatch {
        &self.0
    }

    /// Does the patch touch the shipping address?
    pub fn touches_address(&self) -> bool {
        !self.0.shipping_address.is_keep()
    }
}

/// A detail, as a patch or a change names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DetailField {
    ShippingAddress,
    ContactEmail,
    ContactPhone,
    Note,
}

/// The member a patch sets, else the current one.
fn pick<T: Clone>(set: &Option<T>, current: Option<T>) -> Option<T> {
    set.clone().or(current)
}

/// The merged address was not whole (a member missing with no address to take it from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncompleteAddress;

/// `patch` applied to `current`: the new details and the fields whose value changed (none, if
/// the patch only repeats what is there).
pub fn merge(
    current: &OrderDetails,
    patch: &DetailsPatch,
) -> Result<(OrderDetails, Vec<DetailField>), IncompleteAddress> {
    let p = &patch.0;
    let shipping_address = match &p.shipping_address {
        Patch::Keep => current.shipping_address.clone(),
        Patch::Remove => None,
        Patch::Set(AddressPatchValue(a)) => {
            let base = current.shipping_address.as_ref();
            Some(ShippingAddress {
                name: pick(&a.name, base.map(|b| b.name.clone())).ok_or(IncompleteAddress)?,
                lines: pick(&a.lines, base.map(|b| b.lines.clone())).ok_or(IncompleteAddress)?,
                city: pick(&a.city, base.map(|b| b.city.clone())).ok_or(IncompleteAddress)?,
                postal_code: pick(&a.postal_code, base.map(|b| b.postal_code.clone()))
                    .ok_or(IncompleteAddress)?,
                country: pick(&a.country, base.map(|b| b.country.clone()))
                    .ok_or(IncompleteAddress)?,
            })
        }
    };
    let merged = OrderDetails {
        shipping_address,
        contact_email: p.contact_email.apply(current.contact_email.clone()),
        contact_phone: p.contact_phone.apply(current.contact_phone.clone()),
        note: p.note.apply(current.note.clone()),
    };
    let mut changed = Vec::new();
    if merged.shipping_address != current.shipping_address {
        changed.push(DetailField::ShippingAddress);
    }
    if merged.contact_email != current.contact_email {
        changed.push(DetailField::ContactEmail);
    }
    if merged.contact_phone != current.contact_phone {
        changed.push(DetailField::ContactPhone);
    }
    if merged.note != current.note {
        changed.push(DetailField::Note);
    }
    Ok((merged, changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_patch_is_an_object_never_an_array_of_its_members() {
        let error = serde_json::from_value::<DetailsPatch>(json!([null, null]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("map"), "{error}");
    }

    fn patch(value: Value) -> Result<DetailsPatch, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    fn address() -> Value {
        json!({"name": "Ada Lovelace", "lines": ["12 St James's Square"], "city": "London",
               "postal_code": "SW1Y 4JH", "country": "GB"})
    }

    #[test]
    fn a_member_left_out_stays_null_removes_and_a_value_replaces() {
        let current: OrderDetails = serde_json::from_value(json!({
            "shipping_address": address(), "contact_email": "ada@example.org", "note": "fragile"
        }))
        .unwrap();
        let (merged, changed) = merge(
            &current,
            &patch(json!({"contact_email": null, "contact_phone": "+44 20 7946 0000"})).unwrap(),
        )
        .unwrap();
        assert_eq!(merged.contact_email, None);
        assert_eq!(merged.contact_phone.unwrap().as_str(), "+44 20 7946 0000");
        assert_eq!(merged.note, current.note);
        assert_eq!(merged.shipping_address, current.shipping_address);
        assert_eq!(
            changed,
            [DetailField::ContactEmail, DetailField::ContactPhone]
        );
    }

    #[test]
    fn an_address_merges_member_by_member_and_must_end_whole() {
        let current: OrderDetails =
            serde_json::from_value(json!({"shipping_address": address()})).unwrap();
        let (merged, changed) = merge(
            &current,
            &patch(json!({"shipping_address": {"city": "Cambridge"}})).unwrap(),
        )
        .unwrap();
        let merged_address = merged.shipping_address.unwrap();
        assert_eq!(merged_address.city.as_str(), "Cambridge");
        assert_eq!(merged_address.name.as_str(), "Ada Lovelace");
        assert_eq!(changed, [DetailField::ShippingAddress]);
        // No address yet: a part of one is not enough.
        assert_eq!(
            merge(
                &OrderDetails::default(),
                &patch(json!({"shipping_address": {"city": "Cambridge"}})).unwrap()
            ),
            Err(IncompleteAddress)
        );
        let (whole, _) = merge(
            &OrderDetails::default(),
            &patch(json!({ "shipping_address": address() })).unwrap(),
        )
        .unwrap();
        assert!(whole.shipping_address.is_some());
        let (removed, changed) =
            merge(&current, &patch(json!({"shipping_address": null})).unwrap()).unwrap();
        assert_eq!(removed.shipping_address, None);
        assert_eq!(changed, [DetailField::ShippingAddress]);
    }

    #[test]
    fn a_patch_that_repeats_what_is_there_changes_no_field() {
        let current: OrderDetails =
            serde_json::from_value(json!({"shipping_address": address(), "note": "x"})).unwrap();
        let (merged, changed) = merge(
            &current,
            &patch(json!({"shipping_address": {"city": "London"}, "note": "x"})).unwrap(),
        )
        .unwrap();
        assert_eq!(merged, current);
        assert!(changed.is_empty());
    }

    #[test]
    fn bad_patches_do_not_parse_and_say_why() {
        for (value, why) in [
            (json!({}), "changes nothing"),
            (json!({"colour": "red"}), "unknown field"),
            (
                json!({"shipping_address": {"city": null}}),
                "cannot be null",
            ),
            (
                json!({"shipping_address": {"planet": "Mars"}}),
                "unknown field",
            ),
            (json!({"shipping_address": {"lines": []}}), "1 to 3 lines"),
            (json!({"shipping_address": {"country": "gb"}}), "alpha-2"),
            (
                json!({"shipping_address": {"postal_code": "<>"}}),
                "letters, digits",
            ),
            (json!({"contact_email": "not an email"}), "email address"),
            (json!({"contact_email": "a@b"}), "email address"),
            (json!({"contact_phone": "12"}), "phone number"),
            (json!({"contact_phone": "+1 555 0100 ext"}), "phone number"),
            (json!({"note": "a\u{0}b"}), "control characters"),
            (json!({"note": "x".repeat(2001)}), "at most 2000"),
            (
                json!({"shipping_address": {"name": ""}}),
                "1 to 200 characters",
            ),
            (
                json!({"contact_email": "ad a@example.org"}),
                "email address",
            ),
            (json!({"contact_email": "ada@.org"}), "email address"),
        ] {
            let error = patch(value.clone()).unwrap_err();
            assert!(error.contains(why), "{value}: {error}");
        }
        assert!(patch(json!({"note": "line one\nline two\tend"})).is_ok());
        assert!(patch(json!({"note": null})).is_ok());
    }

    #[test]
    fn a_patch_serializes_back_to_the_same_merge_patch() {
        let value = json!({"shipping_address": {"city": "Paris"}, "contact_email": null});
        let parsed = patch(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), value);
        let again: DetailsPatch = serde_json::from_value(value).unwrap();
        assert_eq!(again, parsed);
    }
}
