//! Least response time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Policy, RequestInfo};
use crate::EndpointState;

/// The endpoint with the lowest expected response time, over all endpoints:
///
/// ```text
/// cost = latency_estimate × (in_flight + 1)
/// ```
///
/// the time one request takes there times the requests it would share the endpoint with. The
/// latency estimate is the balancer's peak EWMA (see [`P2cPeakEwma`](super::P2cPeakEwma)); an
/// endpoint without a sample yet counts the default RTT (30 ms), so new endpoints are tried.
/// Unlike P2C it compares every endpoint, so it is exact but O(n) per request, and prone to
/// sending a burst to one endpoint between two updates of its estimate. Ties go to the endpoint
/// after the previous pick.
#[derive(Debug, Default)]
pub struct LeastResponseTime {
    start: AtomicUsize,
}

impl LeastResponseTime {
    /// Least response time.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for LeastResponseTime {
    fn name(&self) -> &'static str {
        "least-response-time"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &[Arc<EndpointState>]) -> usize {
        let n = endpoints.len();
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_cost = f64::INFINITY;
        for offset in 0..n {
            let i = (start + offset) % n;
            let cost = endpoints[i].peak_ewma_cost(request.now);
            if cost < best_cost {
                best = i;
                best_cost = cost;
            }
        }
        best
    }
}
