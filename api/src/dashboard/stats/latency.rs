//! Latency percentiles of the last second's finished commands (HDR histogram).

use super::frame::Latency;
use hdrhistogram::Histogram;

/// The longest latency told apart (longer ones count as this long).
const HOUR_MICROS: u64 = 3_600_000_000;

/// p50/p90/p99/max of latencies in milliseconds, at microsecond resolution.
pub(super) fn percentiles(latencies_ms: impl Iterator<Item = f64>) -> Option<Latency> {
    // Bounded explicitly: `new` starts tiny and `saturating_record` does not grow it, which
    // clamped every latency to the first bucket's top.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, HOUR_MICROS, 3)
        .expect("1 µs to an hour at 3 significant figures is valid");
    for ms in latencies_ms {
        histogram.saturating_record((ms.max(0.0) * 1000.0) as u64);
    }
    if histogram.is_empty() {
        return None;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Some(Latency {
        p50: ms(histogram.value_at_quantile(0.50)),
        p90: ms(histogram.value_at_quantile(0.90)),
        p99: ms(histogram.value_at_quantile(0.99)),
        max: ms(histogram.max()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_a_queue_that_took_many_seconds() {
        // 98 quick commands and two that waited behind a hot order for half a minute.
        let quick = std::iter::repeat_n(1.5, 98);
        let latency = percentiles(quick.chain([30_000.0, 37_449.0])).unwrap();
        assert!((latency.p50 - 1.5).abs() < 0.01, "{:?}", latency.p50);
        assert!((latency.p99 - 30_000.0).abs() < 30.0, "{:?}", latency.p99);
        assert!((latency.max - 37_449.0).abs() < 37.0, "{:?}", latency.max);
    }
}
