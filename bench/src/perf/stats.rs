//! Turning samples into figures: HDR histograms (microseconds, three significant digits) for
//! percentiles, percentile curves for the plots, and time bins for latency over time.

use super::target::Sample;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of one latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A histogram of microseconds from 1 µs to an hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `us`, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, us: u64) {
    let _ = histogram.record(us.clamp(1, 3_600_000_000));
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }

    pub fn from_values(values: impl IntoIterator<Item = u64>) -> (Self, Histogram<u64>) {
        let mut h = histogram();
        for v in values {
            record(&mut h, v);
        }
        (Self::of(&h), h)
    }
}

/// Quantiles drawn in the percentile plots (up to what the sample count can show).
const QUANTILES: [f64; 12] = [
    0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// `(quantile, ms)` points of a histogram.
pub fn curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let n = histogram.len() as f64;
    QUANTILES
        .iter()
        .filter(|&&q| q == 1.0 || (1.0 - q) * n >= 1.0)
        .map(|&q| (q, ms(histogram.value_at_quantile(q))))
        .collect()
}

/// A command that ended, for the accept→applied figures.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    /// When it was accepted, in seconds from the phase's start.
    pub accepted: f64,
    /// Accept → applied (or rejected), µs.
    pub us: u64,
    pub hot: bool,
    /// It ended inside the phase's window (counts towards applied/s).
    pub in_window: bool,
}

/// One slice of a phase.
#[derive(Clone, Debug, Serialize)]
pub struct Bin {
    /// Start of the slice, seconds from the phase's start.
    pub t: f64,
    /// Answers to commands due in the slice.
    pub answered: u64,
    pub answer_p50_ms: Option<f64>,
    pub answer_p99_ms: Option<f64>,
    /// Commands accepted in the slice that have ended.
    pub finished: u64,
    pub applied_p50_ms: Option<f64>,
    pub applied_p99_ms: Option<f64>,
}

/// Latency over time: `count` slices of the phase's `seconds`, answers binned by when they were
/// due, finished commands by when they were accepted. Only accepted answers count.
pub fn bins(samples: &[Sample], finished: &[Finished], seconds: f64, count: usize) -> Vec<Bin> {
    let width = (seconds / count as f64).max(0.01);
    let slot = |t: f64| ((t / width).floor().max(0.0) as usize).min(count - 1);
    let mut answers: Vec<Histogram<u64>> = (0..count).map(|_| histogram()).collect();
    let mut applied: Vec<Histogram<u64>> = (0..count).map(|_| histogram()).collect();
    for s in samples.iter().filter(|s| s.answer.accepted()) {
        record(&mut answers[slot(s.due)], s.latency_us);
    }
    for f in finished {
        record(&mut applied[slot(f.accepted)], f.us);
    }
    let quantile = |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| ms(h.value_at_quantile(q)));
    (0..count)
        .map(|i| Bin {
            t: (i as f64 * width * 1000.0).round() / 1000.0,
            answered: answers[i].len(),
            answer_p50_ms: quantile(&answers[i], 0.5),
            answer_p99_ms: quantile(&answers[i], 0.99),
            finished: applied[i].len(),
            applied_p50_ms: quantile(&applied[i], 0.5),
            applied_p99_ms: quantile(&applied[i], 0.99),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let (latency, h) = Latency::from_values((1..=1000).map(|ms| ms * 1000));
        assert_eq!(latency.count, 1000);
        assert!((latency.p50_ms - 500.0).abs() < 1.0, "{latency:?}");
        assert!((latency.p99_ms - 990.0).abs() < 1.0, "{latency:?}");
        assert!((latency.max_ms - 1000.0).abs() < 1.0, "{latency:?}");
        let points = curve(&h);
        assert_eq!(points.first().unwrap().0, 0.0);
        assert_eq!(points.last().unwrap().0, 1.0);
        assert!(points.iter().all(|&(q, _)| q <= 0.999 || q == 1.0));
    }
}
