//! Invariants 1 and 8: every accepted command ended (and every failed one is in the dead-letter
//! queue); the outbox drained, and every final command's status event reached the exchange.

use super::{Input, Verdict};
use std::collections::HashMap;

/// 1: each 202 (and each confirmed direct command) ends applied, rejected or failed.
pub fn no_command_lost(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(1, "no accepted command lost");
    let rows: HashMap<_, _> = input.snapshot.commands.iter().map(|c| (c.id, c)).collect();
    for id in input.observed.accepted_ids() {
        match rows.get(&id) {
            None => verdict.violation(|| format!("command {id} was accepted but is not recorded")),
            Some(row) if row.status == "accepted" => {
                verdict.violation(|| format!("command {id} never ended (still accepted)"))
            }
            Some(row) if row.refused() => verdict.violation(|| {
                format!(
                    "command {id} was answered 202 but refused ({:?})",
                    row.reason
                )
            }),
            Some(_) => {}
        }
    }
    // A command the run never saw accepted (its request got no answer: a timeout, a cut
    // connection, after the command was recorded) must end too: its sender may never learn of
    // it, but the order does.
    let seen: std::collections::HashSet<uuid::Uuid> =
        input.observed.accepted_ids().into_iter().collect();
    for row in &input.snapshot.commands {
        if row.status == "accepted" && !seen.contains(&row.id) {
            let id = row.id;
            verdict.violation(|| {
                format!("command {id} never ended (still accepted; its sender saw no answer)")
            });
        }
    }
    let failed = input
        .snapshot
        .commands
        .iter()
        .filter(|c| c.status == "failed")
        .count() as i64;
    if let Some(dead) = input.snapshot.dead_letters
        && dead < failed
    {
        verdict.violation(|| {
            format!(
                "{failed} commands failed but only {dead} messages reached the dead-letter queue"
            )
        });
    }
    verdict
}

/// 8: no outbox row left, every final command announced with its final status, and in its
/// client's feed (`GET /v1/events`) exactly once with that status, each order's in `seq` order.
pub fn outbox_drained(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(8, "outbox drained, status events delivered");
    let mut in_feed: HashMap<uuid::Uuid, Vec<&str>> = HashMap::new();
    let mut feed_seq: HashMap<uuid::Uuid, i64> = HashMap::new();
    for row in &input.snapshot.feed {
        in_feed.entry(row.command_id).or_default().push(&row.status);
        if let Some(before) = feed_seq.insert(row.order_id, row.seq)
            && before >= row.seq
        {
            verdict.violation(|| {
                format!(
                    "order {}: its client's feed has seq {} after seq {before}",
                    row.order_id, row.seq
                )
            });
        }
    }
    if input.snapshot.outbox_rows > 0 {
        let left = input.snapshot.outbox_rows;
        verdict.violation(|| format!("{left} outbox rows were never relayed"));
    }
    let mut announced: HashMap<uuid::Uuid, Vec<&str>> = HashMap::new();
    for event in input.events {
        announced
            .entry(event.command_id)
            .or_default()
            .push(&event.status);
    }
    for row in &input.snapshot.commands {
        if row.status == "accepted" || row.refused() {
            continue;
        }
        match in_feed.get(&row.id).map(Vec::as_slice) {
            Some([status]) if *status == row.status => {}
            Some(statuses) => verdict.violation(|| {
                format!(
                    "command {} is {} but its client's feed has it as {statuses:?}",
                    row.id, row.status
                )
            }),
            None => verdict.violation(|| {
                format!(
                    "command {} ({}) is {} but not in its client's feed",
                    row.id, row.kind, row.status
                )
            }),
        }
        match announced.get(&row.id) {
            Some(statuses) if statuses.contains(&row.status.as_str()) => {}
            Some(statuses) => verdict.violation(|| {
                format!(
                    "command {} is {} but was announced {statuses:?}",
                    row.id, row.status
                )
            }),
            None => verdict.violation(|| {
                format!(
                    "command {} ({}) is {} but no status event arrived",
                    row.id, row.kind, row.status
                )
            }),
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::Fixture;

    #[test]
    fn a_clean_run_passes_both() {
        let f = Fixture::clean();
        assert!(no_command_lost(&f.input()).passed());
        assert!(outbox_drained(&f.input()).passed());
    }

    #[test]
    fn an_accepted_command_left_unfinished_or_missing_is_lost() {
        let mut f = Fixture::clean();
        f.snapshot.commands[1].status = "accepted".into();
        f.snapshot.commands[1].finished_at = None;
        assert_eq!(no_command_lost(&f.input()).violations, 1);
        f.snapshot.commands.remove(1);
        assert_eq!(no_command_lost(&f.input()).violations, 1);
    }

    #[test]
    fn a_recorded_command_nobody_saw_accepted_must_end_too() {
        let mut f = Fixture::clean();
        let mut unseen = f.snapshot.commands[1].clone();
        unseen.id = uuid::Uuid::now_v7();
        unseen.seq += 100;
        unseen.status = "accepted".into();
        unseen.finished_at = None;
        f.snapshot.commands.push(unseen.clone());
        let verdict = no_command_lost(&f.input());
        assert_eq!(verdict.violations, 1, "{:?}", verdict.examples);
        assert!(verdict.examples[0].contains("saw no answer"));
        // Once it ended, whatever the outcome, nothing is lost.
        f.snapshot.commands.last_mut().unwrap().status = "rejected".into();
        assert!(no_command_lost(&f.input()).passed());
    }

    #[test]
    fn a_failed_command_missing_from_the_dead_letter_queue_is_caught() {
        let mut f = Fixture::clean();
        f.snapshot.commands[2].status = "failed".into();
        f.snapshot.dead_letters = Some(0);
        assert_eq!(no_command_lost(&f.input()).violations, 1);
    }

    #[test]
    fn a_left_outbox_row_or_a_missing_status_event_is_caught() {
        let mut f = Fixture::clean();
        f.snapshot.outbox_rows = 2;
        assert_eq!(outbox_drained(&f.input()).violations, 1);
        f.snapshot.outbox_rows = 0;
        f.events.pop();
        assert_eq!(outbox_drained(&f.input()).violations, 1);
    }

    #[test]
    fn a_command_missing_from_its_clients_feed_twice_in_it_or_out_of_order_is_caught() {
        let mut f = Fixture::clean();
        let missing = f.snapshot.feed.remove(1);
        let verdict = outbox_drained(&f.input());
        assert_eq!(verdict.violations, 1, "{:?}", verdict.examples);
        assert!(verdict.examples[0].contains("not in its client's feed"));

        let mut twice = missing.clone();
        twice.position = 100;
        f.snapshot.feed.insert(1, missing);
        f.snapshot.feed.push(twice);
        let verdict = outbox_drained(&f.input());
        // Twice, and the second copy comes after a later seq.
        assert_eq!(verdict.violations, 2, "{:?}", verdict.examples);

        let mut f = Fixture::clean();
        f.snapshot.feed.swap(1, 2);
        let verdict = outbox_drained(&f.input());
        assert_eq!(verdict.violations, 1, "{:?}", verdict.examples);
        assert!(verdict.examples[0].contains("after seq"));

        let mut f = Fixture::clean();
        f.snapshot.feed[0].status = "rejected".into();
        assert_eq!(outbox_drained(&f.input()).violations, 1);
    }
}
