//! What the list endpoints share: page sizes, and the opaque cursors that name where a page
//! starts. A cursor is the base64url (unpadded) of the 16 bytes of a listed item's id: 22
//! characters (the document's pattern, [`CURSOR_PATTERN`]), every one of which names some place
//! in a list. Clients must treat it as opaque (what it holds may change); one that does not
//! decode is a 400.

use crate::error::ApiError;
use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use uuid::Uuid;

/// What a cursor looks like, for the OpenAPI document.
pub const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{22}$";

/// Unpadded base64url; the last character's unused low bits are ignored when reading, so that
/// every string of the document's pattern is a cursor (one a client could be handed).
const CURSORS: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// A page's size when the request names none.
pub const DEFAULT_LIMIT: i64 = 10;
/// The largest page.
pub const MAX_LIMIT: i64 = 100;

/// The cursor that names `id`.
pub fn cursor(id: Uuid) -> String {
    CURSORS.encode(id.as_bytes())
}

/// The id a cursor names; `parameter` is the query parameter it came in, for the 400.
pub fn parse_cursor(cursor: &str, parameter: &str) -> Result<Uuid, ApiError> {
    CURSORS
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "{parameter} is not a cursor this API gave out (pass a page's next_cursor or \
                 previous_cursor unchanged)"
            ))
        })
}

/// The page size a request asked for (`None`: the default), if it is one.
pub fn limit(asked: Option<i64>) -> Result<i64, ApiError> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_names_the_id_it_was_made_of() {
        let id = Uuid::now_v7();
        let cursor = cursor(id);
        assert_eq!(cursor.len(), 22);
        assert_eq!(parse_cursor(&cursor, "starting_after").unwrap(), id);
    }

    #[test]
    fn every_string_of_the_documents_pattern_is_a_cursor() {
        // The pattern the document gives both cursor parameters of GET /v1/orders.
        let (_, document) = crate::routes::api();
        let document = serde_json::to_value(&document).unwrap();
        let params = document["paths"]["/v1/orders"]["get"]["parameters"]
            .as_array()
            .unwrap();
        for name in ["starting_after", "ending_before"] {
            let param = params.iter().find(|p| p["name"] == name).unwrap();
            assert_eq!(param["schema"]["pattern"], CURSOR_PATTERN, "{name}");
        }
        for cursor in [
            "AAAAAAAAAAAAAAAAAAAAAA",
            "zzzzzzzzzzzzzzzzzzzzzz",
            "-_-_-_-_-_-_-_-_-_-_-_",
            "AZrb2Q1wdYqxN0F3Ypk1Y_",
        ] {
            parse_cursor(cursor, "starting_after").unwrap();
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_parameter_named() {
        for bad in [
            "",
            "x",
            "not a cursor",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "%%%",
            "AAAAAAAAAAAAAAAAAAAAAA==",
        ] {
            let error = parse_cursor(bad, "ending_before").unwrap_err();
            assert!(
                matches!(&error, ApiError::InvalidRequest(m) if m.starts_with("ending_before")),
                "{bad:?}: {error:?}"
            );
        }
    }

    #[test]
    fn a_limit_is_one_to_a_hundred_and_ten_by_default() {
        assert_eq!(limit(None).unwrap(), 10);
        assert_eq!(limit(Some(1)).unwrap(), 1);
        assert_eq!(limit(Some(100)).unwrap(), 100);
        for bad in [0, -1, 101, i64::MAX] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
