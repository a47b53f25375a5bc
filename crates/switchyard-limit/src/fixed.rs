//! A fixed limit: what tower's `ConcurrencyLimit` does, as a [`LimitAlgorithm`].

use crate::algorithm::{LimitAlgorithm, Sample};

/// A limit that never moves, whatever the samples say. The baseline the adaptive algorithms are
/// measured against, and the right choice when the capacity is known (a replica with `k` slots).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixed {
    /// The limit (at least 1).
    pub limit: usize,
}

impl Fixed {
    /// A fixed limit of `limit` (at least 1).
    pub fn new(limit: usize) -> Self {
        Self { limit: limit.max(1) }
    }
}

impl LimitAlgorithm for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn limit(&self) -> usize {
        self.limit.max(1)
    }

    fn update(&mut self, _sample: &Sample) -> usize {
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    #[tokio::test(start_paused = true)]
    async fn neither_latency_nor_drops_move_it() {
        let mut fixed = Fixed::new(8);
        for ms in [10, 100, 1000] {
            assert_eq!(fixed.update(&sample(ms, 8, false)), 8);
        }
        assert_eq!(fixed.update(&sample(10, 8, true)), 8);
        assert_eq!(Fixed::new(0).limit(), 1);
    }
}
