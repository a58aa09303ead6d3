//! Invariants 7 and 9, judged from the requests as the clients saw them: every Idempotency-Key
//! named one command (replays answered it, different bodies got 422, no second command was made
//! behind a lost answer); and no 5xx other than a 503 with `Retry-After`.

use super::{Input, Verdict};
use crate::record::RequestRecord;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// Answers that say nothing about the key (no answer, overload, rate limit).
fn inconclusive(r: &RequestRecord) -> bool {
    matches!(r.status, None | Some(429 | 503))
}

/// 7: per probed key: one command id across its 202s, of one body; a 409 only for a body that held
/// the key, a 422 only where another body held it (the winner's, or one refused with 503 that
/// released it); the stored key names that command; and the probed orders have no command that
/// neither an answer nor a stored key names.
pub fn idempotency_holds(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(7, "idempotency keys replay, mismatches 422");
    let mut probes: BTreeMap<&str, Vec<&RequestRecord>> = BTreeMap::new();
    for r in &input.observed.requests {
        if let Some(probe) = &r.probe {
            probes.entry(probe.key.as_str()).or_default().push(r);
        }
    }
    let stored: HashMap<&str, Uuid> = input
        .snapshot
        .idempotency_keys
        .iter()
        .map(|(k, c)| (k.as_str(), *c))
        .collect();
    for (key, requests) in probes {
        let accepted: Vec<&RequestRecord> = requests
            .iter()
            .copied()
            .filter(|r| r.status == Some(202))
            .collect();
        let ids: HashSet<Option<Uuid>> = accepted.iter().map(|r| r.command_id).collect();
        if ids.len() > 1 {
            verdict.violation(|| format!("key {key} answered different commands {ids:?}"));
        }
        let variants: HashSet<u8> = accepted
            .iter()
            .filter_map(|r| r.probe.as_ref().map(|p| p.variant))
            .collect();
        if variants.len() > 1 {
            verdict.violation(|| format!("key {key} accepted different bodies"));
        }
        if let (Some(winner), Some(first)) = (variants.iter().next(), accepted.first()) {
            // The bodies that held the key at some moment: the winner's, and any body of a
            // request refused with 503 or left unanswered (it may have claimed the key, then been
            // refused and released it). A request that met one of those held by its own body is
            // answered 409 (in flight); one that met another body, 422.
            let mut held: HashSet<u8> = requests
                .iter()
                .filter(|r| matches!(r.status, None | Some(503)))
                .filter_map(|r| r.probe.as_ref().map(|p| p.variant))
                .collect();
            held.insert(*winner);
            for r in requests.iter().filter(|r| !inconclusive(r)) {
                let Some(variant) = r.probe.as_ref().map(|p| p.variant) else {
                    continue;
                };
                let same = variant == *winner;
                let ok = match r.status {
                    Some(202) => same,
                    Some(409) => held.contains(&variant),
                    Some(422) => held.iter().any(|v| *v != variant),
                    _ => false,
                };
                if !ok {
                    verdict.violation(|| {
                        format!(
                            "key {key}: a {} body got {:?}",
                            if same { "same" } else { "different" },
                            r.status
                        )
                    });
                }
            }
            if let (Some(stored), Some(answered)) = (stored.get(key), first.command_id)
                && *stored != answered
            {
                verdict.violation(|| {
                    format!("key {key} stores command {stored} but answered {answered}")
                });
            }
        }
    }
    // Orders only the idempotency probes sent commands to: every command on them must be one an
    // answer named (a lost answer followed by a retry must not have made a second command).
    let probed: HashSet<Uuid> = input
        .observed
        .requests
        .iter()
        .filter(|r| r.scenario == "idempotency" && r.status == Some(202))
        .filter_map(|r| r.order_id)
        .collect();
    let named: HashSet<Uuid> = input
        .observed
        .requests
        .iter()
        .filter(|r| r.status == Some(202))
        .filter_map(|r| r.command_id)
        .collect();
    // A command no answer named is fine if a key holds it: its client never learned the outcome
    // (timeouts, 429s, 503s all the way), but a retry with that key would replay it. One with no
    // key behind it was made by a request the key should have stopped.
    let keyed: HashSet<Uuid> = stored.values().copied().collect();
    for c in &input.snapshot.commands {
        if probed.contains(&c.order_id)
            && c.source == "http"
            && !c.refused()
            && !named.contains(&c.id)
            && !keyed.contains(&c.id)
        {
            verdict.violation(|| {
                format!(
                    "command {} ({}) was made but no answer named it",
                    c.id, c.kind
                )
            });
        }
    }
    verdict
}

/// 9: a 5xx is a bug unless it is a 503 with `Retry-After` (overload, dependency down).
pub fn no_server_errors(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(9, "no 5xx but 503 with Retry-After");
    for r in &input.observed.requests {
        if let Some(status @ 500..=599) = r.status
            && !(status == 503 && r.retry_after)
        {
            verdict.violation(|| format!("{} answered {status}", r.op));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::Fixture;
    use crate::record::{IdempotencyProbe, Outcome};

    fn probe(variant: u8, status: u16, command: Option<Uuid>) -> RequestRecord {
        RequestRecord {
            scenario: "idempotency",
            op: "POST /v1/orders/{id}/commands add_item".into(),
            outcome: if status < 300 {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            status: Some(status),
            retry_after: false,
            command_id: command,
            order_id: Some(crate::check::fixtures::ORDER),
            replayed: false,
            probe: Some(IdempotencyProbe {
                key: "k".into(),
                variant,
            }),
        }
    }

    #[test]
    fn a_clean_run_and_proper_replays_pass() {
        let mut f = Fixture::clean();
        let id = f.snapshot.commands[1].id;
        f.observed.requests.push(probe(0, 202, Some(id)));
        f.observed.requests.push(probe(0, 409, None));
        f.observed.requests.push(probe(1, 422, None));
        f.snapshot.idempotency_keys.push(("k".into(), id));
        let v = idempotency_holds(&f.input());
        assert!(v.passed(), "{v:?}");
        assert!(no_server_errors(&f.input()).passed());
    }

    #[test]
    fn answers_that_met_a_refused_first_attempt_pass_and_only_those() {
        let mut f = Fixture::clean();
        let id = f.snapshot.commands[1].id;
        // Body 1 claimed the key first and was refused (503, key released); meanwhile another
        // body-1 request met it in flight (409) and a body-0 request met it (422). Body 0 won.
        f.observed.requests.push(probe(1, 503, None));
        f.observed.requests.push(probe(1, 409, None));
        f.observed.requests.push(probe(0, 422, None));
        f.observed.requests.push(probe(0, 202, Some(id)));
        f.snapshot.idempotency_keys.push(("k".into(), id));
        let v = idempotency_holds(&f.input());
        assert!(v.passed(), "{v:?}");
        // Without a refused body-1 attempt, neither answer could have happened.
        f.observed.requests.remove(f.observed.requests.len() - 4);
        assert_eq!(idempotency_holds(&f.input()).violations, 2);
    }

    #[test]
    fn a_key_answering_two_commands_or_a_mismatch_accepted_is_caught() {
        let mut f = Fixture::clean();
        f.observed
            .requests
            .push(probe(0, 202, Some(f.snapshot.commands[1].id)));
        f.observed
            .requests
            .push(probe(1, 202, Some(f.snapshot.commands[2].id)));
        // two ids, two bodies accepted, and the loser's body answered 202 instead of 422
        assert_eq!(idempotency_holds(&f.input()).violations, 3);
    }

    #[test]
    fn a_second_command_behind_a_lost_answer_is_caught() {
        let mut f = Fixture::clean();
        f.observed
            .requests
            .push(probe(0, 202, Some(f.snapshot.commands[1].id)));
        // the fixture's own answer for command 3 is lost
        f.observed
            .requests
            .retain(|r| r.command_id != Some(f.snapshot.commands[2].id));
        assert_eq!(idempotency_holds(&f.input()).violations, 1);
    }

    #[test]
    fn a_500_or_a_503_without_retry_after_is_caught() {
        let mut f = Fixture::clean();
        f.observed.requests[0].status = Some(500);
        f.observed.requests[1].status = Some(503);
        f.observed.requests[2].status = Some(503);
        f.observed.requests[2].retry_after = true;
        assert_eq!(no_server_errors(&f.input()).violations, 2);
    }
}
