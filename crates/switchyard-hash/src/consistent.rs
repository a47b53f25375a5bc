//! Consistent hashing, with and without bounded loads.
//!
//! # The rule
//!
//! A request's key (its [`RoutingKey`](switchyard_core::RoutingKey), or else the id of its
//! second [`PrefixBlocks`](switchyard_core::PrefixBlocks) block; see [`request_key`]) is hashed onto a
//! [`Ring`] built over the pool's members. Plain consistent hashing (`consistent-hash`) sends it
//! to the first eligible endpoint clockwise. Consistent hashing with bounded loads
//! (`bounded-load-hash`; Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
//! Loads", SODA 2018, <https://arxiv.org/abs/1608.01350>) walks on past any endpoint that already
//! holds more than its share:
//!
//! ```text
//! accept endpoint i  iff  in_flight_i + 1 <= c × (Σ in_flight + 1) × w_i / Σ w
//! ```
//!
//! over the eligible endpoints, with in-flight counts read from the balancer's
//! [`LoadBoard`](switchyard_balance::LoadBoard) states (nothing is counted twice). With `c` =
//! 1.25 (the default, and Vimeo's and HAProxy's `hash-balance-factor 125`) no endpoint holds more
//! than 1.25 × its share of the requests in flight at the moment of a pick, while a key still
//! lands on its own endpoint as long as that endpoint is not overloaded: the paper shows that the
//! expected number of keys moved by an insertion or removal stays `O(1/c²)` times plain
//! consistent hashing's. If every endpoint is past its bound (possible only when few requests
//! are in flight), the least loaded by weight takes the request.
//!
//! # Membership, ejection and agreement
//!
//! The ring is built over the pool's *members* (ejected ones included) and rebuilt only when the
//! membership generation moves. An ejected endpoint's points stay on the ring and are skipped,
//! so only its keys move, to their next endpoint clockwise, and they come back when it returns.
//! Point positions depend only on endpoint ids and weights, so two balancers (two gateways) with
//! the same endpoints send every key to the same endpoint, with no shared state (for the
//! bounded variant: as long as their in-flight counts agree).
//!
//! A request without a key goes to the endpoint with the fewest requests in flight per weight.
//!
//! # Why this scheme
//!
//! - **Ring hashing with virtual nodes** (Karger et al. 1997; ketama; Envoy `RING_HASH`; nginx
//!   `hash ... consistent`; HAProxy `hash-type consistent`) moves `1/N` of the keys on a change,
//!   takes weights as point counts, and gives a natural *next* endpoint, which is what the load
//!   bound and ejection need: a walk clockwise visits the other endpoints in a key-specific order.
//! - **Maglev** (Eisenbud et al., NSDI 2016; Envoy `MAGLEV`) looks up in O(1) from a fixed
//!   table and spreads keys more evenly, but a membership change moves somewhat more than `1/N`
//!   (the table is refilled), and it has no cheap key-specific fallback order; bounded loads
//!   need one.
//! - **Rendezvous (highest random weight)** hashing (Thaler and Ravishankar 1998) moves exactly
//!   `1/N` and orders all endpoints per key, but costs O(N) hashes per lookup: 1,000 endpoints
//!   are 1,000 hashes per request, where the ring's lookup is a bucket read and a short search
//!   (see the `hash` bench).
//!
//! # Parameters
//!
//! `{ name = "bounded-load-hash", load_factor = 1.25, points_per_weight = 160, key_blocks = 2 }`;
//! `consistent-hash` takes `points_per_weight` and `key_blocks`. `load_factor` must be > 1;
//! `key_blocks` is [`request_key`]'s.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use switchyard_balance::EndpointState;
use switchyard_balance::policy::{Endpoints, Policy, PolicyError, PolicySpec, RequestInfo};

use crate::key::{DEFAULT_KEY_BLOCKS, request_key};
use crate::ring::{DEFAULT_POINTS_PER_WEIGHT, Ring};

/// The default load factor `c` of `bounded-load-hash`.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// Consistent hashing over the pool's members, optionally with bounded loads; see the
/// [module documentation](self).
#[derive(Debug)]
pub struct ConsistentHash {
    load_factor: Option<f64>,
    points_per_weight: u32,
    key_blocks: usize,
    ring: ArcSwapOption<BuiltRing>,
}

#[derive(Debug)]
struct BuiltRing {
    generation: u64,
    members: usize,
    ring: Ring,
}

impl ConsistentHash {
    /// Plain consistent hashing (`consistent-hash`).
    pub fn new() -> Self {
        Self {
            load_factor: None,
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
            key_blocks: DEFAULT_KEY_BLOCKS,
            ring: ArcSwapOption::empty(),
        }
    }

    /// Consistent hashing with bounded loads (`bounded-load-hash`): no endpoint takes a request
    /// while it holds more than `load_factor` × its share of the requests in flight.
    /// `load_factor` must be > 1 (finite), or an error names it.
    pub fn bounded(load_factor: f64) -> Result<Self, PolicyError> {
        if !(load_factor.is_finite() && load_factor > 1.0) {
            return Err(PolicyError::InvalidParams {
                name: "bounded-load-hash".to_string(),
                message: format!("load_factor must be a number > 1, got {load_factor}"),
            });
        }
        Ok(Self { load_factor: Some(load_factor), ..Self::new() })
    }

    /// The same policy with `points` ring points per unit of endpoint weight (at least 1).
    pub fn with_points_per_weight(mut self, points: u32) -> Self {
        self.points_per_weight = points.max(1);
        self
    }

    /// The same policy keying requests without a session key by their prefix block number
    /// `blocks` (see [`request_key`]).
    pub fn with_key_blocks(mut self, blocks: usize) -> Self {
        self.key_blocks = blocks.max(1);
        self
    }

    /// The load factor, for the bounded variant.
    pub fn load_factor(&self) -> Option<f64> {
        self.load_factor
    }

    /// The ring for this membership, built now if the generation moved.
    fn ring(&self, endpoints: &Endpoints<'_>) -> Arc<BuiltRing> {
        let members = endpoints.members();
        if let Some(built) = self.ring.load_full()
            && built.generation == endpoints.generation()
            && built.members == members.len()
        {
            return built;
        }
        let ring = Ring::new(members.iter().map(|m| (m.id().as_str(), m.weight())), self.points_per_weight);
        let built = Arc::new(BuiltRing { generation: endpoints.generation(), members: members.len(), ring });
        self.ring.store(Some(built.clone()));
        built
    }

    /// Builds from a spec: `consistent-hash` or `bounded-load-hash` with their parameters.
    pub fn from_spec(spec: &PolicySpec, bounded: bool) -> Result<Self, PolicyError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Plain {
            points_per_weight: Option<u32>,
            key_blocks: Option<usize>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bounded {
            load_factor: Option<f64>,
            points_per_weight: Option<u32>,
            key_blocks: Option<usize>,
        }
        let (policy, points, key_blocks) = if bounded {
            let p: Bounded = spec.params()?;
            (Self::bounded(p.load_factor.unwrap_or(DEFAULT_LOAD_FACTOR))?, p.points_per_weight, p.key_blocks)
        } else {
            let p: Plain = spec.params()?;
            (Self::new(), p.points_per_weight, p.key_blocks)
        };
        Ok(policy
            .with_points_per_weight(points.unwrap_or(DEFAULT_POINTS_PER_WEIGHT))
            .with_key_blocks(key_blocks.unwrap_or(DEFAULT_KEY_BLOCKS)))
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy for ConsistentHash {
    fn name(&self) -> &'static str {
        if self.load_factor.is_some() { "bounded-load-hash" } else { "consistent-hash" }
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let eligible = endpoints.eligible();
        let Some(key) = request_key(request, self.key_blocks) else {
            return Some(least_loaded(eligible));
        };
        let built = self.ring(endpoints);
        let bound = self.load_factor.map(|c| LoadBound::new(c, eligible));
        for member in built.ring.walk(key) {
            let Some(i) = endpoints.eligible_index(member) else { continue };
            match &bound {
                None => return Some(i),
                Some(bound) if bound.admits(&eligible[i]) => return Some(i),
                Some(_) => {}
            }
        }
        Some(least_loaded(eligible))
    }
}

/// The bounded-load test at one pick: `⌈c × (Σ in_flight + 1) × weight / Σ weight⌉` requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadBound {
    per_weight: f64,
}

impl LoadBound {
    pub(crate) fn new(load_factor: f64, eligible: &[Arc<EndpointState>]) -> Self {
        let (mut load, mut weight) = (0u64, 0u64);
        for e in eligible {
            load += u64::from(e.in_flight());
            weight += u64::from(e.weight());
        }
        Self { per_weight: load_factor * (load + 1) as f64 / weight.max(1) as f64 }
    }

    /// Whether `e` may take one more request. The capacity is rounded up, as in the paper, so
    /// that an idle pool admits its first requests.
    pub(crate) fn admits(&self, e: &EndpointState) -> bool {
        f64::from(e.in_flight()) + 1.0 <= (self.per_weight * f64::from(e.weight())).ceil()
    }
}

/// The eligible endpoint with the fewest requests in flight per unit of weight (the first on a
/// tie; weight 0 counts as a tiny weight).
pub(crate) fn least_loaded(eligible: &[Arc<EndpointState>]) -> usize {
    let mut best = 0;
    let mut best_load = f64::INFINITY;
    for (i, e) in eligible.iter().enumerate() {
        let load = (f64::from(e.in_flight()) + 1.0) / f64::from(e.weight()).max(1e-3);
        if load < best_load {
            best = i;
            best_load = load;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::{Endpoint, RoutingKey};
    use tokio::time::Instant;

    fn states(ids: &[String]) -> Vec<Arc<EndpointState>> {
        ids.iter()
            .map(|id| {
                Arc::new(EndpointState::new(Endpoint::new(id.as_str(), "http://e"), Default::default()))
            })
            .collect()
    }

    fn pick(policy: &ConsistentHash, eps: &[Arc<EndpointState>], generation: u64, key: &str) -> String {
        let mut ext = http::Extensions::new();
        ext.insert(RoutingKey::new(key));
        let req = RequestInfo::new(Some(&ext), Instant::now());
        let i = policy.pick(&req, &Endpoints::all_eligible(eps, generation)).unwrap();
        eps[i].id().as_str().to_string()
    }

    #[test]
    fn the_ring_is_rebuilt_when_the_generation_moves() {
        let ids: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
        let policy = ConsistentHash::new();
        let five = states(&ids);
        let four = states(&ids[..4]);
        let keys: Vec<String> = (0..500).map(|k| format!("k{k}")).collect();
        let before: Vec<String> = keys.iter().map(|k| pick(&policy, &five, 1, k)).collect();
        assert!(before.iter().any(|e| e == "e4"));
        let after: Vec<String> = keys.iter().map(|k| pick(&policy, &four, 2, k)).collect();
        assert!(after.iter().all(|e| e != "e4"));
        for (b, a) in before.iter().zip(&after) {
            if b != "e4" {
                assert_eq!(a, b, "only e4's keys move");
            }
        }
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let spec: PolicySpec =
            serde_json::from_str(r#"{"name":"bounded-load-hash","load_factor":0.9}"#).unwrap();
        let err = ConsistentHash::from_spec(&spec, true).unwrap_err().to_string();
        assert!(err.contains("load_factor"), "{err}");
        let spec: PolicySpec = serde_json::from_str(r#"{"name":"consistent-hash","load_factor":2}"#).unwrap();
        assert!(ConsistentHash::from_spec(&spec, false).unwrap_err().to_string().contains("load_factor"));
        let spec: PolicySpec =
            serde_json::from_str(r#"{"name":"bounded-load-hash","load_factor":2,"points_per_weight":40}"#)
                .unwrap();
        let p = ConsistentHash::from_spec(&spec, true).unwrap();
        assert_eq!((p.load_factor(), p.points_per_weight, p.name()), (Some(2.0), 40, "bounded-load-hash"));
    }

    #[test]
    fn a_request_without_a_key_goes_to_the_least_loaded() {
        let eps = states(&["a".to_string(), "b".to_string()]);
        let req = RequestInfo::new(None, Instant::now());
        // Nothing in flight: the first; the policy never fails.
        assert_eq!(ConsistentHash::new().pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0));
    }
}
