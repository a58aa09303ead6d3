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
