//! `switchyard loadgen`: open-loop replay of a trace, or a synthetic pattern, against a KServe v2
//! gRPC target.
//!
//! Open loop: each request is sent at its scheduled time whether or not earlier ones have
//! returned, as real users do, so a slow target builds a queue instead of slowing the load down.
//! The schedule comes from a trace (`--trace`, the Azure CSV or the Mooncake JSONL; the bundled
//! Azure conversation trace by default) or a pattern (`--pattern poisson:20`, lengths drawn from
//! the trace). `--time-scale 0.1` replays ten times faster. Requests still in flight when the
//! client reaches `--max-in-flight` are not sent but counted as `dropped`: the generator never
//! queues without bound.
//!
//! The summary (a table, and `--json FILE`) holds the requests, the successes, the errors by gRPC
//! code, TTFT and latency percentiles in milliseconds, output tokens per second and the achieved
//! arrival rate. [`run_sampled`] also returns each request's send time and measurements, for
//! plots of latency over time.

pub(crate) mod call;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use call::{Outcome, infer_request, session_of};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use switchyard_sim::trace::{TraceError, TraceRecord, read_trace};
use switchyard_sim::workload::{LengthSampler, Pattern, Synthetic, paced};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::report::{Percentiles, Table};

/// Flags of `switchyard loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// gRPC address of the target (`http://HOST:PORT`, or `HOST:PORT`).
    #[arg(long, default_value = "http://127.0.0.1:9001")]
    pub target: String,
    /// Trace to replay: `.csv` (Azure LLM trace) or `.jsonl` (Mooncake). Default: the bundled
    /// Azure conversation trace.
    #[arg(long, conflicts_with = "pattern")]
    pub trace: Option<PathBuf>,
    /// Synthetic arrivals instead of a trace's, e.g. `poisson:20`, `step:5:20:30s`,
    /// `spike:5:50:10s:5s`, `sine:10:5:60s` (rates in requests/s); prompt and output lengths are
    /// drawn from the bundled trace.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Multiplies every arrival time: 0.1 replays ten times faster.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Stop sending after this many seconds (of replay time). Default: the whole trace, or 60 s
    /// for a pattern.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Model name to put in each request.
    #[arg(long, default_value = "sim-llm")]
    pub model: String,
    /// Use the streaming `ModelStreamInfer` call (TTFT measured at the first token).
    #[arg(long)]
    pub stream: bool,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed for synthetic patterns.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests in flight at most; one more is dropped (counted, not sent).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Deadline of each request (sent as `grpc-timeout`), e.g. `120s`.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Send each request's session in this metadata header (e.g. `x-session-id`): the
    /// conversation its prefix blocks name ([`session_of`]), for balancers that hash on it.
    /// Requests without prefix blocks carry none.
    #[arg(long)]
    pub session_header: Option<String>,
}

impl Default for LoadgenArgs {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:9001".into(),
            trace: None,
            pattern: None,
            time_scale: 1.0,
            duration: None,
            model: "sim-llm".into(),
            stream: false,
            json: None,
            seed: 1,
            max_in_flight: 4096,
            timeout: Duration::from_secs(120),
            session_header: None,
        }
    }
}

/// Below this share of the offered rate, the served rate is "far below" it and the summary
/// warns that the target is overloaded. A run that keeps up serves nearly all of it (a short run
/// loses a little to the tail after the last send: a 3 s schedule with 1 s responses serves
/// 75 %).
pub const OVERLOAD_RATIO: f64 = 0.5;

/// Why the load generator could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The trace could not be read.
    #[error("{0}")]
    Trace(#[from] TraceError),
    /// The pattern does not parse.
    #[error("bad --pattern: {0}")]
    Pattern(String),
    /// A flag is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The target is not reachable.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The target.
        target: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The JSON report could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The summary of one run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadgenReport {
    /// The target address.
    pub target: String,
    /// `unary` or `stream`.
    pub mode: String,
    /// Where the schedule came from (`trace:FILE`, `trace:bundled-azure-conv`, `pattern:SPEC`).
    pub source: String,
    /// Requests scheduled: `ok` + all errors + `dropped`.
    pub requests: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Failed requests by gRPC status code name.
    pub errors: BTreeMap<String, u64>,
    /// Requests not sent because `--max-in-flight` were already in flight.
    pub dropped: u64,
    /// Time to first token of the successful requests, in milliseconds.
    pub ttft_ms: Percentiles,
    /// Latency (to the end of the response) of the successful requests, in milliseconds.
    pub latency_ms: Percentiles,
    /// Output tokens of successful requests per second of the run.
    pub output_tokens_per_s: f64,
    /// Requests sent per second, measured from the first send to the last.
    pub arrival_rate: f64,
    /// Requests per second the schedule asked for.
    pub offered_rate: f64,
    /// Wall time of the run, first send to last response, in seconds.
    pub duration_s: f64,
}

impl LoadgenReport {
    /// The summary as a plain-text table. With no successful request there is nothing to
    /// summarise, and every cell reads `n/a` (not a latency of 0).
    pub fn table(&self) -> Table {
        let mut t = Table::new(["", "mean", "p50", "p90", "p99", "p99.9", "max"]);
        for (name, p) in [("ttft ms", &self.ttft_ms), ("latency ms", &self.latency_ms)] {
            let cells = [p.mean, p.p50, p.p90, p.p99, p.p999, p.max]
                .map(|v| if self.ok == 0 { "n/a".to_string() } else { format!("{v:.1}") });
            t.row([name.to_string()].into_iter().chain(cells));
        }
        t
    }

    /// An error naming the failures when no request succeeded (the run measured nothing), else
    /// `None`. The binary prints the summary and then this, and exits non-zero.
    pub fn failure(&self) -> Option<String> {
        if self.ok > 0 {
            return None;
        }
        let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Some(format!(
            "no request succeeded ({} of {}: {}{})",
            self.requests - self.ok,
            self.requests,
            if errors.is_empty() { "none sent".to_string() } else { errors.join(" ") },
            if self.dropped > 0 { format!(", dropped {}", self.dropped) } else { String::new() },
        ))
    }

    /// Requests that succeeded per second of the run (first send to last response).
    pub fn served_rate(&self) -> f64 {
        if self.duration_s > 0.0 { self.ok as f64 / self.duration_s } else { 0.0 }
    }

    /// A warning when the target served far less than the schedule offered (under
    /// [`OVERLOAD_RATIO`] of it): the target is past its capacity, requests queued, and the
    /// latencies measure the queue more than the target.
    pub fn overload_warning(&self) -> Option<String> {
        let served = self.served_rate();
        if self.ok == 0 || self.offered_rate <= 0.0 || served >= OVERLOAD_RATIO * self.offered_rate {
            return None;
        }
        Some(format!(
            "warning: the target served {served:.2} requests/s of the {:.2}/s offered ({:.0} %): the \
             offered load exceeds its capacity, so the latencies above are mostly queueing; offer \
             less (a larger --time-scale, a lower pattern rate) or add replicas",
            self.offered_rate,
            100.0 * served / self.offered_rate
        ))
    }

    /// A one-paragraph summary: counts, rates and the table.
    pub fn summary(&self) -> String {
        let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} requests ({}, {}) to {} in {:.1} s: ok {}, errors {}, dropped {}\n\
             arrival {:.2}/s (offered {:.2}/s), output {:.0} tokens/s\n\n{}",
            self.requests,
            self.mode,
            self.source,
            self.target,
            self.duration_s,
            self.ok,
            if errors.is_empty() { "0".to_string() } else { errors.join(" ") },
            self.dropped,
            self.arrival_rate,
            self.offered_rate,
            self.output_tokens_per_s,
            self.table()
        ) + &self.overload_warning().map(|w| format!("\n{w}")).unwrap_or_default()
    }
}

/// The schedule `args` asks for, and a name for its source.
pub fn schedule(args: &LoadgenArgs) -> Result<(Vec<TraceRecord>, String), LoadgenError> {
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        return Err(LoadgenError::Invalid(format!("--time-scale must be > 0, got {}", args.time_scale)));
    }
    if let Some(d) = args.duration.filter(|d| !(d.is_finite() && *d > 0.0)) {
        return Err(LoadgenError::Invalid(format!("--duration must be > 0 seconds, got {d}")));
    }
    let (trace, trace_name) = match &args.trace {
        Some(path) => (read_trace(path)?, format!("trace:{}", path.display())),
        None => (crate::traces::azure_conv()?, "trace:bundled-azure-conv".to_string()),
    };
    // Times below are replay times: trace time × time_scale.
    let limit = args.duration.map(Duration::from_secs_f64);
    match &args.pattern {
        None => {
            let records = trace
                .into_iter()
                .filter(|r| limit.is_none_or(|l| r.at.mul_f64(args.time_scale) < l))
                .collect::<Vec<_>>();
            Ok((records, trace_name))
        }
        Some(spec) => {
            let pattern: Pattern = spec.parse().map_err(|e| LoadgenError::Pattern(format!("{e}")))?;
            let duration = limit.unwrap_or(Duration::from_secs(60));
            // The pattern's rates are per second of replay time: generate in replay time and
            // undo the scaling that pacing applies.
            let records = Synthetic::new(
                pattern,
                LengthSampler::from_trace(&trace).map_err(|e| LoadgenError::Pattern(e.to_string()))?,
                duration,
                args.seed,
            )
            .map(|mut r| {
                r.at = r.at.div_f64(args.time_scale);
                r
            })
            .collect();
            Ok((records, format!("pattern:{spec}")))
        }
    }
}

/// The URI of a gRPC target given as `http://HOST:PORT` (kept as it is) or as a bare `HOST:PORT`
/// (plaintext HTTP/2 is assumed, as the gateway's `--backend` does).
pub fn target_uri(target: &str) -> String {
    if target.contains("://") { target.to_string() } else { format!("http://{target}") }
}

pub(crate) async fn connect(target: &str) -> Result<Channel, LoadgenError> {
    let endpoint = Endpoint::from_shared(target_uri(target))
        .map_err(|source| LoadgenError::Connect { target: target.to_string(), source })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    let mut attempt = 0;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            // A worker started a moment ago may not listen yet.
            Err(_) if attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(source) => return Err(LoadgenError::Connect { target: target.to_string(), source }),
        }
    }
}

/// Runs the load `args` describes, prints progress to stderr, and returns the summary (also
/// written to `--json` when given).
pub async fn run(args: &LoadgenArgs) -> Result<LoadgenReport, LoadgenError> {
    run_sampled(args).await.map(|(report, _)| report)
}

/// Like [`run`], and also returns one [`RequestSample`] per request sent, in the order they
/// completed.
pub async fn run_sampled(args: &LoadgenArgs) -> Result<(LoadgenReport, Vec<RequestSample>), LoadgenError> {
    if let Some(header) = &args.session_header {
        call::session_header(header).map_err(LoadgenError::Invalid)?;
    }
    let (records, source) = schedule(args)?;
    if records.is_empty() {
        return Err(LoadgenError::Invalid(
            "the schedule is empty: no request falls within --duration".into(),
        ));
    }
    let channel = connect(&args.target).await?;
    let (report, samples) = drive_sampled(channel, records, source, args).await;
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)
            .map_err(|source| LoadgenError::Write { path: path.clone(), source })?;
    }
    Ok((report, samples))
}

/// One request sent, and what it measured: the data of latency-over-time plots.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSample {
    /// When the request was sent, from the start of the run.
    pub sent_at: Duration,
    /// What the call measured.
    pub outcome: Outcome,
}

/// Sends `records` on their schedule over `channel` and summarises what came back.
pub async fn drive(
    channel: Channel,
    records: Vec<TraceRecord>,
    source: String,
    args: &LoadgenArgs,
) -> LoadgenReport {
    drive_sampled(channel, records, source, args).await.0
}

/// Like [`drive`], and also returns one [`RequestSample`] per request sent (at most one per
/// record), in the order they completed.
pub async fn drive_sampled(
    channel: Channel,
    records: Vec<TraceRecord>,
    source: String,
    args: &LoadgenArgs,
) -> (LoadgenReport, Vec<RequestSample>) {
    let total = records.len() as u64;
    let span = records.last().map(|r| r.at.mul_f64(args.time_scale)).unwrap_or_default();
    let offered_rate = if span.is_zero() { 0.0 } else { total as f64 / span.as_secs_f64() };
    let client = GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let slots = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let progress = Progress::new(total);
    let mut samples = Vec::with_capacity(records.len());

    let session_key = args.session_header.as_deref().and_then(|h| call::session_header(h).ok());
    let mut schedule = Box::pin(paced(records, args.time_scale));
    let mut tasks = JoinSet::new();
    let mut acc = Accumulator::default();
    let (mut first_send, mut last_send) = (None::<Instant>, None::<Instant>);
    let mut sending = true;
    let mut id = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let start = Instant::now();
    while sending || !tasks.is_empty() {
        tokio::select! {
            record = schedule.next(), if sending => match record {
                None => sending = false,
                Some(record) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        acc.dropped += 1;
                        progress.inc(&acc);
                        continue;
                    };
                    let now = Instant::now();
                    first_send.get_or_insert(now);
                    last_send = Some(now);
                    let sent_at = now.saturating_duration_since(start);
                    let request = infer_request(&args.model, id, &record);
                    let session = session_key.as_ref().and_then(|key| Some((key.clone(), session_of(&record)?)));
                    id += 1;
                    let client = client.clone();
                    let (stream, timeout) = (args.stream, args.timeout);
                    tasks.spawn(async move {
                        let _permit = permit;
                        let outcome = if stream { call::streaming(client, request, timeout, session).await } else { call::unary(client, request, timeout, session).await };
                        RequestSample { sent_at, outcome }
                    });
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                match done {
                    Ok(sample) => {
                        acc.record(sample.outcome.clone());
                        samples.push(sample);
                    }
                    Err(_) => acc.record(Outcome::Failed("CANCELLED")),
                }
                progress.inc(&acc);
            },
            _ = ticker.tick() => progress.line(start.elapsed(), &acc, tasks.len()),
        }
    }
    progress.finish(&acc);
    let send_window = match (first_send, last_send) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let sent = acc.ok + acc.errors.values().sum::<u64>();
    let report = acc.into_report(ReportMeta {
        target: args.target.clone(),
        mode: if args.stream { "stream" } else { "unary" }.into(),
        source,
        offered_rate,
        arrival_rate: if send_window > 0.0 { sent.saturating_sub(1) as f64 / send_window } else { 0.0 },
        duration_s: start.elapsed().as_secs_f64(),
    });
    (report, samples)
}

struct ReportMeta {
    target: String,
    mode: String,
    source: String,
    offered_rate: f64,
    arrival_rate: f64,
    duration_s: f64,
}

#[derive(Default)]
struct Accumulator {
    ok: u64,
    errors: BTreeMap<String, u64>,
    dropped: u64,
    ttft_ms: Vec<f64>,
    latency_ms: Vec<f64>,
    output_tokens: u64,
}

impl Accumulator {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok { ttft, latency, output_tokens } => {
                self.ok += 1;
                self.ttft_ms.push(ttft.as_secs_f64() * 1e3);
                self.latency_ms.push(latency.as_secs_f64() * 1e3);
                self.output_tokens += u64::from(output_tokens);
            }
            Outcome::Failed(code) => *self.errors.entry(code.to_string()).or_default() += 1,
        }
    }

    fn done(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>() + self.dropped
    }

    fn into_report(mut self, meta: ReportMeta) -> LoadgenReport {
        let requests = self.done();
        LoadgenReport {
            target: meta.target,
            mode: meta.mode,
            source: meta.source,
            requests,
            ok: self.ok,
            dropped: self.dropped,
            ttft_ms: Percentiles::of(&mut self.ttft_ms),
            latency_ms: Percentiles::of(&mut self.latency_ms),
            output_tokens_per_s: if meta.duration_s > 0.0 {
                self.output_tokens as f64 / meta.duration_s
            } else {
                0.0
            },
            arrival_rate: meta.arrival_rate,
            offered_rate: meta.offered_rate,
            duration_s: meta.duration_s,
            errors: self.errors,
        }
    }
}

/// A progress bar on a terminal, plain lines every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Self { bar, total }
    }

    fn inc(&self, acc: &Accumulator) {
        if let Some(bar) = &self.bar {
            bar.set_position(acc.done());
            bar.set_message(format!(
                "ok {} errors {} dropped {}",
                acc.ok,
                acc.errors.values().sum::<u64>(),
                acc.dropped
            ));
        }
    }

    fn line(&self, elapsed: Duration, acc: &Accumulator, in_flight: usize) {
        if self.bar.is_none() && elapsed >= Duration::from_secs(1) {
            eprintln!(
                "loadgen: {:>5.0} s  done {}/{}  ok {}  errors {}  dropped {}  in flight {}",
                elapsed.as_secs_f64(),
                acc.done(),
                self.total,
                acc.ok,
                acc.errors.values().sum::<u64>(),
                acc.dropped,
                in_flight
            );
        }
    }

    fn finish(&self, acc: &Accumulator) {
        if let Some(bar) = &self.bar {
            bar.set_position(acc.done());
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ok: u64, errors: &[(&str, u64)]) -> LoadgenReport {
        let errors: BTreeMap<String, u64> = errors.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        LoadgenReport {
            target: "t".into(),
            mode: "unary".into(),
            source: "s".into(),
            requests: ok + errors.values().sum::<u64>(),
            ok,
            errors,
            dropped: 0,
            ttft_ms: Percentiles::default(),
            latency_ms: Percentiles::default(),
            output_tokens_per_s: 0.0,
            arrival_rate: 1.0,
            offered_rate: 1.0,
            duration_s: 1.0,
        }
    }

    #[test]
    fn a_target_far_behind_the_offered_rate_is_reported_overloaded() {
        // The README's old example: ~34 requests/s offered for 5 s, 125 s to serve them.
        let mut r = report(120, &[("DEADLINE_EXCEEDED", 50)]);
        (r.offered_rate, r.duration_s) = (34.0, 125.0);
        let warning = r.overload_warning().expect("a warning");
        assert!(
            warning.starts_with("warning: the target served 0.96 requests/s of the 34.00/s offered (3 %)"),
            "{warning}"
        );
        assert!(r.summary().ends_with(&warning));
        // A run that keeps up, with the tail after the last send.
        (r.ok, r.offered_rate, r.duration_s) = (180, 3.0, 63.0);
        assert_eq!(r.overload_warning(), None);
        assert!(!r.summary().contains("warning"));
    }

    #[test]
    fn no_success_reads_n_a_and_is_a_failure() {
        let r = report(0, &[("NOT_FOUND", 12)]);
        let table = r.table().to_string();
        assert!(table.contains("n/a") && !table.contains("0.0"), "{table}");
        assert_eq!(r.failure().as_deref(), Some("no request succeeded (12 of 12: NOT_FOUND=12)"));
        let ok = report(3, &[("NOT_FOUND", 1)]);
        assert!(!ok.table().to_string().contains("n/a"));
        assert_eq!(ok.failure(), None);
    }
}
