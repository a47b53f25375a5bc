//! The precise prefix-aware policy: the approximate policy's cost, with exact matches where the
//! replicas' KV-event streams are live.

use std::sync::Arc;
use std::time::Duration;

use switchyard_balance::policy::{Endpoints, Policy, PolicyError, PolicySpec, RequestInfo};

use super::feed::KvFeed;
use crate::prefix::{IndexStats, PrefixAware, PrefixAwareConfig};

/// Settings of [`PrefixAwarePrecise`]: those of [`PrefixAwareConfig`] (the same defaults) and how
/// long a silent stream is trusted.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixAwarePreciseConfig {
    /// Tokens per prefix block (512).
    pub block_tokens: u32,
    /// KV-cache tokens each replica can hold (400,000); each endpoint keeps at most
    /// `capacity_tokens / block_tokens` blocks in either index.
    pub capacity_tokens: u64,
    /// The bounded-load rule (2.0).
    pub load_factor: f64,
    /// Weight of the prefill a cached prefix saves (16).
    pub prefix_weight: f64,
    /// A stream that has said nothing (no event, no heartbeat) for this long is stale, and its
    /// endpoint is routed on the approximate index (5,000 ms; the worker sends a heartbeat every
    /// second).
    pub stale_after_ms: u64,
}

impl Default for PrefixAwarePreciseConfig {
    fn default() -> Self {
        let base = PrefixAwareConfig::default();
        Self {
            block_tokens: base.block_tokens,
            capacity_tokens: base.capacity_tokens,
            load_factor: base.load_factor,
            prefix_weight: base.prefix_weight,
            stale_after_ms: 5_000,
        }
    }
}

impl PrefixAwarePreciseConfig {
    /// The approximate policy's part of the settings.
    pub fn approximate(&self) -> PrefixAwareConfig {
        PrefixAwareConfig {
            block_tokens: self.block_tokens,
            capacity_tokens: self.capacity_tokens,
            load_factor: self.load_factor,
            prefix_weight: self.prefix_weight,
        }
    }
}

/// Prefix-cache-aware routing on the replicas' exact KV-cache contents; see the
/// [module documentation](super).
#[derive(Debug)]
pub struct PrefixAwarePrecise {
    config: PrefixAwarePreciseConfig,
    approximate: PrefixAware,
    feed: Arc<KvFeed>,
}

impl PrefixAwarePrecise {
    /// The policy with `config` (checked), and an empty feed to subscribe to the endpoints with.
    pub fn new(config: PrefixAwarePreciseConfig) -> Result<Self, PolicyError> {
        let approximate = PrefixAware::new(config.approximate()).map_err(|e| match e {
            PolicyError::InvalidParams { message, .. } => {
                PolicyError::InvalidParams { name: "prefix-aware-precise".to_string(), message }
            }
            other => other,
        })?;
        let feed = Arc::new(KvFeed::new(
            approximate.config().capacity_blocks(),
            Duration::from_millis(config.stale_after_ms),
        ));
        Ok(Self { config, approximate, feed })
    }

    /// Builds from a spec: `prefix-aware-precise` with [`PrefixAwarePreciseConfig`]'s fields.
    pub fn from_spec(spec: &PolicySpec) -> Result<Self, PolicyError> {
        Self::new(spec.params()?)
    }

    /// The settings.
    pub fn config(&self) -> PrefixAwarePreciseConfig {
        self.config
    }

    /// The exact index, to feed with the endpoints' event streams (a
    /// [`KvSubscriber`](super::KvSubscriber), or the lab's simulated delivery).
    pub fn feed(&self) -> &Arc<KvFeed> {
        &self.feed
    }

    /// What the exact index holds.
    pub fn exact_stats(&self) -> IndexStats {
        self.feed.stats()
    }

    /// What the approximate (fallback) index holds.
    pub fn approximate_stats(&self) -> IndexStats {
        self.approximate.index_stats()
    }
}

impl Policy for PrefixAwarePrecise {
    fn name(&self) -> &'static str {
        "prefix-aware-precise"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        self.approximate.pick_with(request, endpoints, Some(&*self.feed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix::test_support::{blocks, states};
    use switchyard_balance::EndpointState;
    use switchyard_core::KvEvent;

    fn pick(policy: &PrefixAwarePrecise, eps: &[Arc<EndpointState>], ids: &[u64]) -> usize {
        let ext = blocks(ids);
        policy
            .pick(
                &RequestInfo::new(Some(&ext), tokio::time::Instant::now()),
                &Endpoints::all_eligible(eps, 0),
            )
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn live_streams_decide_and_a_stopped_stream_falls_back_to_the_approximate_index() {
        let eps = states(4);
        let policy = PrefixAwarePrecise::new(PrefixAwarePreciseConfig::default()).unwrap();
        let feed = policy.feed().clone();
        for e in &eps {
            feed.follow(e.id());
            feed.apply_snapshot(e.id(), 1, 0, &[]).unwrap();
        }
        let mut seqs = [0u64; 4];
        let mut store = |at: usize, ids: &[u64]| {
            let events: Vec<_> = ids
                .iter()
                .map(|b| {
                    seqs[at] += 1;
                    KvEvent::stored(seqs[at], *b)
                })
                .collect();
            feed.apply_events(eps[at].id(), 1, &events).unwrap();
        };
        // The approximate index learns where [1, 2, 3] was sent; that replica did not keep it,
        // and another reports holding it.
        let sent = pick(&policy, &eps, &[1, 2, 3]);
        let holder = (sent + 1) % 4;
        store(holder, &[1, 2, 3]);
        // Streams silent past stale_after: the approximate index decides.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(pick(&policy, &eps, &[1, 2, 3, 4]), sent, "stale streams fall back");
        // Heartbeats: the exact index decides.
        for e in &eps {
            feed.apply_events(e.id(), 1, &[]).unwrap();
        }
        assert_eq!(pick(&policy, &eps, &[1, 2, 3, 4]), holder, "live streams decide");
        // Another prefix; every stream stops (disconnected): the approximate index decides.
        let sent = pick(&policy, &eps, &[7, 8, 9]);
        let holder = (sent + 1) % 4;
        store(holder, &[7, 8, 9]);
        for e in &eps {
            feed.mark_down(e.id());
        }
        assert_eq!(pick(&policy, &eps, &[7, 8, 9]), sent, "streams down fall back");
    }

    #[test]
    fn it_is_registered_by_name_and_checks_its_parameters() {
        let registry = switchyard_balance::policy::PolicyRegistry::with_builtins();
        crate::register(&registry).unwrap();
        let spec: PolicySpec =
            serde_json::from_str(r#"{"name":"prefix-aware-precise","stale_after_ms":100}"#).unwrap();
        assert_eq!(registry.build(&spec, 0).unwrap().name(), "prefix-aware-precise");
        let bad: PolicySpec =
            serde_json::from_str(r#"{"name":"prefix-aware-precise","load_factor":0.5}"#).unwrap();
        let err = registry.build(&bad, 0).unwrap_err().to_string();
        assert!(err.contains("prefix-aware-precise") && err.contains("load_factor"), "{err}");
    }
}
