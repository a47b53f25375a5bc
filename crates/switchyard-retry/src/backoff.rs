//! gRPC's exponential backoff with jitter (gRFC A6), drawn from a seeded generator.

use std::time::Duration;

use crate::RetryConfig;

/// The waits of one call: the n-th retry waits a uniform draw below
/// `min(initial_backoff × multiplier^(n-1), max_backoff)`; a server's pushback replaces the draw
/// and starts the bound again from `initial_backoff`.
#[derive(Debug)]
pub(crate) struct Backoff {
    bound: Duration,
    state: u64,
}

impl Backoff {
    /// The backoff of a call, drawing from `seed` (the layer's seed mixed with the call's number,
    /// so a run with the same seed and order waits the same).
    pub(crate) fn new(config: &RetryConfig, seed: u64) -> Self {
        Self { bound: config.initial_backoff, state: seed }
    }

    /// The wait before the next retry.
    pub(crate) fn next(&mut self, config: &RetryConfig, pushback: Option<Duration>) -> Duration {
        if let Some(pushback) = pushback {
            self.bound = config.initial_backoff;
            return pushback;
        }
        let wait = self.bound.mul_f64(self.unit());
        self.bound = self.bound.mul_f64(config.backoff_multiplier).min(config.max_backoff);
        wait
    }

    /// A uniform draw in [0, 1): splitmix64.
    fn unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_below_a_growing_capped_bound() {
        let config = RetryConfig::default();
        let mut backoff = Backoff::new(&config, 7);
        let bounds = [25, 50, 100, 200, 400, 800, 1000, 1000];
        for bound in bounds {
            assert!(backoff.next(&config, None) < Duration::from_millis(bound));
        }
        assert_eq!(backoff.next(&config, Some(Duration::from_millis(3))), Duration::from_millis(3));
        assert!(backoff.next(&config, None) < Duration::from_millis(25));
    }
}
