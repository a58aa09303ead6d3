//! The alerts a statistics frame carries: banners for the thresholds crossed.

use super::frame::Alert;
use crate::dashboard::hub::Thresholds;
use orderflow_storage::dashboard::Gauges;

/// Fewer finished commands than this in the window raise no conflict-rate alert (noise).
pub(super) const MIN_FOR_RATE_ALERT: usize = 20;

/// The alerts that are on, given the last minute's conflict rate over `finished` commands, the
/// gauges and the partitions' lag.
pub(super) fn alerts(
    conflict_rate: Option<f64>,
    finished: usize,
    gauges: &Gauges,
    partition_lag_secs: Option<f64>,
    thresholds: &Thresholds,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    if let Some(rate) = conflict_rate
        && finished >= MIN_FOR_RATE_ALERT
        && rate > thresholds.conflict_rate
    {
        alerts.push(Alert {
            kind: "conflict_rate",
            message: format!(
                "{:.0} % of the last minute's {finished} commands lost a race (threshold {:.0} %)",
                rate * 100.0,
                thresholds.conflict_rate * 100.0
            ),
        });
    }
    if gauges.dead_letters_open > 0 {
        alerts.push(Alert {
            kind: "dead_letters",
            message: format!(
                "{} dead-lettered message(s) not redriven",
                gauges.dead_letters_open
            ),
        });
    }
    if gauges.outbox_oldest_age_secs > thresholds.outbox_lag_secs {
        alerts.push(Alert {
            kind: "outbox_lag",
            message: format!(
                "the oldest unpublished event is {:.1} s old ({} waiting; threshold {} s)",
                gauges.outbox_oldest_age_secs, gauges.outbox_backlog, thresholds.outbox_lag_secs
            ),
        });
    }
    if let Some(lag) = partition_lag_secs.filter(|lag| *lag > thresholds.partition_lag_secs) {
        alerts.push(Alert {
            kind: "partition_lag",
            message: format!(
                "a partition's oldest unfinished command is {lag:.1} s old (threshold {} s)",
                thresholds.partition_lag_secs
            ),
        });
    }
    alerts
}
