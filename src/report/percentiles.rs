//! Percentile summaries of latency samples.

/// Mean and tail percentiles of a set of samples (milliseconds in every report).
///
/// Percentiles are nearest-rank: `p99` is the smallest sample with at least 99% of the samples at
/// or below it, so it is always a value that was measured. An empty set summarises to zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl Percentiles {
    /// Summarises `samples` (sorted in place; NaNs are ignored).
    pub fn of(samples: &mut Vec<f64>) -> Self {
        samples.retain(|v| !v.is_nan());
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let n = samples.len();
            let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            samples[idx]
        };
        Self {
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples[samples.len() - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_one_to_a_thousand() {
        let mut v: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (500.0, 900.0, 990.0, 999.0, 1000.0));
        assert_eq!(p.mean, 500.5);
    }

    #[test]
    fn small_and_empty_sets() {
        assert_eq!(Percentiles::of(&mut vec![]), Percentiles::default());
        let p = Percentiles::of(&mut vec![f64::NAN, 3.0]);
        assert_eq!((p.p50, p.p999, p.mean), (3.0, 3.0, 3.0));
    }
}
