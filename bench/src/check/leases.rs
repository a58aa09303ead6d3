//! Invariant 10: no command was finished under a stale partition lease. Every transaction a
//! worker writes for a partition is fenced by the partition's lease at the epoch it holds
//! (`orderflow_fence`), and a take of the lease (epoch + 1) waits for the fenced transactions in
//! flight and refuses every later one. So on each partition, in the order the commands finished,
//! the epochs they were finished under never go down; and every applied command carries one.
//! A zombie worker that committed after its partition was taken over shows up here as an
//! epoch lower than one finished before it.

use super::{Input, Verdict};
use orderflow_storage::audit::CommandRow;
use std::collections::BTreeMap;

pub fn no_commit_under_a_stale_epoch(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(10, "no command finished under a stale partition lease");
    let mut by_partition: BTreeMap<i32, Vec<(_, i64, &CommandRow)>> = BTreeMap::new();
    for c in &input.snapshot.commands {
        if c.status == "applied" && c.epoch.is_none() {
            verdict.violation(|| {
                format!(
                    "order {} seq {}: applied without a partition lease epoch",
                    c.order_id, c.seq
                )
            });
        }
        if let (Some(at), Some(epoch)) = (c.finished_at, c.epoch) {
            by_partition
                .entry(c.lease_partition.unwrap_or(c.partition))
                .or_default()
                .push((at, epoch, c));
        }
    }
    for (partition, mut finished) in by_partition {
        finished.sort_by_key(|(at, epoch, _)| (*at, *epoch));
        let mut highest: Option<(i64, &CommandRow)> = None;
        for (_, epoch, c) in finished {
            match highest {
                Some((seen, earlier)) if epoch < seen => verdict.violation(|| {
                    format!(
                        "partition {partition}: order {} seq {} finished under epoch {epoch} after order {} seq {} under epoch {seen}",
                        c.order_id, c.seq, earlier.order_id, earlier.seq
                    )
                }),
                Some((seen, _)) if epoch == seen => {}
                _ => highest = Some((epoch, c)),
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{Fixture, at};

    #[test]
    fn a_clean_run_passes() {
        let mut f = Fixture::clean();
        // The partition moved once, between the second and the third command.
        for c in &mut f.snapshot.commands[2..] {
            c.epoch = Some(2);
        }
        assert!(no_commit_under_a_stale_epoch(&f.input()).passed());
    }

    #[test]
    fn a_zombie_commit_after_the_take_is_caught() {
        let mut f = Fixture::clean();
        // The partition moved to epoch 2 before the fourth command; the third, under epoch 1,
        // committed after the fifth.
        f.snapshot.commands[3].epoch = Some(2);
        f.snapshot.commands[4].epoch = Some(2);
        f.snapshot.commands[2].finished_at = Some(at(30));
        let verdict = no_commit_under_a_stale_epoch(&f.input());
        assert_eq!(verdict.violations, 1, "{:?}", verdict.examples);
        assert!(verdict.examples[0].contains("under epoch 1 after"));
    }

    #[test]
    fn an_applied_command_without_an_epoch_is_caught_and_other_partitions_do_not_mix() {
        let mut f = Fixture::clean();
        f.snapshot.commands[0].epoch = None;
        // Another partition's epochs are its own.
        f.snapshot.commands[3].partition = 7;
        f.snapshot.commands[3].lease_partition = Some(7);
        f.snapshot.commands[3].epoch = Some(9);
        assert_eq!(no_commit_under_a_stale_epoch(&f.input()).violations, 1);
    }

    #[test]
    fn a_command_finished_under_another_partitions_lease_is_judged_by_that_lease() {
        // After a growth the fourth command, routed to partition 0, was finished by the owner of
        // the order's new partition 16 under its epoch 1; partition 0 itself had moved to epoch 2.
        let mut f = Fixture::clean();
        f.snapshot.commands[2].epoch = Some(2);
        f.snapshot.commands[3].lease_partition = Some(16);
        f.snapshot.commands[3].epoch = Some(1);
        f.snapshot.commands[4].epoch = Some(2);
        assert!(no_commit_under_a_stale_epoch(&f.input()).passed());
        // Judged by partition 0's epochs it would have been a stale commit.
        f.snapshot.commands[3].lease_partition = Some(0);
        assert_eq!(no_commit_under_a_stale_epoch(&f.input()).violations, 1);
    }
}
