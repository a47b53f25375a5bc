//! What a replica knows about its own load, and how it reports it.

use switchyard_core::ReportedLoad;

/// Name of the named metric in [`ReportedLoad::named`] that carries the replica's cumulative
/// prefix-cache hit rate (hit blocks / looked-up blocks, 0 before the first lookup).
pub const PREFIX_HIT_RATE: &str = "prefix_hit_rate";

/// A snapshot of one replica's state, published after every change (a submission, an
/// admission, the end of a step).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReplicaLoad {
    /// Requests submitted but not yet admitted into the batch.
    pub queue_depth: u32,
    /// Requests in the running batch (prefilling or decoding).
    pub running: u32,
    /// Prompt tokens still to prefill: all of the queued prompts' and the rest of the running
    /// ones' (a queued prompt's cached prefix is not known before its admission, so it counts
    /// whole). Reported as the named metric
    /// [`PREFILL_BACKLOG_TOKENS`](switchyard_core::orca::PREFILL_BACKLOG_TOKENS). `None` on a
    /// classic server ([`ReplicaKind::Parallel`](crate::ReplicaKind)), whose time does not
    /// grow with the prompt: it does not report the metric, as a balancer takes a replica
    /// that does for one whose work counts in tokens.
    pub prefill_backlog_tokens: Option<u64>,
    /// The most requests that can run at once ([`EngineConfig::max_batch`](crate::EngineConfig)).
    pub max_batch: u32,
    /// KV tokens in use: reserved by running requests plus held by the prefix cache.
    pub kv_used_tokens: u64,
    /// KV capacity in tokens.
    pub kv_capacity_tokens: u64,
    /// `kv_used_tokens / kv_capacity_tokens`, from 0.0 to 1.0.
    pub kv_cache_utilization: f64,
    /// Blocks resident in the prefix cache.
    pub prefix_cache_blocks: u64,
    /// Prefix blocks found in the cache at admission, since the engine started.
    pub prefix_hit_blocks: u64,
    /// Prefix blocks looked up at admission (full blocks of admitted prompts), since the engine
    /// started.
    pub prefix_lookup_blocks: u64,
    /// Prompt tokens of the requests admitted, since the engine started.
    pub prompt_tokens: u64,
    /// Of [`prompt_tokens`](Self::prompt_tokens), those whose KV was found in the prefix cache
    /// at admission (not prefilled again), since the engine started: `cached_prompt_tokens /
    /// prompt_tokens` is the replica's prefix-cache hit rate in tokens, the lab's figure.
    pub cached_prompt_tokens: u64,
    /// Requests that generated all their tokens, since the engine started.
    pub completed: u64,
    /// Requests that left before finishing because their caller went away (the
    /// [`Generation`](crate::Generation) was dropped), since the engine started.
    pub cancelled: u64,
    /// Requests dropped from the queue, never run, because their deadline passed, since the
    /// engine started.
    pub expired: u64,
    /// When the request at the head of the queue (the longest waiting) was submitted; `None`
    /// while nothing waits. Its age is the queue's current sojourn time, the signal a
    /// server-side shed queue reads (`switchyard_shed::ServerShedLayer`).
    #[serde(skip)]
    pub oldest_queued_at: Option<tokio::time::Instant>,
}

impl ReplicaLoad {
    /// `prefix_hit_blocks / prefix_lookup_blocks`, or 0 before the first lookup.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_lookup_blocks == 0 {
            0.0
        } else {
            self.prefix_hit_blocks as f64 / self.prefix_lookup_blocks as f64
        }
    }

    /// The report a replica sends in its ORCA trailer: queue depth, running requests, KV-cache
    /// utilisation, `capacity = max_batch`, and the named metrics [`PREFIX_HIT_RATE`] and
    /// [`PREFILL_BACKLOG_TOKENS`](switchyard_core::orca::PREFILL_BACKLOG_TOKENS).
    pub fn to_reported(&self) -> ReportedLoad {
        let mut report = ReportedLoad {
            queue_depth: self.queue_depth,
            running: self.running,
            kv_cache_utilization: self.kv_cache_utilization,
            capacity: self.max_batch,
            ..ReportedLoad::default()
        };
        report.named.insert(PREFIX_HIT_RATE.to_string(), self.prefix_hit_rate());
        if let Some(tokens) = self.prefill_backlog_tokens {
            report.named.insert(switchyard_core::orca::PREFILL_BACKLOG_TOKENS.to_string(), tokens as f64);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_engine_view() {
        let load = ReplicaLoad {
            queue_depth: 2,
            running: 5,
            max_batch: 8,
            kv_cache_utilization: 0.25,
            prefix_hit_blocks: 1,
            prefix_lookup_blocks: 4,
            prefill_backlog_tokens: Some(3000),
            ..ReplicaLoad::default()
        };
        let r = load.to_reported();
        assert_eq!(r.named[switchyard_core::orca::PREFILL_BACKLOG_TOKENS], 3000.0);
        assert_eq!((r.queue_depth, r.running, r.capacity), (2, 5, 8));
        assert_eq!(r.kv_cache_utilization, 0.25);
        assert_eq!(r.named[PREFIX_HIT_RATE], 0.25);
        assert_eq!(ReplicaLoad::default().prefix_hit_rate(), 0.0);
        // A classic server has no prefill backlog to report, and does not name the metric.
        let classic = ReplicaLoad { prefill_backlog_tokens: None, ..load }.to_reported();
        assert!(!classic.named.contains_key(switchyard_core::orca::PREFILL_BACKLOG_TOKENS));
    }
}
