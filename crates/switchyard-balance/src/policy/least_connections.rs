//! Least connections.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Endpoints, Policy, RequestInfo};

/// The endpoint with the fewest requests in flight, exactly (a scan of every endpoint).
///
/// Ties are broken fairly: the scan starts one endpoint further on each request, and the first
/// endpoint with the minimum wins, so tied endpoints take turns. This is nginx's `least_conn` and
/// HAProxy's `leastconn`. It reacts to a slow endpoint only through its growing in-flight count.
#[derive(Debug, Default)]
pub struct LeastConnections {
    start: AtomicUsize,
}

impl LeastConnections {
    /// Least connections.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-connections"
    }

    fn pick(&self, _request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let endpoints = endpoints.eligible();
        let n = endpoints.len();
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = u32::MAX;
        for offset in 0..n {
            let i = (start + offset) % n;
            let load = endpoints[i].in_flight();
            if load < best_load {
                best = i;
                best_load = load;
            }
        }
        Some(best)
    }
}
