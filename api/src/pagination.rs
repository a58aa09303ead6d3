//! What the list endpoints share: page sizes, and the opaque cursors that name where a page
//! starts. A cursor is the base64url (unpadded) of the 16 bytes of a listed item's id: 22
//! characters (the document's pattern, [`CURSOR_PATTERN`]), every one of which names some place
//! in a list. Clients must treat it as opaque (what it holds may change); one that does not
//! decode is a 400.

use crate::error::ApiError;
use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
pub use orderflow_storage::pages::PageFrom;
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

/// The cursor that names the place of `seq` in an order's commands.
pub fn seq_cursor(seq: i64) -> String {
    cursor(Uuid::from_u64_pair(0, seq.max(0) as u64))
}

/// The seq a cursor names. Every cursor names one (its low 63 bits), like every cursor names a
/// place among orders.
pub fn parse_seq_cursor(cursor: &str, parameter: &str) -> Result<i64, ApiError> {
    let (_, low) = parse_cursor(cursor, parameter)?.as_u64_pair();
    Ok(i64::try_from(low & i64::MAX as u64).expect("63 bits fit"))
}

/// Where the page a request asks for starts: after the cursor of `starting_after`, before that
/// of `ending_before` (not both: a 400), or at the newest item; `parse` reads a cursor (with
/// the parameter's name for its 400).
pub fn page_from<K>(
    starting_after: Option<&str>,
    ending_before: Option<&str>,
    parse: impl Fn(&str, &str) -> Result<K, ApiError>,
) -> Result<PageFrom<K>, ApiError> {
    match (starting_after, ending_before) {
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
            "starting_after and ending_before cannot be given together".into(),
        )),
        (Some(after), None) => Ok(PageFrom::OlderThan(parse(after, "starting_after")?)),
        (None, Some(before)) => Ok(PageFrom::NewerThan(parse(before, "ending_before")?)),
        (None, None) => Ok(PageFrom::Newest),
    }
}

/// One page, newest first, with the cursors of the pages beside it.
pub struct Page<T> {
    pub data: Vec<T>,
    /// More items lie beyond the page in the direction it was read.
    pub has_more: bool,
    /// For `starting_after`: the next (older) page, if there is one.
    pub next_cursor: Option<String>,
    /// For `ending_before`: the previous (newer) page, if there may be one.
    pub previous_cursor: Option<String>,
}

/// The page of `items`: a list read newest first from `from` with one more than `limit` asked
/// for, to learn whether there is more; `cursor_of` names an item's place. `stopped_at`: the
/// read stopped there before it found that many (a filtered list reads a bounded number of
/// rows), so there may be more beyond it, and the page goes on from there, however few items
/// it holds (even none).
pub fn page<T, K>(
    mut items: Vec<T>,
    limit: i64,
    from: PageFrom<K>,
    cursor_of: impl Fn(&T) -> String,
    stopped_at: Option<String>,
) -> Page<T> {
    let full = items.len() as i64 > limit;
    if full {
        // The one beyond the page: the newest when reading newer ones, the oldest otherwise.
        match from {
            PageFrom::NewerThan(_) => {
                items.remove(0);
            }
            PageFrom::Newest | PageFrom::OlderThan(_) => {
                items.pop();
            }
        }
    }
    let stopped_at = stopped_at.filter(|_| !full);
    let has_more = full || stopped_at.is_some();
    let first = items.first().map(&cursor_of);
    let last = items.last().map(&cursor_of);
    // Onward in the direction read: past the page's far end, or from where the read stopped.
    let (next_cursor, previous_cursor) = match from {
        PageFrom::Newest => (if full { last } else { stopped_at }, None),
        PageFrom::OlderThan(_) => (
            if full { last } else { stopped_at.clone() },
            first.or(stopped_at),
        ),
        PageFrom::NewerThan(_) => (
            last.or(stopped_at.clone()),
            if full { first } else { stopped_at },
        ),
    };
    Page {
        data: items,
        has_more,
        next_cursor,
        previous_cursor,
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
    fn a_seq_cursor_names_the_seq_and_any_cursor_names_some_seq() {
        for seq in [1, 2, 1_000_000, i64::MAX] {
            assert_eq!(
                parse_seq_cursor(&seq_cursor(seq), "ending_before").unwrap(),
                seq
            );
        }
        parse_seq_cursor("zzzzzzzzzzzzzzzzzzzzzz", "starting_after").unwrap();
    }

    #[test]
    fn a_page_drops_the_extra_item_at_the_far_end_and_names_its_neighbours() {
        let name = |n: &i32| n.to_string();
        // Newest first: 9 8 7 asked for 2 (+1).
        let first = page(vec![9, 8, 7], 2, PageFrom::<i32>::Newest, name, None);
        assert_eq!((first.data, first.has_more), (vec![9, 8], true));
        assert_eq!(
            (first.next_cursor, first.previous_cursor),
            (Some("8".into()), None)
        );
        let last = page(vec![2, 1], 2, PageFrom::OlderThan(3), name, None);
        assert_eq!((last.data, last.has_more), (vec![2, 1], false));
        assert_eq!(
            (last.next_cursor, last.previous_cursor),
            (None, Some("2".into()))
        );
        // Newer than 5: 8 7 6 came back for 2 (+1): 8 is beyond the page.
        let newer = page(vec![8, 7, 6], 2, PageFrom::NewerThan(5), name, None);
        assert_eq!((newer.data, newer.has_more), (vec![7, 6], true));
        assert_eq!(
            (newer.next_cursor, newer.previous_cursor),
            (Some("6".into()), Some("7".into()))
        );
        let empty = page(Vec::<i32>::new(), 2, PageFrom::OlderThan(1), name, None);
        assert_eq!((empty.next_cursor, empty.previous_cursor), (None, None));
    }

    #[test]
    fn a_read_that_stopped_short_goes_on_from_where_it_stopped() {
        let name = |n: &i32| n.to_string();
        let stopped = || Some("40".to_owned());
        // Newest first, one item found before the read stopped at 40.
        let first = page(vec![90], 2, PageFrom::<i32>::Newest, name, stopped());
        assert_eq!((first.data, first.has_more), (vec![90], true));
        assert_eq!(
            (first.next_cursor, first.previous_cursor),
            (Some("40".into()), None)
        );
        // Older than 50: nothing found before 40; both ways go on from 40.
        let empty = page(Vec::new(), 2, PageFrom::OlderThan(50), name, stopped());
        assert_eq!((empty.data.len(), empty.has_more), (0, true));
        assert_eq!(
            (empty.next_cursor, empty.previous_cursor),
            (Some("40".into()), Some("40".into()))
        );
        // Newer than 10, read up to 40: 30 found; newer ones go on from 40.
        let newer = page(vec![30], 2, PageFrom::NewerThan(10), name, stopped());
        assert!(newer.has_more);
        assert_eq!(
            (newer.next_cursor, newer.previous_cursor),
            (Some("30".into()), Some("40".into()))
        );
        // A full page ignores where the read stopped: it ends at its own far end.
        let full = page(vec![9, 8, 7], 2, PageFrom::<i32>::Newest, name, stopped());
        assert_eq!(
            (full.data, full.has_more, full.next_cursor),
            (vec![9, 8], true, Some("8".into()))
        );
    }

    #[test]
    fn a_page_starts_at_one_cursor_or_at_the_newest() {
        let parse = |c: &str, _: &str| Ok(c.len());
        assert_eq!(page_from(None, None, parse).unwrap(), PageFrom::Newest);
        assert_eq!(
            page_from(Some("ab"), None, parse).unwrap(),
            PageFrom::OlderThan(2)
        );
        assert_eq!(
            page_from(None, Some("abc"), parse).unwrap(),
            PageFrom::NewerThan(3)
        );
        assert!(page_from(Some("a"), Some("b"), parse).is_err());
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
