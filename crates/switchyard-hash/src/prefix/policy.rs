//! The approximate prefix-aware policy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use switchyard_balance::EndpointState;
use switchyard_balance::policy::{
    Endpoints, Policy, PolicyError, PolicySpec, RequestInfo, ResponseTimeEstimate,
};
use switchyard_core::{EndpointId, PrefixBlocks};

use super::index::PrefixIndex;
use crate::consistent::LoadBound;

/// Settings of [`PrefixAware`]; the defaults and how they were chosen are in the
/// [module documentation](super).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixAwareConfig {
    /// Tokens per prefix block, as the key layer hashes them (512).
    pub block_tokens: u32,
    /// KV-cache tokens each replica can hold (400,000: Llama 3.1 8B on an 80 GB H100, as the
    /// simulated replica); the index keeps `capacity_tokens / block_tokens` blocks per endpoint.
    pub capacity_tokens: u64,
    /// No endpoint takes a request while it holds more than `load_factor` × its share of the
    /// requests in flight (2.0), the bounded-load rule of `bounded-load-hash`.
    pub load_factor: f64,
    /// Weight of the prefill time a cached prefix saves against the expected wait (16).
    pub prefix_weight: f64,
}

impl Default for PrefixAwareConfig {
    fn default() -> Self {
        Self { block_tokens: 512, capacity_tokens: 400_000, load_factor: 2.0, prefix_weight: 16.0 }
    }
}

impl PrefixAwareConfig {
    /// Blocks the index keeps per endpoint.
    pub fn capacity_blocks(&self) -> u32 {
        u32::try_from(self.capacity_tokens / u64::from(self.block_tokens.max(1))).unwrap_or(u32::MAX).max(1)
    }

    fn validate(self) -> Result<Self, PolicyError> {
        let bad = |message: String| PolicyError::InvalidParams { name: "prefix-aware".to_string(), message };
        if self.block_tokens == 0 {
            return Err(bad("block_tokens must be > 0".to_string()));
        }
        if self.capacity_tokens < u64::from(self.block_tokens) {
            return Err(bad(format!(
                "capacity_tokens must hold at least one block ({}), got {}",
                self.block_tokens, self.capacity_tokens
            )));
        }
        if !(self.load_factor.is_finite() && self.load_factor > 1.0) {
            return Err(bad(format!("load_factor must be a number > 1, got {}", self.load_factor)));
        }
        if !(self.prefix_weight.is_finite() && self.prefix_weight >= 0.0) {
            return Err(bad(format!("prefix_weight must be a number >= 0, got {}", self.prefix_weight)));
        }
        Ok(self)
    }
}

/// Prefix-cache-aware routing over an approximate index; see the [module documentation](super).
#[derive(Debug)]
pub struct PrefixAware {
    config: PrefixAwareConfig,
    start: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    index: PrefixIndex,
    generation: Option<(u64, usize)>,
    /// Each member's slot in the index, by membership order.
    member_slots: Vec<u32>,
    slots: BTreeMap<EndpointId, u32>,
    free: Vec<u32>,
    /// Scratch: blocks matched per slot, slot per eligible endpoint.
    matched: Vec<u32>,
    eligible_slots: Vec<u32>,
}

/// What the index holds: entries and bytes, against its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// (block, endpoint) entries held.
    pub entries: usize,
    /// The most entries it may hold (endpoints × blocks each).
    pub capacity: usize,
    /// Heap bytes it holds.
    pub memory_bytes: usize,
}

impl PrefixAware {
    /// The policy with `config` (checked).
    pub fn new(config: PrefixAwareConfig) -> Result<Self, PolicyError> {
        let config = config.validate()?;
        Ok(Self {
            config,
            start: AtomicUsize::new(0),
            state: Mutex::new(State {
                index: PrefixIndex::new(0, config.capacity_blocks()),
                generation: None,
                member_slots: Vec::new(),
                slots: BTreeMap::new(),
                free: Vec::new(),
                matched: Vec::new(),
                eligible_slots: Vec::new(),
            }),
        })
    }

    /// Builds from a spec: `prefix-aware` with [`PrefixAwareConfig`]'s fields as parameters.
    pub fn from_spec(spec: &PolicySpec) -> Result<Self, PolicyError> {
        Self::new(spec.params()?)
    }

    /// The settings.
    pub fn config(&self) -> PrefixAwareConfig {
        self.config
    }

    /// What the index holds now.
    pub fn index_stats(&self) -> IndexStats {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        IndexStats {
            entries: state.index.len(),
            capacity: state.index.capacity(),
            memory_bytes: state.index.memory_bytes(),
        }
    }
}

impl State {
    /// Maps the members to index slots, when the membership moved: known ids keep their slot,
    /// departed ones are forgotten and their slots reused.
    fn sync(&mut self, endpoints: &Endpoints<'_>, capacity_blocks: u32) {
        let members = endpoints.members();
        let key = (endpoints.generation(), members.len());
        if self.generation == Some(key) {
            return;
        }
        self.generation = Some(key);
        let mut next: BTreeMap<EndpointId, u32> = BTreeMap::new();
        for m in members {
            if let Some(slot) = self.slots.remove(m.id()) {
                next.insert(m.id().clone(), slot);
            }
        }
        for slot in std::mem::take(&mut self.slots).into_values() {
            self.index.clear_slot(slot as usize);
            self.free.push(slot);
        }
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        self.member_slots.clear();
        for m in members {
            let slot = match next.get(m.id()) {
                Some(slot) => *slot,
                None => {
                    let slot = self.free.pop().unwrap_or(self.index.slots() as u32);
                    self.index.ensure_slots(slot as usize + 1, capacity_blocks);
                    next.insert(m.id().clone(), slot);
                    slot
                }
            };
            self.member_slots.push(slot);
        }
        self.slots = next;
        self.matched.resize(self.index.slots(), 0);
    }
}

impl Policy for PrefixAware {
    fn name(&self) -> &'static str {
        "prefix-aware"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        self.pick_with(request, endpoints, None)
    }
}

/// Exact prefix matches that override the approximate index's, per eligible endpoint (the
/// precise policy's KV-event index, where its stream is live).
pub(crate) trait ExactMatches {
    /// For each of `eligible`, the number of `blocks`' leading blocks it holds, if known
    /// exactly; into `out` (one entry per eligible endpoint, overwritten).
    fn exact_matches(&self, eligible: &[Arc<EndpointState>], blocks: &[u64], out: &mut Vec<Option<u32>>);
}

impl PrefixAware {
    /// [`Policy::pick`], with `exact` matches (where it knows them) in place of the index's.
    pub(crate) fn pick_with(
        &self,
        request: &RequestInfo<'_>,
        endpoints: &Endpoints<'_>,
        exact: Option<&dyn ExactMatches>,
    ) -> Option<usize> {
        let eligible = endpoints.eligible();
        let n = eligible.len();
        let work = request.work as f64;
        let estimate = ResponseTimeEstimate::over(eligible.iter().map(|e| &**e)).at(request.now);
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        let blocks = request.extensions.and_then(|e| e.get::<PrefixBlocks>()).filter(|b| !b.is_empty());
        let Some(blocks) = blocks else {
            return Some(least_response_time(eligible, &estimate, work, start));
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        state.sync(endpoints, self.config.capacity_blocks());
        state.eligible_slots.clear();
        state.eligible_slots.resize(n, u32::MAX);
        for (member, &slot) in state.member_slots.iter().enumerate() {
            if let Some(i) = endpoints.eligible_index(member) {
                state.eligible_slots[i] = slot;
            }
        }
        let ids = &blocks.ids()[..blocks.len().min(self.config.capacity_blocks() as usize)];
        state.index.longest_matches(ids, &mut state.matched);
        let mut exact_matched = Vec::new();
        if let Some(exact) = exact {
            exact.exact_matches(eligible, ids, &mut exact_matched);
        }

        let bound = LoadBound::new(self.config.load_factor, eligible);
        let block_tokens = f64::from(self.config.block_tokens);
        let mut best = None;
        let mut best_score = f64::INFINITY;
        for offset in 0..n {
            let i = (start + offset) % n;
            let e = &eligible[i];
            if !bound.admits(e) {
                continue;
            }
            let matched = match exact_matched.get(i).copied().flatten() {
                Some(exact) => exact,
                None => state.matched.get(state.eligible_slots[i] as usize).copied().unwrap_or(0),
            };
            let saved = (f64::from(matched) * block_tokens).min(work);
            let score = floored_cost(&estimate, e, work)
                - self.config.prefix_weight * saved * estimate.unit_time_nanos(e);
            if best.is_none() || score < best_score {
                best = Some(i);
                best_score = score;
            }
        }
        let pick = match best {
            Some(i) => i,
            None => least_response_time(eligible, &estimate, work, start),
        };
        let slot = state.eligible_slots[pick];
        if slot != u32::MAX {
            state.index.insert(slot as usize, ids);
        }
        Some(pick)
    }
}

/// `e`'s expected time to first byte for a request of `work` units, never below the request's
/// own no-load prefill there where it carries its size ([`EndpointState::no_load_time_nanos`]),
/// as least response time floors it: an idle slow replica is no cheaper than its own prefill.
fn floored_cost(estimate: &ResponseTimeEstimate, e: &EndpointState, work: f64) -> f64 {
    let cost = estimate.cost_nanos(e, work);
    if work > 1.0 { cost.max(e.no_load_time_nanos(work).unwrap_or(0.0)) } else { cost }
}

/// The eligible endpoint with the least expected time to first byte (the first from `start` on
/// a tie).
fn least_response_time(
    eligible: &[Arc<EndpointState>],
    estimate: &ResponseTimeEstimate,
    work: f64,
    start: usize,
) -> usize {
    let n = eligible.len();
    let mut best = start;
    let mut best_cost = f64::INFINITY;
    for offset in 0..n {
        let i = (start + offset) % n;
        let cost = floored_cost(estimate, &eligible[i], work);
        if cost < best_cost {
            best = i;
            best_cost = cost;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix::test_support::{blocks, states};
    use tokio::time::Instant;

    #[test]
    fn a_prefix_returns_to_the_endpoint_that_was_sent_it() {
        let eps = states(4);
        let policy = PrefixAware::new(PrefixAwareConfig::default()).unwrap();
        let now = Instant::now();
        let first = policy
            .pick(&RequestInfo::new(Some(&blocks(&[1, 2, 3])), now), &Endpoints::all_eligible(&eps, 0))
            .unwrap();
        for _ in 0..5 {
            let again = policy.pick(
                &RequestInfo::new(Some(&blocks(&[1, 2, 3, 4])), now),
                &Endpoints::all_eligible(&eps, 0),
            );
            assert_eq!(again, Some(first));
        }
        // Another prefix goes round (ties rotate).
        let other =
            policy.pick(&RequestInfo::new(Some(&blocks(&[9])), now), &Endpoints::all_eligible(&eps, 0));
        assert!(other.is_some());
        assert_eq!(policy.index_stats().entries, 5);
    }

    #[test]
    fn a_departed_endpoint_is_forgotten_and_its_slot_reused() {
        let eps = states(3);
        let policy = PrefixAware::new(PrefixAwareConfig::default()).unwrap();
        let now = Instant::now();
        let picked = policy
            .pick(&RequestInfo::new(Some(&blocks(&[1, 2])), now), &Endpoints::all_eligible(&eps, 0))
            .unwrap();
        let rest: Vec<_> =
            eps.iter().enumerate().filter(|(i, _)| *i != picked).map(|(_, e)| e.clone()).collect();
        policy.pick(&RequestInfo::new(Some(&blocks(&[5])), now), &Endpoints::all_eligible(&rest, 1));
        assert_eq!(policy.index_stats().entries, 1, "the departed endpoint's blocks are gone");
    }

    #[test]
    fn bad_parameters_name_the_field() {
        for (params, field) in [
            (r#"{"name":"prefix-aware","load_factor":1}"#, "load_factor"),
            (r#"{"name":"prefix-aware","block_tokens":0}"#, "block_tokens"),
            (r#"{"name":"prefix-aware","capacity_tokens":3}"#, "capacity_tokens"),
            (r#"{"name":"prefix-aware","prefix_weight":-1}"#, "prefix_weight"),
            (r#"{"name":"prefix-aware","speed":2}"#, "speed"),
        ] {
            let spec: PolicySpec = serde_json::from_str(params).unwrap();
            let err = PrefixAware::from_spec(&spec).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
