//! Load-report aware choice: what the replicas say about themselves.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use super::{Endpoints, Policy, RequestInfo};
use crate::EndpointState;
use crate::rng::distinct_pair;

/// Power of two choices over a score built from the replicas' own ORCA load reports.
///
/// An LLM replica knows what a proxy cannot see: how many requests wait for a batch slot and how
/// full its KV cache is (a full cache means new requests wait, and long contexts slow every
/// decode step). For each of two random endpoints the policy computes
///
/// ```text
/// score = (waiting + queue_depth + 1) × (1 + kv_weight × kv_cache_utilization)
/// ```
///
/// from the endpoint's last report if it is at most `max_age` old (1 s by default), where
/// `waiting` is the balancer's own count of requests sent there that await their first byte
/// ([`EndpointState::awaiting_first_byte`]: it moves between reports, and unlike the whole
/// in-flight count it is not dominated by long decodes that barely delay a new prompt) and
/// `kv_weight` is 4, so a replica with a full cache costs five times one with an empty cache at
/// the same load. Without a fresh report the score is `waiting + 1`, the same scale with an empty
/// queue and cache. The lower score wins; ties go to the first draw.
#[derive(Debug)]
pub struct LoadReport {
    rng: Mutex<Xoshiro256PlusPlus>,
    max_age: Duration,
    kv_weight: f64,
}

impl LoadReport {
    /// The policy with default settings and random draws from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)),
            max_age: Duration::from_secs(1),
            kv_weight: 4.0,
        }
    }

    /// The same policy, treating reports older than `max_age` as absent.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The score of one endpoint at `now`; lower is better.
    pub fn score(&self, endpoint: &EndpointState, now: tokio::time::Instant) -> f64 {
        let waiting = f64::from(endpoint.awaiting_first_byte());
        match endpoint.fresh_report(now, self.max_age) {
            Some(r) => {
                (waiting + f64::from(r.queue_depth) + 1.0) * (1.0 + self.kv_weight * r.kv_cache_utilization)
            }
            None => waiting + 1.0,
        }
    }
}

impl Policy for LoadReport {
    fn name(&self) -> &'static str {
        "load-report"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let endpoints = endpoints.eligible();
        let Some((a, b)) =
            distinct_pair(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner), endpoints.len())
        else {
            return Some(0);
        };
        Some(if self.score(&endpoints[a], request.now) <= self.score(&endpoints[b], request.now) {
            a
        } else {
            b
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use switchyard_core::{Endpoint, ReportedLoad};
    use tokio::time::Instant;

    fn reporting(kv: f64, queue_depth: u32) -> Arc<EndpointState> {
        let state = Arc::new(EndpointState::new(Endpoint::new("e", "http://e:9001"), Default::default()));
        let report = ReportedLoad { kv_cache_utilization: kv, queue_depth, ..Default::default() };
        state.record_report(report, Instant::now());
        state
    }

    #[tokio::test(start_paused = true)]
    async fn a_fuller_cache_or_a_longer_queue_scores_worse_until_the_report_is_stale() {
        let policy = LoadReport::with_seed(0);
        let now = Instant::now();
        let (empty, full, queued) = (reporting(0.0, 0), reporting(1.0, 0), reporting(0.0, 8));
        assert!(policy.score(&full, now) > policy.score(&empty, now));
        assert!(policy.score(&queued, now) > policy.score(&empty, now));
        let _busy = (0..3).map(|_| empty.start(now, 1)).collect::<Vec<_>>();
        assert!(policy.score(&empty, now) > policy.score(&reporting(0.0, 0), now), "in-flight counts too");

        // Past the 1 s max age a report counts as absent: the score of an endpoint that never
        // reported, at the same in-flight count.
        let later = now + Duration::from_millis(1001);
        let silent = Arc::new(EndpointState::new(Endpoint::new("s", "http://s:9001"), Default::default()));
        assert_eq!(policy.score(&full, later), policy.score(&silent, later));
        let _also_busy = (0..3).map(|_| silent.start(now, 1)).collect::<Vec<_>>();
        assert_eq!(policy.score(&empty, later), policy.score(&silent, later));
        let patient = LoadReport::with_seed(0).with_max_age(Duration::from_secs(5));
        assert!(
            patient.score(&full, later) > patient.score(&reporting(0.0, 0), later),
            "fresh under a longer max age"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn picks_the_better_of_two() {
        let policy = LoadReport::with_seed(0);
        let endpoints = [reporting(1.0, 0), reporting(0.0, 0)];
        let info = RequestInfo::new(None, Instant::now());
        for _ in 0..20 {
            assert_eq!(policy.pick(&info, &Endpoints::all_eligible(&endpoints, 0)), Some(1));
        }
    }
}
