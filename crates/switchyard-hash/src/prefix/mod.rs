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
//!   minimises, read from the same endpoint state;
//! - `saved_tokens_e` is `matched_blocks_e × block_tokens` (at most the prompt): the leading
//!   blocks of the request's [`PrefixBlocks`](switchyard_core::PrefixBlocks) that the index says
//!   `e` holds; `× unit_time_e` turns them into the prefill time they save at `e`'s speed;
//! - an endpoint holding more than `load_factor` × its share of the requests in flight is not a
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
//! `{ name = "prefix-aware", block_tokens = 512, capacity_tokens = 400000, load_factor = 1.25,
//! prefix_weight = 1.0 }` ([`PrefixAwareConfig`]). `block_tokens` must match the key layer's;
//! `capacity_tokens` is a replica's KV cache. `prefix_weight` 1 counts a saved token exactly as a
//! token of waiting work (the plain cost model); `load_factor` 1.25 is the bounded-load hashing
//! default. How they fare is in the lab's `prefix` scenario (`reports/lab/prefix.md`).

mod index;
mod policy;

pub use index::PrefixIndex;
pub use policy::{IndexStats, PrefixAware, PrefixAwareConfig};
