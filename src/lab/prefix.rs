//! The `prefix` scenario: prefix-cache-aware routing on a conversation trace.
//!
//! Eight identical replicas (Llama 3.1 8B on H100s, [`EngineConfig::default`] with
//! [`KV_CAPACITY_TOKENS`] of KV cache each, 512-token blocks) serve the first `requests` requests of the Mooncake conversation
//! trace, whose `hash_ids` are the prompts' KV blocks: a conversation's next turn repeats its
//! earlier turns, so it is served from cache where they were. Together the caches hold about
//! half of the window's working set (the report gives the figure): a replica keeps only the
//! conversations sent to it lately, which is the case a router can help.
//! The trace is time-compressed to `load` (70 %) of the cluster's capacity, measured as `hetero`
//! measures it (one replica, saturated, on the window's mix).
//!
//! Each policy runs on fresh replicas with the real balancer; the requests carry their size and
//! their prefix blocks, as the key layer puts them in. Per policy the report gives the prefix hit
//! rate (prompt tokens served from cache / prompt tokens), TTFT and latency from arrival,
//! `max_mean_load` (as `hetero`'s) and errors; at the top, `upper_bound_hit_rate`: the hit rate
//! one infinitely large cache would have (every block seen before is a hit), which no placement
//! can beat.
//!
//! `prefix-aware-precise` runs twice: with each replica's KV-cache events (the ones
//! `switchyard worker` streams) delivered to its index as they happen in simulated time, and
//! with every event [`EVENT_DELAY`] (500 ms) late (row `prefix-aware-precise+500ms`), where it
//! routes on a cache state half a second old.
//!
//! The **skewed** variant gives half the conversations (chosen by a hash of their second block)
//! one shared system prompt of [`SYSTEM_PROMPT_BLOCKS`] blocks in front: keyed by that prefix,
//! affinity alone sends half the load to one replica.

use std::path::PathBuf;
use std::sync::Arc;

use switchyard_balance::PolicySpec;
use switchyard_core::{PrefixBlocks, stable_hash};
use switchyard_hash::PrefixAwarePrecise;
#[cfg(doc)]
use switchyard_sim::EngineConfig;
use switchyard_sim::{EngineHandle, TraceRecord, trace};

use super::LabError;
use super::balanced::{Sizes, run_policy, run_policy_with};
use super::capacity::measure_capacity;
use super::cluster::{ReplicaSpec, run_paused};
use super::kv_delivery::deliver;
use super::report::{LatencySummary, PolicyResult, RunRecord};
use crate::report::Table;

/// The policies the scenario compares, in report order.
pub const PREFIX_POLICIES: [&str; 9] = [
    "round-robin",
    "least-connections",
    "least-response-time",
    "p2c-peak-ewma",
    "consistent-hash",
    "bounded-load-hash",
    "prefix-aware",
    "prefix-aware-precise",
    PRECISE_DELAYED,
];

/// The row of `prefix-aware-precise` with every KV event delivered [`EVENT_DELAY`] late.
pub const PRECISE_DELAYED: &str = "prefix-aware-precise+500ms";

/// How late the delayed precise run gets the replicas' KV events.
pub const EVENT_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// Blocks of the shared system prompt of the skewed variant (2,048 tokens).
pub const SYSTEM_PROMPT_BLOCKS: u64 = 4;

/// KV-cache tokens of each replica: 2,000,000, an H100's HBM (about 400,000 tokens of Llama 3.1
/// 8B) plus a host-memory tier for the prefix cache (some 200 GB at 128 KiB a token), as
/// vLLM with LMCache or Mooncake's store give it. The eight replicas together hold 16 M
/// tokens, 46 % of the default window's working set (36.6 M tokens). With HBM alone (400,000)
/// they hold 9 %, and a conversation's blocks are evicted before its next turn on any placement:
/// perfect conversation affinity then reaches 42 % of the upper bound (an LRU replay of the
/// trace), and no router can do much.
pub const KV_CAPACITY_TOKENS: u64 = 2_000_000;

/// Requests replayed by default.
pub const PREFIX_REQUESTS: usize = 4000;

/// Settings of a `prefix` run.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixOptions {
    /// Seed of the policies' random choices.
    pub seed: u64,
    /// Requests to replay: the first ones of the trace.
    pub requests: usize,
    /// Offered load as a share of the cluster's measured capacity.
    pub load: f64,
    /// A Mooncake JSONL trace instead of the bundled one.
    pub trace: Option<PathBuf>,
}

impl Default for PrefixOptions {
    fn default() -> Self {
        Self { seed: 1, requests: PREFIX_REQUESTS, load: 0.7, trace: None }
    }
}

/// One policy's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrefixResult {
    /// The policy.
    pub policy: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Prompt tokens served from the replicas' prefix caches / prompt tokens, over the requests
    /// that completed.
    pub prefix_hit_rate: f64,
    /// Time to first token from arrival.
    pub ttft_ms: LatencySummary,
    /// Time to last token from arrival.
    pub latency_ms: LatencySummary,
    /// The largest replica's time-averaged in-flight count over the mean.
    pub max_mean_load: f64,
}

/// One variant of the workload (base or skewed) through every policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrefixVariant {
    /// `base` or `skewed`.
    pub variant: String,
    /// Trace time per virtual second of the run.
    pub time_scale: f64,
    /// One replica's measured capacity, requests/s.
    pub replica_capacity_rps: f64,
    /// Offered requests/s.
    pub offered_rps: f64,
    /// The hit rate of one infinitely large cache.
    pub upper_bound_hit_rate: f64,
    /// Distinct KV tokens the window's prompts reference.
    pub working_set_tokens: u64,
    /// The replicas' KV capacity together over the working set.
    pub kv_share_of_working_set: f64,
    /// One row per policy.
    pub results: Vec<PrefixResult>,
}

/// The report of `switchyard lab prefix`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrefixReport {
    /// `prefix`.
    pub scenario: String,
    /// Seed of the policies' random choices.
    pub seed: u64,
    /// The trace replayed.
    pub trace: String,
    /// Requests replayed.
    pub window_requests: usize,
    /// Replicas.
    pub replicas: usize,
    /// Each replica's KV cache, tokens.
    pub kv_capacity_tokens: u64,
    /// Offered load as a share of capacity.
    pub target_load: f64,
    /// The trace as it is.
    #[serde(flatten)]
    pub base: PrefixVariant,
    /// Half the conversations behind one shared system prompt.
    pub skewed: PrefixVariant,
}

impl PrefixReport {
    /// A terminal summary: one table per variant.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "lab prefix: {} replicas of {} KV tokens, {} requests of {}, seed {}, {:.0}% load\n",
            self.replicas,
            self.kv_capacity_tokens,
            self.window_requests,
            self.trace,
            self.seed,
            self.target_load * 100.0
        );
        for v in [&self.base, &self.skewed] {
            let mut table = Table::new([
                "policy",
                "hit rate",
                "ttft mean ms",
                "ttft p50 ms",
                "ttft p99 ms",
                "latency p99 ms",
                "max/mean load",
                "errors",
            ]);
            for r in &v.results {
                table.row([
                    r.policy.clone(),
                    format!("{:.3}", r.prefix_hit_rate),
                    format!("{:.1}", r.ttft_ms.mean),
                    format!("{:.1}", r.ttft_ms.p50),
                    format!("{:.1}", r.ttft_ms.p99),
                    format!("{:.1}", r.latency_ms.p99),
                    format!("{:.2}", r.max_mean_load),
                    r.errors.to_string(),
                ]);
            }
            out.push_str(&format!(
                "\n{}: upper bound hit rate {:.3}, KV caches hold {:.1}% of the working set, offered {:.2} req/s \
                 (time scale {:.4})\n{table}",
                v.variant,
                v.upper_bound_hit_rate,
                v.kv_share_of_working_set * 100.0,
                v.offered_rps,
                v.time_scale
            ));
        }
        out
    }

    /// The variant's result of `policy`.
    pub fn result(&self, skewed: bool, policy: &str) -> Option<&PrefixResult> {
        let v = if skewed { &self.skewed } else { &self.base };
        v.results.iter().find(|r| r.policy == policy)
    }
}

/// The scenario's replicas: eight of [`EngineConfig::default`] with [`KV_CAPACITY_TOKENS`].
pub(crate) fn replicas() -> Vec<ReplicaSpec> {
    (0..8)
        .map(|i| {
            let mut r = ReplicaSpec::with_speed(format!("replica-{i}"), 1.0);
            r.config.kv_capacity_tokens = KV_CAPACITY_TOKENS;
            r
        })
        .collect()
}

/// The spec the scenario runs `policy` with: `prefix-aware` (and `-precise`) gets the replicas' KV capacity, as
/// an operator would configure it; the others their defaults.
fn spec_of(policy: &str) -> PolicySpec {
    if policy.starts_with("prefix-aware") {
        let mut params = serde_json::Map::new();
        params.insert("capacity_tokens".to_string(), KV_CAPACITY_TOKENS.into());
        PolicySpec::with_params(policy, params)
    } else {
        PolicySpec::named(policy)
    }
}

/// Gives half the conversations (by a hash of their second block) a shared system prompt of
/// [`SYSTEM_PROMPT_BLOCKS`] blocks: new leading ids, and their own ids moved to another range,
/// since a block's identity names the whole prefix before it.
pub(crate) fn skew(records: &[TraceRecord], block_tokens: u32) -> Vec<TraceRecord> {
    const SYSTEM: u64 = 1 << 62;
    const SHIFTED: u64 = 1 << 61;
    records
        .iter()
        .map(|r| {
            let ids = r.prefix.ids();
            let conversation = ids.get(1).or(ids.first()).copied().unwrap_or(0);
            if stable_hash(&conversation.to_le_bytes()) % 2 == 1 {
                return r.clone();
            }
            let mut with_system: Vec<u64> = (0..SYSTEM_PROMPT_BLOCKS).map(|b| SYSTEM + b).collect();
            with_system.extend(ids.iter().map(|id| id | SHIFTED));
            let extra = u32::try_from(SYSTEM_PROMPT_BLOCKS).unwrap_or(0) * block_tokens;
            TraceRecord {
                prompt_tokens: r.prompt_tokens.saturating_add(extra),
                prefix: PrefixBlocks::new(with_system),
                ..r.clone()
            }
        })
        .collect()
}

/// The hit rate of one infinitely large cache, counted as the engine counts hits: the leading
/// full blocks of a prompt seen before, at most all but one of its tokens. Also the working set:
/// distinct blocks × block size.
pub(crate) fn upper_bound(records: &[TraceRecord], block_tokens: u32) -> (f64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut cached, mut total) = (0u64, 0u64);
    for r in records {
        let full = (r.prompt_tokens / block_tokens.max(1)) as usize;
        let ids = &r.prefix.ids()[..full.min(r.prefix.len())];
        let hits = ids.iter().take_while(|id| seen.contains(*id)).count() as u64;
        cached += (hits * u64::from(block_tokens)).min(u64::from(r.prompt_tokens.saturating_sub(1)));
        total += u64::from(r.prompt_tokens);
        seen.extend(ids.iter().copied());
    }
    let rate = if total == 0 { 0.0 } else { cached as f64 / total as f64 };
    (round4(rate), seen.len() as u64 * u64::from(block_tokens))
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// Runs the scenario: both variants through every policy of [`PREFIX_POLICIES`].
pub fn run_prefix(options: &PrefixOptions) -> Result<PrefixReport, LabError> {
    if !(options.load.is_finite() && options.load > 0.0) {
        return Err(LabError::Setting(format!("load must be > 0, got {}", options.load)));
    }
    let (records, trace_name) = match &options.trace {
        Some(path) => (trace::read_trace(path)?, path.display().to_string()),
        None => {
            (crate::traces::mooncake_conversation()?, "mooncake_conversation.jsonl (bundled)".to_string())
        }
    };
    let n = options.requests.min(records.len());
    if n < 2 {
        return Err(LabError::Setting(format!("the window needs at least 2 requests, got {n}")));
    }
    let window = &records[..n];
    let replicas = replicas();
    let config = replicas[0].config.clone();
    let base = run_variant("base", window, &replicas, options)?;
    let skewed = run_variant("skewed", &skew(window, config.block_tokens), &replicas, options)?;
    Ok(PrefixReport {
        scenario: "prefix".to_string(),
        seed: options.seed,
        trace: trace_name,
        window_requests: n,
        replicas: replicas.len(),
        kv_capacity_tokens: config.kv_capacity_tokens,
        target_load: options.load,
        base,
        skewed,
    })
}

fn run_variant(
    name: &str,
    window: &[TraceRecord],
    replicas: &[ReplicaSpec],
    options: &PrefixOptions,
) -> Result<PrefixVariant, LabError> {
    let n = window.len();
    let span = window[n - 1].at.saturating_sub(window[0].at).as_secs_f64();
    if span <= 0.0 {
        return Err(LabError::Setting("the window's requests all arrive at once".to_string()));
    }
    let trace_rps = (n - 1) as f64 / span;
    let config = replicas[0].config.clone();
    let replica_capacity_rps = run_paused(measure_capacity(&config, window))??;
    let offered_rps = options.load * replica_capacity_rps * replicas.len() as f64;
    let time_scale = trace_rps / offered_rps;
    let (upper_bound_hit_rate, working_set_tokens) = upper_bound(window, config.block_tokens);
    let total_kv: u64 = replicas.iter().map(|r| r.config.kv_capacity_tokens).sum();
    let names: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
    let mut results = Vec::with_capacity(PREFIX_POLICIES.len());
    for policy in PREFIX_POLICIES {
        let run = if let Some(delay) = precise_delay(policy) {
            // The precise policy, fed by the replicas' KV events in simulated time.
            let precise = Arc::new(PrefixAwarePrecise::from_spec(&spec_of("prefix-aware-precise"))?);
            let feed = precise.feed().clone();
            let attach = |engines: &[EngineHandle]| deliver(&feed, &names, engines, delay);
            run_paused(run_policy_with(precise, Sizes::Known, replicas, window, time_scale, attach))??
        } else {
            let spec = spec_of(policy);
            run_paused(run_policy(&spec, Sizes::Known, options.seed, replicas, window, time_scale))??
        };
        results.push(summarise(policy, &run, window, &names));
        tracing::info!(policy, variant = name, "lab prefix: policy done");
    }
    Ok(PrefixVariant {
        variant: name.to_string(),
        time_scale,
        replica_capacity_rps,
        offered_rps,
        upper_bound_hit_rate,
        working_set_tokens,
        kv_share_of_working_set: round4(total_kv as f64 / working_set_tokens.max(1) as f64),
        results,
    })
}

/// The event delay of a precise row, `None` for the other policies.
fn precise_delay(policy: &str) -> Option<std::time::Duration> {
    match policy {
        "prefix-aware-precise" => Some(std::time::Duration::ZERO),
        PRECISE_DELAYED => Some(EVENT_DELAY),
        _ => None,
    }
}

fn summarise(policy: &str, run: &RunRecord, window: &[TraceRecord], names: &[String]) -> PrefixResult {
    let common = PolicyResult::summarise(policy, run, names);
    let (mut cached, mut total) = (0u64, 0u64);
    for (o, r) in run.outcomes.iter().zip(window) {
        if !o.failed() {
            cached += u64::from(o.cached_prompt_tokens);
            total += u64::from(r.prompt_tokens);
        }
    }
    PrefixResult {
        policy: policy.to_string(),
        requests: common.requests,
        errors: common.errors,
        prefix_hit_rate: if total == 0 { 0.0 } else { round4(cached as f64 / total as f64) },
        ttft_ms: common.ttft_ms,
        latency_ms: common.latency_ms,
        max_mean_load: common.max_mean_load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(ids: &[u64], prompt_tokens: u32) -> TraceRecord {
        TraceRecord {
            at: Duration::ZERO,
            prompt_tokens,
            output_tokens: 1,
            prefix: PrefixBlocks::new(ids.to_vec()),
        }
    }

    #[test]
    fn the_upper_bound_counts_leading_blocks_seen_before() {
        let records = [record(&[1, 2], 1024), record(&[1, 2, 3], 1536), record(&[4, 2], 1024)];
        let (rate, working_set) = upper_bound(&records, 512);
        // Second request: 2 blocks of 3 cached; third: none (its first block is new).
        assert_eq!(rate, round4(1024.0 / 3584.0));
        assert_eq!(working_set, 4 * 512);
    }

    #[test]
    fn skewing_gives_about_half_the_conversations_one_system_prompt() {
        let records: Vec<TraceRecord> =
            (0..1000u64).map(|c| record(&[0, c * 10 + 1, c * 10 + 2], 1536)).collect();
        let skewed = skew(&records, 512);
        let shared = skewed.iter().filter(|r| r.prefix.len() == 7).count();
        assert!((400..600).contains(&shared), "{shared}");
        for (a, b) in records.iter().zip(&skewed) {
            if b.prefix.len() == 7 {
                assert_eq!(b.prompt_tokens, a.prompt_tokens + 2048);
                assert_eq!(
                    b.prefix.ids()[..4],
                    skewed.iter().find(|r| r.prefix.len() == 7).unwrap().prefix.ids()[..4]
                );
            } else {
                assert_eq!(a, b);
            }
        }
    }
}
