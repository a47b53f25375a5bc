//! Power of two choices over peak-EWMA cost.

use std::sync::{Mutex, PoisonError};

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use super::{Endpoints, Policy, RequestInfo};
use crate::rng::distinct_pair;

/// Power of two choices (P2C) over the peak-EWMA cost, as in Finagle, linkerd and
/// `tower::balance::p2c`.
///
/// Two distinct endpoints are drawn uniformly at random and the request goes to the one with the
/// lower cost, where
///
/// ```text
/// cost = latency_estimate × (in_flight + 1)
/// ```
///
/// and `latency_estimate` is the endpoint's peak-EWMA latency: a sample slower than the estimate
/// replaces it at once, a faster one is blended in with weight `1 − e^(−Δt/τ)`, and while no
/// sample arrives it decays towards zero with the same time constant (so an endpoint that was slow
/// once is tried again later). `τ` (10 s) and the latency assumed before the first sample (30 ms)
/// are the balancer's [`TrackingConfig`](crate::TrackingConfig), linkerd's defaults.
///
/// Comparing two random endpoints instead of all of them costs O(1) per request, avoids the herd
/// behaviour of "always the least loaded" when load information is stale, and still keeps the
/// maximum load within `O(log log n)` of the mean (Mitzenmacher, "The Power of Two Choices in
/// Randomized Load Balancing", 2001).
#[derive(Debug)]
pub struct P2cPeakEwma {
    rng: Mutex<Xoshiro256PlusPlus>,
}

impl P2cPeakEwma {
    /// P2C with random draws from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self { rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)) }
    }
}

impl Policy for P2cPeakEwma {
    fn name(&self) -> &'static str {
        "p2c-peak-ewma"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let endpoints = endpoints.eligible();
        let Some((a, b)) =
            distinct_pair(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner), endpoints.len())
        else {
            return Some(0);
        };
        let cost_a = endpoints[a].peak_ewma_cost(request.now);
        let cost_b = endpoints[b].peak_ewma_cost(request.now);
        Some(if cost_a <= cost_b { a } else { b })
    }
}
