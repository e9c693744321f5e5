//! Summaries of measured samples (nearest-rank percentiles) and the wall clock in nanoseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// The `p` quantile (0 to 1) of sorted samples, by nearest rank; NaN for none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

pub(crate) fn sort(v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
}

fn max(sorted: &[f64]) -> f64 {
    sorted.last().copied().unwrap_or(f64::NAN)
}

/// "median X ms, p90 X ms, p99 X ms, max X ms" of `v` (sorted here), to `decimals` places.
pub(crate) fn summary_to(v: &mut [f64], decimals: usize) -> String {
    sort(v);
    format!(
        "median {:.d$} ms, p90 {:.d$} ms, p99 {:.d$} ms, max {:.d$} ms",
        percentile(v, 0.5),
        percentile(v, 0.9),
        percentile(v, 0.99),
        max(v),
        d = decimals
    )
}

/// [`summary_to`] with one decimal.
pub(crate) fn summary(v: &mut [f64]) -> String {
    summary_to(v, 1)
}

/// The same with the minimum first, for margins (where the smallest is the worst case).
pub(crate) fn summary_min(v: &mut [f64]) -> String {
    sort(v);
    format!("min {:.1} ms, {}", v.first().copied().unwrap_or(f64::NAN), summary(v))
}

/// Nanoseconds since the Unix epoch, comparable with `date +%s%N` in a job on this machine.
pub(crate) fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.9), percentile(&v, 0.99)), (51.0, 90.0, 99.0));
        assert!(percentile(&[], 0.5).is_nan());
        let mut w = vec![3.0, 1.0, 2.0];
        assert_eq!(summary(&mut w), "median 2.0 ms, p90 3.0 ms, p99 3.0 ms, max 3.0 ms");
        assert_eq!(summary_min(&mut w), "min 1.0 ms, median 2.0 ms, p90 3.0 ms, p99 3.0 ms, max 3.0 ms");
    }
}
