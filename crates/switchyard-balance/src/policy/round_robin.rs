//! Round robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Endpoints, Policy, RequestInfo};

/// Each endpoint in turn: request `n` goes to endpoint `n mod len`.
///
/// Ignores load entirely: the baseline every other policy should beat. With a fixed set of
/// endpoints it cycles exactly; when the set changes the cycle continues from the same counter.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn pick(&self, _request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let endpoints = endpoints.eligible();
        Some(self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len())
    }
}
