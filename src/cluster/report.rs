//! What a cluster run reports: its setup, the load generator's summary and each replica's share
//! of the requests, as a table and as `cluster.json`.

use std::fmt::Write as _;

use crate::loadgen::LoadgenReport;
use crate::report::Table;

/// How the cluster was set up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterSetup {
    /// The gateway's balancing policy; `None` when the load generator drove the first worker
    /// directly (`--no-gateway`).
    pub policy: Option<String>,
    /// The replicas, in start order (autoscaled: every replica that served over the run).
    pub replicas: Vec<ReplicaSetup>,
    /// Seconds of load asked for (`--duration`).
    pub duration_s: f64,
    /// The factor applied to the trace's arrival times.
    pub time_scale: f64,
    /// Whether the time scale was computed for [`TARGET_LOAD`](super::TARGET_LOAD) (`computed`)
    /// or given with `--time-scale` (`flag`).
    pub time_scale_from: String,
    /// The mean arrival rate, as recorded, of the part of the trace replayed, requests per
    /// second.
    pub trace_rate: f64,
    /// The capacity of the replicas the load generator drives (the cluster, or the first worker
    /// with `--no-gateway`), by [`REPLICA_CAPACITY_RPS`](super::REPLICA_CAPACITY_RPS) times their
    /// speeds, in requests per second; in an autoscaled run, whose pool changes size, one
    /// replica's capacity (so `offered_load` is in replicas).
    pub capacity_rps: f64,
    /// The offered load as a share of `capacity_rps`: `trace_rate / time_scale / capacity_rps`.
    pub offered_load: f64,
    /// The trace replayed.
    pub trace: String,
}

/// One replica as started.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaSetup {
    /// `worker-0`, `worker-1`, ...
    pub name: String,
    /// Where it serves gRPC (`HOST:PORT`).
    pub address: String,
    /// Its simulated GPU speed (1 = H100).
    pub speed: f64,
}

/// One replica's part of the work.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaShare {
    /// The replica's name.
    pub name: String,
    /// Where it serves gRPC.
    pub address: String,
    /// Its speed.
    pub speed: f64,
    /// Requests it completed.
    pub completed: u64,
    /// Requests that failed on it.
    pub failed: u64,
    /// Its share of all completed requests (the shares sum to 1, or all are 0).
    pub share: f64,
    /// The share its speed would give it: its speed over the sum of the speeds.
    pub speed_share: f64,
    /// Prompt tokens of the requests it admitted (its `/metrics`,
    /// `switchyard_replica_prompt_tokens_total`).
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Of those, the tokens its prefix cache held at admission
    /// (`switchyard_replica_cached_prompt_tokens_total`).
    #[serde(default)]
    pub cached_prompt_tokens: u64,
    /// Its prefix-cache hit rate: `cached_prompt_tokens / prompt_tokens`, 0 before a prompt.
    #[serde(default)]
    pub prefix_hit_rate: f64,
}

/// Everything a cluster run measured; `cluster.json` in the report folder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterReport {
    /// How the cluster was set up.
    pub setup: ClusterSetup,
    /// The load generator's summary.
    pub loadgen: LoadgenReport,
    /// Each replica's share, in start order.
    pub replicas: Vec<ReplicaShare>,
    /// Where the per-replica counts come from: `gateway /endpoints`, or `loadgen` with
    /// `--no-gateway` (everything went to the first worker).
    pub shares_from: String,
    /// The plots written beside `cluster.json`.
    pub plots: Vec<String>,
    /// The cluster's prefix-cache hit rate: cached prompt tokens over prompt tokens, summed over
    /// the replicas (read from each worker's `/metrics`).
    #[serde(default)]
    pub prefix_hit_rate: f64,
    /// How the pool was scaled, when it was autoscaled (the default); `None` for a fixed pool.
    #[serde(default)]
    pub scaling: Option<ScalingReport>,
}

/// What the autoscaler did over an autoscaled run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalingReport {
    /// The recommender (`llm-aware`).
    pub recommender: String,
    /// `--min-replicas`.
    pub min_replicas: u32,
    /// `--max-replicas`.
    pub max_replicas: u32,
    /// Each new worker's simulated cold start (`--cold-start`), seconds.
    pub cold_start_s: f64,
    /// The recommender's target utilisation (calibrated as the lab's `burst` scenario does).
    pub target_utilisation: f64,
    /// The stretch of the trace replayed and its speed-up.
    pub stretch: super::stretch::Stretch,
    /// The trace's peak offered, in replicas' capacity (`peak_rate / time_scale / capacity`).
    pub peak_load_replicas: f64,
    /// Replicas (starting or ready) integrated over the load, replica-seconds: what the pool
    /// cost.
    pub replica_seconds: f64,
    /// Ready replicas integrated over the load, replica-seconds.
    pub ready_replica_seconds: f64,
    /// Decisions that changed the desired count.
    pub scale_events: u32,
    /// Of those, increases.
    pub scale_ups: u32,
    /// Of those, decreases.
    pub scale_downs: u32,
    /// The fewest and most replicas ready while the load ran.
    pub ready_min: u32,
    /// The most replicas ready while the load ran.
    pub ready_max: u32,
    /// The most replicas desired while the load ran.
    pub desired_max: u32,
    /// The pool after every decision (one a second).
    pub timeline: Vec<ScalePoint>,
}

/// The pool's size at one instant of an autoscaled run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalePoint {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Replicas the recommender asks for.
    pub desired: u32,
    /// Replicas that exist, starting or ready.
    pub current: u32,
    /// Replicas ready (SERVING and in discovery).
    pub ready: u32,
}

impl ScalingReport {
    /// The integrals and extremes of `timeline`, up to `end_s` (the end of the load).
    pub(crate) fn figures(timeline: &[ScalePoint], end_s: f64) -> (f64, f64, u32, u32, u32) {
        let (mut replica_s, mut ready_s) = (0.0, 0.0);
        for (i, p) in timeline.iter().enumerate() {
            let until = timeline.get(i + 1).map_or(end_s, |n| n.t_s).min(end_s);
            let dt = (until - p.t_s.max(0.0)).max(0.0);
            replica_s += f64::from(p.current) * dt;
            ready_s += f64::from(p.ready) * dt;
        }
        let during = timeline.iter().filter(|p| p.t_s <= end_s);
        let (lo, hi, desired) = during
            .fold((u32::MAX, 0, 0), |(lo, hi, d), p| (lo.min(p.ready), hi.max(p.ready), d.max(p.desired)));
        (replica_s, ready_s, if lo == u32::MAX { 0 } else { lo }, hi, desired)
    }

    /// The summary's lines about scaling.
    pub fn summary(&self) -> String {
        format!(
            "autoscaled ({}) between {} and {} replicas, cold start {:.1} s: ready {}..{} (desired up to {}), \
{} scale events ({} up, {} down), {:.0} replica-seconds ({:.0} ready); trace stretch {:.0}..{:.0} s \
sped up {:.1}x, peak {:.1} replicas of load, falling {:.1}x",
            self.recommender,
            self.min_replicas,
            self.max_replicas,
            self.cold_start_s,
            self.ready_min,
            self.ready_max,
            self.desired_max,
            self.scale_events,
            self.scale_ups,
            self.scale_downs,
            self.replica_seconds,
            self.ready_replica_seconds,
            self.stretch.start_s,
            self.stretch.start_s + self.stretch.span_s,
            1.0 / self.stretch.time_scale,
            self.peak_load_replicas,
            self.stretch.swing(),
        )
    }
}

impl ClusterReport {
    /// The per-replica table.
    pub fn replica_table(&self) -> Table {
        let mut t = Table::new([
            "replica",
            "speed",
            "address",
            "completed",
            "failed",
            "share",
            "by speed",
            "prefix hit rate",
        ]);
        for r in &self.replicas {
            t.row([
                r.name.clone(),
                format!("{:.3}", r.speed),
                r.address.clone(),
                r.completed.to_string(),
                r.failed.to_string(),
                format!("{:.1}%", r.share * 100.0),
                format!("{:.1}%", r.speed_share * 100.0),
                format!("{:.1}%", r.prefix_hit_rate * 100.0),
            ]);
        }
        t
    }

    /// The whole summary: setup, the load generator's summary, the replica table.
    pub fn summary(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        if let Some(scaling) = &self.scaling {
            // The pool's size changes: the load against one replica and the pool that ran.
            let ready = scaling.ready_replica_seconds / s.duration_s.max(f64::EPSILON);
            let offered = s.offered_load * s.capacity_rps;
            let _ = writeln!(
                out,
                "cluster: autoscaled {}..{} replicas (speed 1; {} started over the run), gateway policy {}; \
trace {} at time scale {:.4} ({}): {offered:.1} req/s on average, {:.2} replicas' capacity of {:.1} req/s each \
({:.0}% of the {ready:.1} replicas ready on average)\n",
                scaling.min_replicas,
                scaling.max_replicas,
                s.replicas.len(),
                s.policy.as_deref().unwrap_or("-"),
                s.trace,
                s.time_scale,
                s.time_scale_from,
                s.offered_load,
                s.capacity_rps,
                if ready > 0.0 { s.offered_load / ready * 100.0 } else { 0.0 },
            );
        } else {
            let _ = writeln!(
                out,
                "cluster: {} replicas (speeds {}), {}; trace {} at time scale {:.4} ({}): {:.0}% of {:.1} req/s\n",
                s.replicas.len(),
                s.replicas.iter().map(|r| format_speed(r.speed)).collect::<Vec<_>>().join(", "),
                match &s.policy {
                    Some(p) => format!("gateway policy {p}"),
                    None => "no gateway: load on the first worker".to_string(),
                },
                s.trace,
                s.time_scale,
                s.time_scale_from,
                s.offered_load * 100.0,
                s.capacity_rps,
            );
        }
        if let Some(scaling) = &self.scaling {
            let _ = writeln!(out, "{}\n", scaling.summary());
        }
        let _ = writeln!(out, "{}", self.loadgen.summary());
        let _ = write!(out, "requests per replica (from {}):\n\n{}", self.shares_from, self.replica_table());
        let (cached, prompt) =
            self.replicas.iter().fold((0, 0), |(c, p), r| (c + r.cached_prompt_tokens, p + r.prompt_tokens));
        let _ = write!(
            out,
            "\nprefix-cache hit rate: {:.1}% ({cached} of {prompt} prompt tokens cached, from the workers' /metrics)",
            self.prefix_hit_rate * 100.0
        );
        out
    }
}

/// A speed as a short label: `1`, `0.333`.
pub(crate) fn format_speed(speed: f64) -> String {
    let text = format!("{speed:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Each count's share of their sum; all zero when the sum is zero.
pub(crate) fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts.iter().map(|&c| if total == 0 { 0.0 } else { c as f64 / total as f64 }).collect()
}

/// `HOST:PORT` of an address with or without a scheme and a trailing slash.
fn host_port(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    rest.trim_end_matches('/')
}

/// The (completed, failed) counts of each of `addresses` in the gateway's Prometheus metrics
/// (`switchyard_endpoint_requests_total`, outcome `ok` and `failed`, summed over pools), matched
/// by the endpoint's id, which is its `HOST:PORT` for the cluster's `--backend`s; and the gateway
/// endpoints that match none of them.
pub(crate) fn counts_from_metrics(text: &str, addresses: &[String]) -> (Vec<(u64, u64)>, Vec<String>) {
    let mut counts = vec![(0, 0); addresses.len()];
    let mut unmatched = Vec::new();
    let prefix = format!("{}{{", switchyard_telemetry::names::ENDPOINT_REQUESTS);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            labels[start..].split('"').next()
        };
        let (Some(endpoint), Some(outcome), Ok(value)) =
            (label("endpoint"), label("outcome"), value.trim().parse::<f64>())
        else {
            continue;
        };
        match addresses.iter().position(|a| host_port(a) == host_port(endpoint)) {
            Some(i) => match outcome {
                "ok" => counts[i].0 += value as u64,
                "failed" => counts[i].1 += value as u64,
                _ => {}
            },
            None if !unmatched.iter().any(|u| u == endpoint) => unmatched.push(endpoint.to_string()),
            None => {}
        }
    }
    (counts, unmatched)
}

/// A replica's prompt tokens and, of them, those its prefix cache held, read from its worker's
/// Prometheus metrics ([`REPLICA_PROMPT_TOKENS`](crate::worker::REPLICA_PROMPT_TOKENS) and
/// [`REPLICA_CACHED_PROMPT_TOKENS`](crate::worker::REPLICA_CACHED_PROMPT_TOKENS), summed over
/// their label sets); `None` when the worker exports neither (a replica that is no LLM engine).
pub fn prompt_tokens_from_metrics(text: &str) -> Option<PromptTokens> {
    // Counters are integers; a float rendering of one is exact below 2^53.
    let sum = |name| {
        let mut values = metric_values(text, name).peekable();
        values.peek().is_some().then(|| values.map(|v| v.max(0.0) as u64).sum::<u64>())
    };
    match (sum(crate::worker::REPLICA_PROMPT_TOKENS), sum(crate::worker::REPLICA_CACHED_PROMPT_TOKENS)) {
        (None, None) => None,
        (prompt, cached) => Some(PromptTokens { prompt: prompt.unwrap_or(0), cached: cached.unwrap_or(0) }),
    }
}

/// The values of the series of metric `name` (every label set) in a Prometheus text exposition,
/// in the order they appear; comments and other metrics are skipped.
pub(crate) fn metric_values<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series.split('{').next() == Some(name)).then(|| value.trim().parse::<f64>().ok()).flatten()
    })
}

/// Prompt tokens a replica admitted, and those of them its prefix cache held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptTokens {
    /// Prompt tokens admitted.
    pub prompt: u64,
    /// Of them, found in the prefix cache.
    pub cached: u64,
}

impl PromptTokens {
    /// `cached / prompt`, 0 before the first prompt.
    pub fn hit_rate(&self) -> f64 {
        if self.prompt == 0 { 0.0 } else { self.cached as f64 / self.prompt as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_come_from_the_workers_series() {
        let text = "# HELP switchyard_replica_prompt_tokens_total Prompt tokens.\n\
# TYPE switchyard_replica_prompt_tokens_total counter\n\
switchyard_replica_prompt_tokens_total 4096\n\
switchyard_replica_cached_prompt_tokens_total 1024\n\
switchyard_replica_queue_depth 3\n";
        let tokens = prompt_tokens_from_metrics(text).unwrap();
        assert_eq!(tokens, PromptTokens { prompt: 4096, cached: 1024 });
        assert_eq!(tokens.hit_rate(), 0.25);
        assert_eq!(prompt_tokens_from_metrics("switchyard_replica_queue_depth 3\n"), None);
        assert_eq!(PromptTokens::default().hit_rate(), 0.0);
    }

    #[test]
    fn replica_seconds_integrate_the_pool_over_the_load() {
        let p = |t_s, desired, current, ready| ScalePoint { t_s, desired, current, ready };
        let timeline = [p(0.0, 1, 1, 1), p(1.0, 3, 3, 1), p(3.0, 3, 3, 3), p(5.0, 2, 2, 2), p(9.0, 1, 1, 1)];
        let (replica_s, ready_s, lo, hi, desired) = ScalingReport::figures(&timeline, 6.0);
        assert_eq!(replica_s, 1.0 + 3.0 * 2.0 + 3.0 * 2.0 + 2.0);
        assert_eq!(ready_s, 1.0 + 2.0 + 6.0 + 2.0);
        assert_eq!((lo, hi, desired), (1, 3, 3), "the point after the load does not count");
    }

    #[test]
    fn shares_sum_to_one_or_are_all_zero() {
        assert_eq!(shares(&[1, 1, 2]), [0.25, 0.25, 0.5]);
        assert_eq!(shares(&[0, 0]), [0.0, 0.0]);
        assert_eq!(shares(&[]), Vec::<f64>::new());
    }

    #[test]
    fn speeds_print_short() {
        assert_eq!(format_speed(1.0), "1");
        assert_eq!(format_speed(0.333), "0.333");
        assert_eq!(format_speed(0.5), "0.5");
    }

    #[test]
    fn counts_come_from_the_gateways_endpoint_series() {
        let text = r#"# HELP switchyard_endpoint_requests_total Requests ended on the endpoint, by outcome.
# TYPE switchyard_endpoint_requests_total counter
switchyard_endpoint_requests_total{pool="default",endpoint="127.0.0.1:2",outcome="ok"} 30
switchyard_endpoint_requests_total{pool="default",endpoint="127.0.0.1:2",outcome="failed"} 1
switchyard_endpoint_requests_total{pool="default",endpoint="127.0.0.1:2",outcome="cancelled"} 4
switchyard_endpoint_requests_total{pool="default",endpoint="127.0.0.1:1",outcome="ok"} 10
switchyard_endpoint_requests_total{pool="default",endpoint="stray:9",outcome="ok"} 5
switchyard_endpoint_picks_total{pool="default",endpoint="127.0.0.1:1"} 11
"#;
        let addresses =
            ["127.0.0.1:1".to_string(), "http://127.0.0.1:2/".to_string(), "127.0.0.1:3".to_string()];
        let (counts, unmatched) = counts_from_metrics(text, &addresses);
        assert_eq!(counts, [(10, 0), (30, 1), (0, 0)]);
        assert_eq!(unmatched, ["stray:9"]);
    }
}
