//! Where a page of a list starts. The lists (a client's orders, an order's commands) are read
//! newest first by a key that never changes (an order's UUIDv7 id, a command's seq), so a page
//! boundary stays where it is while items are added.

/// Where a page starts, by the key of the item at its boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageFrom<K> {
    /// The newest items.
    Newest,
    /// The items older than this key (the next page).
    OlderThan(K),
    /// The items newer than this key (the previous page).
    NewerThan(K),
}

impl<K> PageFrom<K> {
    pub fn map<L>(self, f: impl FnOnce(K) -> L) -> PageFrom<L> {
        match self {
            PageFrom::Newest => PageFrom::Newest,
            PageFrom::OlderThan(k) => PageFrom::OlderThan(f(k)),
            PageFrom::NewerThan(k) => PageFrom::NewerThan(f(k)),
        }
    }

    /// How a statement reads the page: `(newer, bound)`: the items newer than `bound`, oldest
    /// first (`newer`), or older than it, newest first; `past_newest` bounds a first page. One
    /// bound that is always given keeps it an index condition (an optional one would be a
    /// filter, and a deep page would read every newer item).
    pub fn bound(self, past_newest: K) -> (bool, K) {
        match self {
            PageFrom::Newest => (false, past_newest),
            PageFrom::OlderThan(k) => (false, k),
            PageFrom::NewerThan(k) => (true, k),
        }
    }
}
