//! Policies: how the balancer picks one endpoint for a request.
//!
//! A [`Policy`] sees the request's extensions (where routing keys travel) and the pool's
//! [`Endpoints`]: the eligible ones (members not ejected; every member when all are ejected), in
//! a stable order, each with its live load ([`EndpointState`]); every member with its
//! eligibility; and the membership generation, which moves only when endpoints are added or
//! removed. It returns the index of its pick among the eligible, or `None` when none fits the
//! request (the caller gets `UNAVAILABLE`, "no endpoint fits"). Policies are `Send + Sync` and
//! pick through `&self`, so one policy serves many requests at once, and a [`PolicyHandle`] can
//! swap it while the balancer runs.
//!
//! Policies are named and parameterised by a [`PolicySpec`] (`"p2c-peak-ewma"`, or in TOML
//! `{ name = "bounded-load-hash", load_factor = 1.25 }`, a policy the coming hash-routing crate is
//! to register) and built by the [`PolicyRegistry`]:
//! the built-ins below are registered in the process-wide [`registry()`], and other crates (or a
//! program) register theirs there, by name, so that the gateway's config, its admin API and the
//! lab can all name them.
//!
//! | name | policy | reads |
//! | --- | --- | --- |
//! | `round-robin` | [`RoundRobin`] | nothing |
//! | `weighted-round-robin` | [`WeightedRoundRobin`] | `Endpoint::weight` |
//! | `least-connections` | [`LeastConnections`] | in-flight requests |
//! | `least-response-time` | [`LeastResponseTime`] | unit time to first byte, pending work, request size, in-flight |
//! | `p2c-peak-ewma` | [`P2cPeakEwma`] | peak-EWMA latency, in-flight |
//! | `random` | [`Random`] | nothing |
//! | `load-report` | [`LoadReport`] | LRT's signals, plus the replicas' ORCA reports (queue, running, capacity) |
//!
//! # The two cost models
//!
//! Both estimate a request's time to first byte (for an LLM stream, its time to first token) on
//! each endpoint and pick the least; both learn each endpoint's speed and slots from its
//! answers, and both compute it with one piece of arithmetic, [`ResponseTimeEstimate`].
//!
//! - [`LeastResponseTime`] sees only what this balancer sent:
//!
//!   ```text
//!   cost    = (pending_work + work) × unit_time × √((in_flight + 1) / (mean_in_flight + 1)) ÷ at_once
//!   at_once = min(slots, awaiting_first_byte + 1)
//!   ```
//!
//!   where `pending_work` is the work of its requests there still awaiting a first byte, `work`
//!   the request's prompt tokens (1 without a size), `unit_time` the endpoint's learned time per
//!   unit of work, `slots` how many requests it serves at once before latency grows (1 for an
//!   LLM engine's prefill, `k` for a server of `k` parallel slots; see [`crate::capacity`]),
//!   and the square root a soft brake on an endpoint holding more than its share of requests in
//!   flight.
//! - [`LoadReport`] (the default) adds what the replica reports and the balancer did not send: the reported
//!   queue and running requests less the balancer's own at the moment the report arrived (so no
//!   request counts twice), the foreign queue worked off at the endpoint's speed as the report
//!   ages, and the brake over the replica's whole occupancy, own and foreign. Where the
//!   occupancy reaches the batch `capacity` the replica reports, a new request also waits for a
//!   slot: `beyond × hold ÷ capacity`, with `beyond` the requests past the batch (itself
//!   included) and `hold` the time a request keeps its slot (its prefill plus how long a
//!   response runs after its first byte, [`EndpointState::after_first_byte_nanos`]). Its cost
//!   is the later of LRT's backlog cost over that larger backlog and the slot wait followed by
//!   its own work. Without a fresh report it is LRT.
//!
//! In lab `hetero` (eight replicas of speeds 0.25 to 1, 70 % load, one balancer), p99 TTFT:
//! Azure trace, LRT 180 ms, load-report 180 ms (ideal 179 ms); Mooncake trace, LRT 7,696 ms,
//! load-report 7,696 ms (ideal 7,482 ms). With one balancer the reports hold nothing it does
//! not know, so the two pick alike; the previous load-report score, `(awaiting + queue + 1) ×
//! (1 + 4 × kv_use)` over two random endpoints, was at 728 ms (3.8 × LRT) and 36,132 ms (4.6 ×).
//! In lab `hetero-parallel` (classic servers of 8 slots, one four times slower) both are near
//! the ideal's p99 (12 ms each; over real processes, `switchyard bench hetero-parallel`, 28 ms
//! where HAProxy's and nginx's least connections are at 82 ms); load-report's earlier rule, any replica with a free batch slot before
//! every full one, sent requests to the idle slow server while a fast one's slot was about to
//! free, and was at 3.33 × the ideal.

mod endpoints;
mod least_connections;
mod least_response_time;
mod load_report;
mod p2c;
mod random;
mod registry;
mod round_robin;
mod weighted_round_robin;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use crate::rng::NEAR_TIE;
use arc_swap::ArcSwap;
pub use endpoints::Endpoints;
pub use least_connections::LeastConnections;
pub use least_response_time::{Backlog, LeastResponseTime, ResponseTimeEstimate};
pub use load_report::{LoadEstimate, LoadReport};
pub use p2c::P2cPeakEwma;
pub use random::Random;
pub use registry::{PolicyError, PolicyFactory, PolicyRegistry, registry};
pub use round_robin::RoundRobin;
/// A policy by name with parameters: a [`switchyard_core::Spec`].
pub type PolicySpec = switchyard_core::Spec;
use tokio::time::Instant;
pub use weighted_round_robin::WeightedRoundRobin;

#[cfg(doc)]
use crate::EndpointState;

/// What a policy may know about the request it places.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The request's extensions, where key-extraction layers put
    /// [`RoutingKey`](switchyard_core::RoutingKey), [`PrefixBlocks`](switchyard_core::PrefixBlocks)
    /// and [`Priority`](switchyard_core::Priority). `None` for request types without extensions.
    pub extensions: Option<&'a http::Extensions>,
    /// The time of the pick.
    pub now: Instant,
    /// The request's work, in the units the balancer counts pending work in: its prompt tokens
    /// when it carries a [`RequestSize`](switchyard_core::RequestSize), otherwise 1.
    pub work: u64,
}

impl<'a> RequestInfo<'a> {
    /// A request with these extensions, placed at `now`; its work is read from its
    /// [`RequestSize`](switchyard_core::RequestSize) extension.
    pub fn new(extensions: Option<&'a http::Extensions>, now: Instant) -> Self {
        let work = extensions
            .and_then(|e| e.get::<switchyard_core::RequestSize>())
            .map_or(1, |size| u64::from(size.prompt_tokens.max(1)));
        Self { extensions, now, work }
    }
}

/// Picks one endpoint for each request.
pub trait Policy: Send + Sync + fmt::Debug + 'static {
    /// The policy's name, as config, flags and reports spell it (`p2c-peak-ewma`).
    fn name(&self) -> &'static str;

    /// The index in [`endpoints.eligible()`](Endpoints::eligible) of the endpoint to send the
    /// request to, or `None` when none fits. The eligible list is never empty. An index out of
    /// range is a bug of the policy: the request fails as if none fitted, and it is logged.
    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize>;
}

/// The policies Switchyard ships, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// [`RoundRobin`].
    RoundRobin,
    /// [`WeightedRoundRobin`].
    WeightedRoundRobin,
    /// [`LeastConnections`].
    LeastConnections,
    /// [`LeastResponseTime`].
    LeastResponseTime,
    /// [`P2cPeakEwma`].
    P2cPeakEwma,
    /// [`Random`].
    Random,
    /// [`LoadReport`].
    LoadReport,
}

impl PolicyKind {
    /// Every policy, in the order reports list them.
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::RoundRobin,
        PolicyKind::WeightedRoundRobin,
        PolicyKind::LeastConnections,
        PolicyKind::LeastResponseTime,
        PolicyKind::P2cPeakEwma,
        PolicyKind::Random,
        PolicyKind::LoadReport,
    ];

    /// The default policy: see the crate documentation for why.
    pub const DEFAULT: PolicyKind = PolicyKind::LoadReport;

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::WeightedRoundRobin => "weighted-round-robin",
            PolicyKind::LeastConnections => "least-connections",
            PolicyKind::LeastResponseTime => "least-response-time",
            PolicyKind::P2cPeakEwma => "p2c-peak-ewma",
            PolicyKind::Random => "random",
            PolicyKind::LoadReport => "load-report",
        }
    }

    /// A one-line description, as `--help` and the registry list it.
    pub fn description(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "each endpoint in turn",
            PolicyKind::WeightedRoundRobin => "nginx's smooth weighted round robin, by endpoint weight",
            PolicyKind::LeastConnections => "fewest requests in flight",
            PolicyKind::LeastResponseTime => {
                "least expected time to first byte: pending work times measured speed"
            }
            PolicyKind::P2cPeakEwma => "power of two choices by peak-EWMA latency times in-flight",
            PolicyKind::Random => "uniformly at random",
            PolicyKind::LoadReport => {
                "least response time plus the load the replicas' ORCA reports show from other clients (the default)"
            }
        }
    }

    /// This built-in's spec (its name, no parameters).
    pub fn spec(self) -> PolicySpec {
        PolicySpec::named(self.name())
    }

    /// A new policy of this kind with default settings; random choices come from `seed`.
    pub fn build(self, seed: u64) -> Arc<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Arc::new(RoundRobin::new()),
            PolicyKind::WeightedRoundRobin => Arc::new(WeightedRoundRobin::new()),
            PolicyKind::LeastConnections => Arc::new(LeastConnections::new()),
            PolicyKind::LeastResponseTime => Arc::new(LeastResponseTime::with_seed(seed)),
            PolicyKind::P2cPeakEwma => Arc::new(P2cPeakEwma::with_seed(seed)),
            PolicyKind::Random => Arc::new(Random::with_seed(seed)),
            PolicyKind::LoadReport => Arc::new(LoadReport::with_seed(seed)),
        }
    }
}

impl From<PolicyKind> for PolicySpec {
    fn from(kind: PolicyKind) -> Self {
        kind.spec()
    }
}

impl Default for PolicyKind {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name that Switchyard does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {name:?}; expected one of: {}", PolicyKind::ALL.map(PolicyKind::name).join(", "))]
pub struct UnknownPolicy {
    /// The name given.
    pub name: String,
}

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| UnknownPolicy { name: s.to_string() })
    }
}

/// The policy of a running balancer, shared with whoever may switch it.
///
/// Cloning gives another handle on the same slot. [`set`](Self::set) swaps the policy atomically:
/// each pick uses either the old or the new policy, whole; requests already sent are not touched.
#[derive(Clone)]
pub struct PolicyHandle {
    slot: Arc<ArcSwap<Arc<dyn Policy>>>,
}

impl PolicyHandle {
    /// A handle holding `policy`.
    pub fn new(policy: Arc<dyn Policy>) -> Self {
        Self { slot: Arc::new(ArcSwap::from_pointee(policy)) }
    }

    /// A handle holding a new policy of `kind`.
    pub fn of(kind: PolicyKind, seed: u64) -> Self {
        Self::new(kind.build(seed))
    }

    /// The current policy.
    pub fn get(&self) -> Arc<dyn Policy> {
        Arc::clone(&self.slot.load())
    }

    /// Replaces the policy; returns the previous one.
    pub fn set(&self, policy: Arc<dyn Policy>) -> Arc<dyn Policy> {
        Arc::unwrap_or_clone(self.slot.swap(Arc::new(policy)))
    }

    /// The current policy's name.
    pub fn name(&self) -> &'static str {
        self.slot.load().name()
    }

    /// A handle holding a new policy built from `spec` by the process-wide [`registry()`].
    pub fn from_spec(spec: &PolicySpec, seed: u64) -> Result<Self, PolicyError> {
        Ok(Self::new(registry().build(spec, seed)?))
    }

    pub(crate) fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        self.slot.load().pick(request, endpoints)
    }
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PolicyHandle").field(&self.name()).finish()
    }
}

/// The default policy ([`PolicyKind::DEFAULT`]) with a seed of its own
/// ([`fresh_seed`](crate::fresh_seed)), so that balancers built the default way, one in each
/// client process or several in one, do not break ties in step. [`PolicyHandle::of`] with a
/// fixed seed gives a reproducible one.
impl Default for PolicyHandle {
    fn default() -> Self {
        Self::of(PolicyKind::DEFAULT, crate::fresh_seed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.name().parse::<PolicyKind>(), Ok(kind));
            assert_eq!(kind.build(1).name(), kind.name());
        }
        assert_eq!("P2C_PEAK_EWMA".parse::<PolicyKind>(), Ok(PolicyKind::P2cPeakEwma));
        let err = "fastest".parse::<PolicyKind>().unwrap_err().to_string();
        assert!(err.contains("\"fastest\"") && err.contains("least-connections"), "{err}");
    }

    #[test]
    fn a_handle_swaps_the_policy() {
        let handle = PolicyHandle::of(PolicyKind::RoundRobin, 0);
        let other = handle.clone();
        let old = other.set(PolicyKind::Random.build(0));
        assert_eq!(old.name(), "round-robin");
        assert_eq!(handle.name(), "random");
    }
}
