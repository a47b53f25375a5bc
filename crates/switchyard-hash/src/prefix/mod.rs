//! Prefix-cache-aware routing over an approximate index.
//!
//! An LLM replica skips the prefill of every leading prompt block already in its KV cache, so a
//! request is cheapest where its prefix was sent before; but a replica that holds a popular
//! prefix also gets more than its share of requests if nothing stops it (a prefix-only scorer
//! has been measured at 55 % success on a prefix-heavy load). [`PrefixAware`] weighs both:
//!
//! ```text
//! score_e = cost_e − prefix_weight × saved_tokens_e × unit_time_e      (lowest wins)
//! ```
//!
//! - `cost_e` is the least-response-time estimate of the request's time to first byte at `e`
//!   ([`ResponseTimeEstimate`](switchyard_balance::policy::ResponseTimeEstimate): the work
//!   waiting there for a first byte plus this request, times `e`'s measured time per token, with
//!   the brake on more than a fair share in flight), the same figure the default policy
//!   minimises, read from the same endpoint state, and as there never below the request's own
//!   no-load prefill at `e` when it carries its size
//!   ([`EndpointState::no_load_time_nanos`](switchyard_balance::EndpointState::no_load_time_nanos):
//!   an idle slow replica is no cheaper than its own prefill of a long prompt);
//! - `saved_tokens_e` is `matched_blocks_e × block_tokens` (at most the prompt): the leading
//!   blocks of the request's [`PrefixBlocks`](switchyard_core::PrefixBlocks) that the index says
//!   `e` holds; `× unit_time_e` turns them into the prefill time they save at `e`'s speed;
//! - an endpoint holding more than `load_factor` (2) × its share of the requests in flight is not a
//!   candidate (the bounded-load rule of `bounded-load-hash`); if none is left the request goes
//!   to the least-response-time endpoint. This is the fallback "past an imbalance threshold".
//!
//! The [`PrefixIndex`] is approximate: it records what the policy *sent* where (the replica
//! caches a prompt's blocks when it prefills them), keeps at most the replica's KV capacity of
//! blocks per endpoint and evicts least recently used first, as the replica does. It forgets an
//! endpoint that leaves the pool. It does not see evictions the replica makes early (its cache
//! also holds running requests), so it overestimates hits on a crowded replica; the load terms
//! keep that from mattering much.
//!
//! # Parameters and defaults
//!
//! `{ name = "prefix-aware", block_tokens = 512, capacity_tokens = 400000, load_factor = 2.0,
//! prefix_weight = 16 }` ([`PrefixAwareConfig`]). `block_tokens` must match the key layer's;
//! `capacity_tokens` is a replica's KV cache (set it to what the replicas hold, host-memory tier
//! included).
//!
//! `prefix_weight` and `load_factor` were chosen in the lab's `prefix` scenario (eight replicas
//! of 2 M KV tokens, the first 4,000 requests of the Mooncake conversation trace at 70 % load;
//! hit rate against the upper bound 0.331, mean and p99 TTFT in ms):
//!
//! | prefix_weight | load_factor | hit rate | TTFT mean | TTFT p99 | max/mean load |
//! | --- | --- | --- | --- | --- | --- |
//! | 1 | 1.25 | 0.204 | 759 | 7164 | 1.05 |
//! | 4 | 1.25 | 0.239 | 753 | 7769 | 1.09 |
//! | 16 | 1.25 | 0.261 | 789 | 8110 | 1.03 |
//! | 8 | 1.5 | 0.276 | 726 | 7821 | 1.08 |
//! | 16 | 1.5 | 0.280 | 743 | 8066 | 1.05 |
//! | 64 | 1.5 | 0.283 | 793 | 7755 | 1.15 |
//! | 8 | 2 | 0.287 | 702 | 7685 | 1.13 |
//! | **16** | **2** | **0.301** | **717** | **8004** | **1.10** |
//! | 32 | 2 | 0.303 | 761 | 7952 | 1.16 |
//! | 16 | 3 | 0.303 | 719 | 7562 | 1.13 |
//!
//! A weight of 1 (a saved token worth one token of waiting work, this request's own view) gives
//! up the cache whenever the cached replica has a short queue; but a hit also takes its prefill
//! off the cluster for every later request, which the per-request estimate does not see, so the
//! saving deserves a larger weight. Past 16 the hit rate stops rising and TTFT grows (requests
//! wait behind their cache); a bound of 2 lets a conversation stay on its replica through
//! bursts while the time-averaged imbalance stays near 1.1 (the lab's least connections: 1.04).
//! On HBM-sized caches (400,000 tokens) every placement loses conversations between turns and
//! all settings sit near 0.07-0.09.

pub mod index;
pub(crate) mod policy;
#[cfg(test)]
pub(crate) mod test_support;

pub use index::PrefixIndex;
pub use policy::{IndexStats, PrefixAware, PrefixAwareConfig};
