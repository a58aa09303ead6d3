//! Which live worker should own which partition: balanced (with W workers each holds ⌊P/W⌋ or
//! ⌈P/W⌉ of the P partitions) and sticky (a partition stays with its live holder while that
//! holder is within its share), and the same answer in every worker that sees the same live
//! workers and holders, with no coordinator.
//!
//! Shares first: every live worker gets ⌊P/W⌋, and the P mod W extra partitions go to the
//! workers holding the most now (ties by name), so that as few as possible must give one up.
//! Then every worker keeps what it holds, up to its share, preferring the partitions it scores
//! highest. The rest (free, held by a worker that is gone or over its share, or being handed
//! over) go by rendezvous hashing with bounded loads: every (partition, worker) pair gets a stable
//! score, the pairs are taken from the highest score down, and a pair is kept when its partition
//! is still unassigned and its worker still has room. A join therefore moves exactly the
//! newcomer's share and a leave exactly the leaver's partitions; from nothing held (a fresh
//! start) the answer is plain bounded-load rendezvous. Workers reading the holders a moment apart
//! may disagree for a round; the fence keeps that safe and the next round agrees.
//!
//! The score is a fixed function (FNV-1a of the worker's name, mixed with the partition by
//! SplitMix64's finalizer), not the standard library's hasher, whose seed differs per process:
//! every worker, of every build, must compute the same assignment.

/// The owner of each partition (an index into `workers`), for partitions `0..partitions`.
/// `workers` are the live workers' names; their order does not matter, duplicates count once.
/// `holders[p]` is who holds partition p now and means to keep consuming it (an active lease;
/// not one being handed over), if anyone; missing entries are nobody. Empty when there is no
/// worker.
pub fn assign(partitions: u16, workers: &[&str], holders: &[Option<&str>]) -> Vec<Option<usize>> {
    let mut names: Vec<(usize, &str)> = workers.iter().copied().enumerate().collect();
    names.sort_by(|a, b| a.1.cmp(b.1));
    names.dedup_by(|a, b| a.1 == b.1);
    let count = u16::try_from(names.len()).unwrap_or(u16::MAX);
    let mut owners = vec![None; usize::from(partitions)];
    if count == 0 {
        return owners;
    }
    let slot_of = |name: &str| names.binary_search_by(|(_, n)| (*n).cmp(name)).ok();
    let seeds: Vec<u64> = names.iter().map(|(_, n)| fnv1a64(n.as_bytes())).collect();
    // What each live worker holds now, its highest-scored first.
    let mut holding: Vec<Vec<u16>> = vec![Vec::new(); names.len()];
    for partition in 0..partitions {
        if let Some(slot) = holders
            .get(usize::from(partition))
            .copied()
            .flatten()
            .and_then(slot_of)
        {
            holding[slot].push(partition);
        }
    }
    for (slot, held) in holding.iter_mut().enumerate() {
        held.sort_by_key(|&p| std::cmp::Reverse(score(seeds[slot], p)));
    }
    // Shares: the extra ones to those holding the most.
    let base = partitions / count;
    let mut by_holding: Vec<usize> = (0..names.len()).collect();
    by_holding.sort_by_key(|&slot| std::cmp::Reverse(holding[slot].len()));
    let mut share = vec![base; names.len()];
    for &slot in by_holding.iter().take(usize::from(partitions % count)) {
        share[slot] += 1;
    }
    // Keep, within the share.
    let mut held = vec![0u16; names.len()];
    let mut left = partitions;
    for (slot, partitions_held) in holding.iter().enumerate() {
        for &partition in partitions_held.iter().take(usize::from(share[slot])) {
            owners[usize::from(partition)] = Some(names[slot].0);
            held[slot] += 1;
            left -= 1;
        }
    }
    // The rest by rendezvous hashing with bounded loads.
    let mut pairs: Vec<(u64, u16, usize)> = Vec::with_capacity(usize::from(left) * names.len());
    for partition in (0..partitions).filter(|&p| owners[usize::from(p)].is_none()) {
        for (slot, &seed) in seeds.iter().enumerate() {
            pairs.push((score(seed, partition), partition, slot));
        }
    }
    // Highest score first; ties (never in practice) broken by partition and name order.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, partition, slot) in pairs {
        if left == 0 {
            break;
        }
        let owner = &mut owners[usize::from(partition)];
        if owner.is_none() && held[slot] < share[slot] {
            held[slot] += 1;
            *owner = Some(names[slot].0);
            left -= 1;
        }
    }
    owners
}

/// The partitions `me` should own among `workers`, given the `holders` (see [`assign`]).
pub fn partitions_of(
    partitions: u16,
    workers: &[&str],
    holders: &[Option<&str>],
    me: &str,
) -> Vec<u16> {
    let owners = assign(partitions, workers, holders);
    (0..partitions)
        .filter(|&p| owners[usize::from(p)].is_some_and(|i| workers[i] == me))
        .collect()
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The pair's score: SplitMix64's finalizer over the worker's seed and the partition.
fn score(seed: u64, partition: u16) -> u64 {
    let mut z = seed ^ u64::from(partition).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, run: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{run}:{}", 1000 + i)).collect()
    }

    fn counts(owners: &[Option<usize>], workers: usize) -> Vec<u16> {
        let mut held = vec![0u16; workers];
        for owner in owners {
            held[owner.expect("every partition has an owner")] += 1;
        }
        held
    }

    #[test]
    fn every_partition_has_one_owner_and_every_worker_floor_or_ceiling() {
        for partitions in [1u16, 2, 7, 16, 64, 128] {
            for workers in 1..=9 {
                for run in 0..20 {
                    let names = names(workers, run);
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let held = counts(&assign(partitions, &refs, &[]), workers);
                    let floor = partitions / workers as u16;
                    let ceiling = floor + u16::from(partitions % workers as u16 > 0);
                    assert!(
                        held.iter().all(|&h| h == floor || h == ceiling),
                        "P={partitions} W={workers}: {held:?}"
                    );
                    assert_eq!(held.iter().sum::<u16>(), partitions);
                }
            }
        }
    }

    #[test]
    fn every_worker_computes_the_same_assignment_whatever_order_it_lists_the_others_in() {
        let names = names(5, 0);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut reversed = refs.clone();
        reversed.reverse();
        let by_name = |owners: Vec<Option<usize>>, list: &[&str]| -> Vec<String> {
            owners.iter().map(|o| list[o.unwrap()].to_owned()).collect()
        };
        assert_eq!(
            by_name(assign(64, &refs, &[]), &refs),
            by_name(assign(64, &reversed, &[]), &reversed)
        );
        // The same names twice count once.
        let doubled: Vec<&str> = refs.iter().chain(refs.iter()).copied().collect();
        assert_eq!(
            by_name(assign(64, &refs, &[]), &refs),
            by_name(assign(64, &doubled, &[]), &doubled)
        );
    }

    #[test]
    fn no_worker_owns_nothing_and_one_worker_owns_everything() {
        assert!(assign(16, &[], &[]).iter().all(Option::is_none));
        assert_eq!(
            partitions_of(16, &["only"], &[], "only"),
            (0..16).collect::<Vec<_>>()
        );
        assert!(partitions_of(16, &["only"], &[], "someone else").is_empty());
    }

    /// The names of the owners, per partition.
    fn owner_names<'a>(owners: &[Option<usize>], workers: &[&'a str]) -> Vec<Option<&'a str>> {
        owners.iter().map(|o| o.map(|i| workers[i])).collect()
    }

    /// With the holders as the last assignment left them, a join moves exactly the newcomer's
    /// share and a leave exactly the leaver's partitions, and both stay balanced.
    #[test]
    fn a_join_moves_only_the_newcomers_share_and_a_leave_only_the_leavers_partitions() {
        for (partitions, workers) in [(16u16, 1usize), (16, 2), (16, 3), (32, 3), (64, 4), (64, 7)]
        {
            for run in 0..50 {
                let names = names(workers + 1, run);
                let before: Vec<&str> = names[..workers].iter().map(String::as_str).collect();
                let after: Vec<&str> = names.iter().map(String::as_str).collect();
                let held = owner_names(&assign(partitions, &before, &[]), &before);
                let joined = owner_names(&assign(partitions, &after, &held), &after);
                let moved = held.iter().zip(&joined).filter(|(a, b)| a != b).count();
                let newcomer = after[workers];
                let share = joined.iter().filter(|o| **o == Some(newcomer)).count();
                assert_eq!(moved, share, "P={partitions} W={workers}→{}", workers + 1);
                assert!(share >= usize::from(partitions) / (workers + 1));
                let balanced = counts(&assign(partitions, &after, &held), workers + 1);
                assert!(balanced.iter().max().unwrap() - balanced.iter().min().unwrap() <= 1);

                // The newcomer leaves again: only its partitions move, back to balanced.
                let left = owner_names(&assign(partitions, &before, &joined), &before);
                let moved = joined.iter().zip(&left).filter(|(a, b)| a != b).count();
                assert_eq!(moved, share, "P={partitions} W={}→{workers}", workers + 1);
                let balanced = counts(&assign(partitions, &before, &joined), workers);
                assert!(balanced.iter().max().unwrap() - balanced.iter().min().unwrap() <= 1);
            }
        }
    }

    /// Whatever the holders (gone workers, one worker holding everything, nobody), every
    /// partition gets one live owner and the shares are floor or ceiling.
    #[test]
    fn any_holders_give_a_balanced_assignment_and_a_holder_within_its_share_keeps_all() {
        let names = names(4, 7);
        let live: Vec<&str> = names[..3].iter().map(String::as_str).collect();
        let gone = names[3].as_str();
        for holders in [
            vec![Some(live[0]); 16],
            vec![Some(gone); 16],
            (0..16).map(|p| (p % 2 == 0).then_some(live[1])).collect(),
            (0..16)
                .map(|p| Some(if p < 5 { live[2] } else { gone }))
                .collect(),
        ] {
            let owners = assign(16, &live, &holders);
            let held = counts(&owners, 3);
            assert!(held.iter().all(|&h| h == 5 || h == 6), "{held:?}");
            // live[2] holds 5 in the last case, within its share: it keeps all five.
            if holders[0] == Some(live[2]) {
                assert!((0..5).all(|p| owners[p] == Some(2)));
            }
        }
    }
}
