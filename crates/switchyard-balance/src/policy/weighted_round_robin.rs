//! Smooth weighted round robin.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use switchyard_core::EndpointId;

use super::{Endpoints, Policy, RequestInfo};
use crate::EndpointState;

/// nginx's smooth weighted round robin, weights from [`Endpoint::weight`](switchyard_core::Endpoint).
///
/// Each endpoint keeps a current weight. On every pick each current weight grows by its
/// endpoint's weight, the endpoint with the largest current weight wins (the first one on a tie),
/// and the winner's current weight drops by the total of all weights. Over every cycle of
/// `Σ weight` picks each endpoint is picked exactly `weight` times, and the picks of a heavy
/// endpoint are spread through the cycle rather than bunched (weights 5, 1, 1 give
/// `a a b a c a a`, not `a a a a a b c`). Endpoints of weight 0 get nothing, unless every
/// endpoint has weight 0, when it is plain round robin. O(n) per pick.
///
/// When the membership changes (an endpoint inserted or removed: the
/// [generation](Endpoints::generation) moves), every current weight starts again from zero, as
/// nginx's do when its upstream's peers change: the current weights of the endpoints left behind
/// no longer sum to zero, and kept, they would give one endpoint a run of picks far beyond its
/// weight (weights 2 and 1 after two others left: `aaaaab` instead of `aba`). Ejection does not
/// move the generation and keeps them.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    /// The membership generation the current weights belong to, and the weights.
    current: Mutex<(u64, HashMap<EndpointId, i64>)>,
}

impl WeightedRoundRobin {
    /// Smooth weighted round robin.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted-round-robin"
    }

    fn pick(&self, _request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let generation = endpoints.generation();
        let endpoints = endpoints.eligible();
        let mut state = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (seen, current) = &mut *state;
        if *seen != generation {
            *seen = generation;
            current.clear();
        }
        let all_zero = endpoints.iter().all(|e| e.weight() == 0);
        let weight = |e: &EndpointState| if all_zero { 1 } else { i64::from(e.weight()) };
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, e) in endpoints.iter().enumerate() {
            let w = weight(e);
            if w == 0 {
                continue;
            }
            total += w;
            // `get_mut` first: `entry` would clone the id on every pick.
            let cw = match current.get_mut(e.id()) {
                Some(cw) => {
                    *cw += w;
                    *cw
                }
                None => {
                    current.insert(e.id().clone(), w);
                    w
                }
            };
            if best.is_none_or(|(_, b)| cw > b) {
                best = Some((i, cw));
            }
        }
        let Some((winner, _)) = best else { return Some(0) };
        if let Some(cw) = current.get_mut(endpoints[winner].id()) {
            *cw -= total;
        }
        Some(winner)
    }
}
