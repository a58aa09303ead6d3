//! The partition function: which partition queue an order's commands go to.
//!
//! Specification (implement it the same way in any language; `contract/partition-vectors.json`
//! holds test vectors):
//!
//! 1. take the order id's 16 bytes in RFC 4122 (network, big-endian) order;
//! 2. hash them with 32-bit FNV-1a: `h = 0x811c9dc5`; for each byte `h = (h XOR byte) * 0x01000193 mod 2^32`;
//! 3. `partition = h mod N`, where N is the number of partitions (`ORDERFLOW_PARTITIONS`, default 16).
//!
//! The message's routing key on the command exchange is the partition number in decimal ("0".."N-1").
//!
//! The count grows online by doubling (`orderflow-api partitions grow`): N becomes 2N and each
//! partition p splits into p and p + N, because `h mod 2N` is `h mod N` or `h mod N + N`. A message
//! routed by any count the deployment has had stays valid ([`Layout::belongs`]): per-order order
//! rests on the order's sequence numbers, not on the queue.

use orderflow_domain::OrderId;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// 32-bit FNV-1a of the given bytes.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The partition (0..partitions) of an order. `partitions` must be at least 1.
pub fn partition_of(order_id: OrderId, partitions: u16) -> u16 {
    assert!(partitions > 0, "there is at least one partition");
    (fnv1a32(order_id.0.as_bytes()) % u32::from(partitions)) as u16
}

/// The most partitions a deployment may grow to (quorum queues cost the broker memory and
/// processes per queue; this bounds the `partition` label of every metric too).
pub const MAX_PARTITIONS: u16 = 1024;

/// The partition counts a deployment has had, oldest first, each double the one before: the last
/// is the count commands are routed by now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The generation of the current count (1 for the first).
    pub generation: i32,
    counts: Vec<u16>,
}

/// Why a layout cannot be formed or grown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("a partition count is between 1 and {MAX_PARTITIONS}, not {0}")]
    OutOfRange(u32),
    #[error("partition count {next} does not double {previous}: a count only grows by doubling")]
    NotDoubled { previous: u16, next: u16 },
}

impl Layout {
    /// A layout from its counts, oldest first (generation = their number).
    pub fn new(counts: Vec<u16>) -> Result<Self, LayoutError> {
        if counts.is_empty() {
            return Err(LayoutError::OutOfRange(0));
        }
        for &count in &counts {
            if count == 0 || count > MAX_PARTITIONS {
                return Err(LayoutError::OutOfRange(u32::from(count)));
            }
        }
        for pair in counts.windows(2) {
            if u32::from(pair[1]) != 2 * u32::from(pair[0]) {
                return Err(LayoutError::NotDoubled {
                    previous: pair[0],
                    next: pair[1],
                });
            }
        }
        Ok(Self {
            generation: i32::try_from(counts.len()).unwrap_or(i32::MAX),
            counts,
        })
    }

    /// A deployment that never grew.
    pub fn single(partitions: u16) -> Result<Self, LayoutError> {
        Self::new(vec![partitions])
    }

    /// The count commands are routed by now.
    pub fn partitions(&self) -> u16 {
        *self.counts.last().expect("a layout has a count")
    }

    /// Every count the deployment has had, oldest first.
    pub fn counts(&self) -> &[u16] {
        &self.counts
    }

    /// The partition an order's commands are routed to now.
    pub fn partition_of(&self, order_id: OrderId) -> u16 {
        partition_of(order_id, self.partitions())
    }

    /// Whether a message for `order_id` on `partition` was routed by one of the deployment's
    /// counts (a producer that has not heard of the last growth yet is still right).
    pub fn belongs(&self, order_id: OrderId, partition: u16) -> bool {
        let h = fnv1a32(order_id.0.as_bytes());
        self.counts
            .iter()
            .any(|&n| h % u32::from(n) == u32::from(partition))
    }

    /// The layout after doubling the count.
    pub fn doubled(&self) -> Result<Self, LayoutError> {
        let next = 2 * u32::from(self.partitions());
        let next = u16::try_from(next)
            .ok()
            .filter(|&n| n <= MAX_PARTITIONS)
            .ok_or(LayoutError::OutOfRange(next))?;
        let mut counts = self.counts.clone();
        counts.push(next);
        Self::new(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    #[derive(serde::Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }
    #[derive(serde::Deserialize)]
    struct Vector {
        order_id: Uuid,
        fnv1a32: u32,
        partitions: u16,
        partition: u16,
    }

    #[test]
    fn fnv1a32_matches_the_published_reference_values() {
        // From the FNV reference (Fowler/Noll/Vo): the empty string and "a".
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn the_cross_language_vectors_hold() {
        let text = include_str!("../partition-vectors.json");
        let vectors: Vectors = serde_json::from_str(text).unwrap();
        assert!(vectors.vectors.len() >= 20);
        for v in vectors.vectors {
            assert_eq!(fnv1a32(v.order_id.as_bytes()), v.fnv1a32, "{}", v.order_id);
            assert_eq!(
                partition_of(OrderId(v.order_id), v.partitions),
                v.partition,
                "{}",
                v.order_id
            );
        }
    }

    proptest! {
        #[test]
        fn the_partition_is_in_range_and_stable(bytes in any::<[u8; 16]>(), n in 1u16..1024) {
            let id = OrderId(Uuid::from_bytes(bytes));
            let p = partition_of(id, n);
            prop_assert!(p < n);
            prop_assert_eq!(p, partition_of(id, n));
        }
    }

    proptest! {
        #[test]
        fn doubling_splits_each_partition_into_itself_and_itself_plus_the_old_count(
            bytes in any::<[u8; 16]>(), exponent in 0u32..6,
        ) {
            let id = OrderId(Uuid::from_bytes(bytes));
            let before = Layout::single(1 << exponent).unwrap();
            let after = before.doubled().unwrap();
            let (old, new) = (before.partition_of(id), after.partition_of(id));
            prop_assert!(new == old || new == old + before.partitions());
            // routed by either count, the message is accepted after the growth
            prop_assert!(after.belongs(id, old) && after.belongs(id, new));
            prop_assert!(before.belongs(id, old));
        }
    }

    #[test]
    fn a_layout_only_grows_by_doubling_and_within_bounds() {
        assert_eq!(
            Layout::new(vec![16, 24]),
            Err(LayoutError::NotDoubled {
                previous: 16,
                next: 24
            })
        );
        assert_eq!(Layout::new(vec![]), Err(LayoutError::OutOfRange(0)));
        assert_eq!(Layout::single(0), Err(LayoutError::OutOfRange(0)));
        let top = Layout::single(MAX_PARTITIONS).unwrap();
        assert_eq!(top.doubled(), Err(LayoutError::OutOfRange(2048)));
        let grown = Layout::single(16)
            .unwrap()
            .doubled()
            .unwrap()
            .doubled()
            .unwrap();
        assert_eq!((grown.generation, grown.partitions()), (3, 64));
        assert_eq!(grown.counts(), &[16, 32, 64]);
    }

    #[test]
    fn a_partition_no_count_routes_the_order_to_is_refused() {
        let layout = Layout::new(vec![2, 4]).unwrap();
        for _ in 0..200 {
            let id = OrderId::new();
            let allowed: Vec<u16> = (0..4).filter(|&p| layout.belongs(id, p)).collect();
            let h = fnv1a32(id.0.as_bytes());
            let mut expected = vec![(h % 2) as u16, (h % 4) as u16];
            expected.sort();
            expected.dedup();
            assert_eq!(allowed, expected, "{id}");
        }
    }

    #[test]
    fn time_ordered_ids_spread_over_all_partitions() {
        let mut counts = [0u32; 16];
        for _ in 0..16_000 {
            counts[partition_of(OrderId::new(), 16) as usize] += 1;
        }
        // uniform would be 1,000 each; FNV-1a over v7 ids stays well within ±20 %
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
