//! Scenario `cost`: what one call costs the gateway, counted rather than timed: instructions
//! (callgrind), allocations and bytes, per unary and per streaming call, with where the
//! instructions go by crate and by function. Instruction counts do not move with the machine's
//! load the way times do, so a change of a few percent shows, and `scripts/cost-check.sh` holds a
//! review to the committed `reports/bench/cost.json` with them.
//!
//! One `switchyard worker` (speed 1000) runs natively. For each configuration (`--configs`:
//! `default`, the default stack of keys and balancer; `protected`, `--shed --limit vegas
//! --rpc-metrics`, limit, shed queue and metrics on top) the gateway, the same binary, runs
//! with `--threads 1` under `valgrind --tool=callgrind` with the worker as its backend. The bench
//! process itself is the client (tonic, natively): 4 clients over 2 HTTP/2 connections send
//! `--warmup-calls` unary `ServerLive` calls (400), then `callgrind_control --zero`, `--calls`
//! more (4000) and `callgrind_control --dump`; then a quarter of the warm-up count of streaming
//! calls, `--zero`, `--stream-calls` streaming `ModelStreamInfer` calls (500; a short prompt and
//! 8 output tokens, so 8 responses a call) and `--dump` again. Each dump, read by
//! the `callgrind` module, gives the instructions per call, the calls into the
//! allocator's entry points (allocations and frees per call), the exclusive instructions by crate
//! and the 25 functions of the highest inclusive cost (the frames every call runs under, thread
//! start, `std`, `core`, `tokio`'s scheduler, left out). The counters cover every thread of the
//! gateway, its runtime's as well as the serving thread's.
//!
//! Bytes need a counting allocator: `switchyard-count-allocations` (`cargo build --release
//! --features count-allocations --bin switchyard-count-allocations`), found beside the running
//! binary or at `target/release/`, or named by `--alloc-binary`, runs the same gateway natively
//! with the same windows, and its `GET /debug/allocations` is read before and after each window.
//! Without it the report's bytes are null. Its allocation count and callgrind's should agree to
//! within a few calls to the admin API; the report gives both.
//!
//! The instructions of a window move a little from run to run (about 1 % unary, up to 4 %
//! streaming at 500 calls, with a rare run further off): how many times the runtime wakes and
//! polls for the same frames depends on how the calls and the worker's responses fall in time.
//! `--runs N` runs callgrind's part N times and keeps, per configuration and kind of call, the
//! window of the median instructions (its tables with it), which one run far off does not move;
//! `scripts/cost-check.sh` and the committed report use 3. (The fewest of three was tried first:
//! one unusually low run then made the baseline, and every later check failed by 3-4 %.)
//!
//! `--profiles DIR` keeps each window's dump in `DIR` (`default-unary-run1.callgrind.out`, ...)
//! for `callgrind_annotate --tree=caller` or KCachegrind, to see who calls what the tables show
//! (for example who calls `memcpy`).
//!
//! `--baseline FILE` compares each configuration's instructions and allocations per call with an
//! earlier report and fails when any grew by more than `--tolerance` percent (2).
//!
//! valgrind and `callgrind_control` must be installed (`scripts/install-bench-deps.sh`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use super::callgrind::Profile;
use super::cost_report::{ConfigCost, CostReport, KindCost};
use super::{BenchArgs, BenchError, START_TIMEOUT, peers, start_worker};
use crate::allocations::AllocationCounts;
use crate::cluster::processes::ChildProcess;
use crate::proto::inference::ServerLiveRequest;
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::worker::request::text_request;

/// Concurrent clients.
pub const CLIENTS: usize = 4;
/// HTTP/2 connections the clients share.
pub const CONNECTIONS: usize = 2;
/// Output tokens of a streaming call (one response each).
pub const STREAM_TOKENS: u32 = 8;
/// The streaming calls' prompt.
const PROMPT: &str = "Why is the sky blue?";
/// The time one call may take, under valgrind.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The script that installs valgrind.
const INSTALL_SCRIPT: &str = "scripts/install-bench-deps.sh";

/// A gateway configuration of the scenario: its name and the flags it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostConfig {
    /// No extra flag: the default stack (keys and balancer).
    Default,
    /// `--shed --limit vegas --rpc-metrics`: limit, shed queue and metrics too.
    Protected,
}

impl CostConfig {
    /// Every configuration, in the order a run takes them.
    pub const ALL: [CostConfig; 2] = [Self::Default, Self::Protected];

    /// The name `--configs` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Protected => "protected",
        }
    }

    /// The gateway flags it adds.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Default => &[],
            Self::Protected => &["--shed", "--limit", "vegas", "--rpc-metrics"],
        }
    }

    /// The configurations `names` chooses (all when none), each once.
    pub fn chosen(names: Option<&[String]>) -> Result<Vec<Self>, BenchError> {
        let Some(names) = names else { return Ok(Self::ALL.to_vec()) };
        let mut chosen = Vec::new();
        for name in names {
            let config = Self::ALL.into_iter().find(|c| c.name() == name).ok_or_else(|| {
                BenchError::Invalid(format!("--configs: no configuration {name:?} (default, protected)"))
            })?;
            if chosen.contains(&config) {
                return Err(BenchError::Invalid(format!("--configs names {name} twice")));
            }
            chosen.push(config);
        }
        if chosen.is_empty() {
            return Err(BenchError::Invalid("--configs names no configuration".into()));
        }
        Ok(chosen)
    }
}

/// valgrind and `callgrind_control`, or an error naming the install script.
fn require_valgrind() -> Result<(PathBuf, PathBuf), BenchError> {
    match (peers::find_program("valgrind"), peers::find_program("callgrind_control")) {
        (Some(valgrind), Some(control)) => Ok((valgrind, control)),
        _ => Err(BenchError::MissingPeers(format!(
            "valgrind (and its callgrind_control) not found on PATH; bench cost counts the gateway's \
             instructions with it: run {INSTALL_SCRIPT} (Debian: apt-get install valgrind)"
        ))),
    }
}

/// The counting binary: `--alloc-binary`, else `switchyard-count-allocations` beside `exe` or
/// in `target/release/`, when one exists.
fn alloc_binary(args: &BenchArgs, exe: &Path) -> Result<Option<PathBuf>, BenchError> {
    const NAME: &str = "switchyard-count-allocations";
    if let Some(path) = &args.alloc_binary {
        if !path.is_file() {
            return Err(BenchError::Invalid(format!("--alloc-binary {}: no such file", path.display())));
        }
        return Ok(Some(path.clone()));
    }
    let beside = exe.parent().map(|dir| dir.join(NAME));
    Ok(beside.into_iter().chain([Path::new("target/release").join(NAME)]).find(|p| p.is_file()))
}

/// Runs the scenario, its dumps under `dir`.
pub(crate) async fn run(args: &BenchArgs, exe: &Path, dir: &Path) -> Result<CostReport, BenchError> {
    if args.calls == 0 || args.stream_calls == 0 {
        return Err(BenchError::Invalid("--calls and --stream-calls must be at least 1".into()));
    }
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        return Err(BenchError::Invalid("--tolerance must be a percentage ≥ 0".into()));
    }
    if let Some(path) = &args.gateway_binary
        && !path.is_file()
    {
        return Err(BenchError::Invalid(format!("--gateway-binary {}: no such file", path.display())));
    }
    let configs = CostConfig::chosen(args.configs.as_deref())?;
    let (valgrind, control) = require_valgrind()?;
    // The gateway measured: this binary, or an older build's (`--gateway-binary`), whose counts
    // the same load and parser then give.
    let gateway_exe = args.gateway_binary.as_deref().unwrap_or(exe);
    let counting = match args.gateway_binary {
        // An older build has no counting twin beside this one.
        Some(_) => args.alloc_binary.clone(),
        None => alloc_binary(args, exe)?,
    };
    // Read before the run: a baseline that cannot be read fails it at once.
    let baseline = match &args.baseline {
        Some(path) => Some(super::cost_report::read_baseline(path)?),
        None => None,
    };
    if let Some(profiles) = &args.profiles {
        std::fs::create_dir_all(profiles)
            .map_err(|e| BenchError::Io(format!("create {}", profiles.display()), e))?;
    }
    let started = Instant::now();
    let (worker, worker_address) = start_worker(exe, 0, 1000.0).await?;
    let windows = Windows { warmup: args.warmup_calls, calls: args.calls, stream_calls: args.stream_calls };
    let mut results = Vec::new();
    let mut failure = None;
    for config in configs {
        let gateway = gateway_args(&worker_address, config);
        let measured = async {
            let (mut unary_runs, mut streaming_runs) = (Vec::new(), Vec::new());
            for run in 1..=args.runs.get() {
                eprintln!("bench: cost {} under callgrind, run {run} of {}", config.name(), args.runs);
                let keep = args.profiles.as_deref().map(|profiles| Kept {
                    dir: profiles,
                    config: config.name(),
                    run,
                });
                let (unary, streaming) =
                    callgrind_run(&valgrind, &control, gateway_exe, &gateway, dir, windows, keep).await?;
                unary_runs.push(unary);
                streaming_runs.push(streaming);
            }
            let unary = median(unary_runs)?;
            let streaming = median(streaming_runs)?;
            let counted = match &counting {
                Some(binary) => {
                    eprintln!("bench: cost {} counting allocations ({})", config.name(), binary.display());
                    Some(counted_run(binary, &gateway, windows).await?)
                }
                None => None,
            };
            let kind = |profile: &Profile, calls: u64, counted: Option<AllocationCounts>| {
                KindCost::new(profile, calls, counted)
            };
            Ok::<_, BenchError>(ConfigCost {
                name: config.name().to_string(),
                flags: config.flags().iter().map(|f| f.to_string()).collect(),
                unary: kind(&unary, windows.calls, counted.map(|c| c.0)),
                streaming: kind(&streaming, windows.stream_calls, counted.map(|c| c.1)),
            })
        };
        match measured.await {
            Ok(result) => results.push(result),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    super::stop_children([worker]).await;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut report = CostReport {
        scenario: "cost".into(),
        commit: git_commit(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        binary: gateway_exe.display().to_string(),
        alloc_binary: counting.map(|p| p.display().to_string()),
        runs: args.runs.get(),
        warmup_calls: windows.warmup,
        calls: windows.calls,
        stream_calls: windows.stream_calls,
        stream_tokens: STREAM_TOKENS,
        clients: CLIENTS,
        connections: CONNECTIONS,
        duration_s: started.elapsed().as_secs_f64(),
        configs: results,
        comparison: None,
    };
    if let Some((path, baseline)) = args.baseline.as_ref().zip(baseline) {
        report.comparison = Some(report.compare(&path.display().to_string(), &baseline, args.tolerance));
    }
    Ok(report)
}

/// How many calls each window holds.
#[derive(Debug, Clone, Copy)]
struct Windows {
    warmup: u64,
    calls: u64,
    stream_calls: u64,
}

impl Windows {
    /// The streaming calls sent before the streaming window is counted.
    fn stream_warmup(self) -> u64 {
        (self.warmup / 4).max(1)
    }
}

/// The gateway's command line after the program: loopback listeners, one serving thread, the
/// worker as its backend, and the configuration's flags.
fn gateway_args(worker: &str, config: CostConfig) -> Vec<String> {
    let mut args: Vec<String> = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--backend",
        &format!("http://{worker}"),
    ]
    .map(String::from)
    .into();
    args.extend(config.flags().iter().map(|f| f.to_string()));
    args
}

/// The gateway under callgrind: the unary window's profile and the streaming window's.
async fn callgrind_run(
    valgrind: &Path,
    control: &Path,
    exe: &Path,
    gateway: &[String],
    dir: &Path,
    windows: Windows,
    keep: Option<Kept<'_>>,
) -> Result<(Profile, Profile), BenchError> {
    let mut args = vec![
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}/callgrind.out.%p", dir.display()),
    ];
    args.push(exe.display().to_string());
    args.extend(gateway.iter().cloned());
    // valgrind translates the whole binary as it first runs it: minutes where a native start
    // takes a second.
    let (child, addresses) = ChildProcess::start(
        "gateway (callgrind)",
        valgrind,
        &args,
        &["gateway serving on "],
        START_TIMEOUT * 3,
    )
    .await?;
    let measured = async {
        let pid =
            child.id().ok_or_else(|| BenchError::Setup("the gateway under valgrind has no pid".into()))?;
        let channels = super::load::connect(&addresses, CONNECTIONS).await.map_err(BenchError::Setup)?;
        unary_calls(&channels, windows.warmup).await?;
        callgrind_control(control, "--zero", pid).await?;
        unary_calls(&channels, windows.calls).await?;
        let unary = dump(control, pid, dir, keep.map(|k| k.path("unary"))).await?;
        stream_calls(&channels, windows.stream_warmup()).await?;
        callgrind_control(control, "--zero", pid).await?;
        stream_calls(&channels, windows.stream_calls).await?;
        let streaming = dump(control, pid, dir, keep.map(|k| k.path("streaming"))).await?;
        Ok((unary, streaming))
    }
    .await;
    super::stop_children([child]).await;
    measured
}

/// The counting binary's gateway, natively: the allocations in the unary window and in the
/// streaming window.
async fn counted_run(
    binary: &Path,
    gateway: &[String],
    windows: Windows,
) -> Result<(AllocationCounts, AllocationCounts), BenchError> {
    let (child, addresses) = ChildProcess::start(
        "gateway (counting)",
        binary,
        gateway,
        &["gateway serving on ", "admin serving on "],
        START_TIMEOUT,
    )
    .await?;
    let admin = addresses.get(1).cloned().unwrap_or_default();
    let measured = async {
        let channels = super::load::connect(&addresses[..1], CONNECTIONS).await.map_err(BenchError::Setup)?;
        unary_calls(&channels, windows.warmup).await?;
        let before = allocations(&admin).await?;
        unary_calls(&channels, windows.calls).await?;
        let unary = since(before, allocations(&admin).await?);
        stream_calls(&channels, windows.stream_warmup()).await?;
        let before = allocations(&admin).await?;
        stream_calls(&channels, windows.stream_calls).await?;
        let streaming = since(before, allocations(&admin).await?);
        Ok((unary, streaming))
    }
    .await;
    super::stop_children([child]).await;
    measured
}

/// Of the runs of one window, the one of the median instructions (the lower middle one of an
/// even count).
fn median(mut runs: Vec<Profile>) -> Result<Profile, BenchError> {
    runs.sort_by_key(|p| p.total);
    let middle = runs.len().saturating_sub(1) / 2;
    runs.into_iter().nth(middle).ok_or_else(|| BenchError::Invalid("--runs must be at least 1".into()))
}

fn since(before: AllocationCounts, after: AllocationCounts) -> AllocationCounts {
    AllocationCounts {
        allocations: after.allocations.saturating_sub(before.allocations),
        bytes: after.bytes.saturating_sub(before.bytes),
    }
}

/// `GET /debug/allocations` on the admin API at `admin`.
async fn allocations(admin: &str) -> Result<AllocationCounts, BenchError> {
    let body = crate::cluster::http_get(admin, "/debug/allocations")
        .await
        .map_err(|e| BenchError::Setup(format!("GET /debug/allocations on {admin}: {e}")))?;
    serde_json::from_str(&body)
        .map_err(|e| BenchError::Setup(format!("GET /debug/allocations on {admin}: {e}: {body}")))
}

/// `callgrind_control OPTION PID`, which returns once the gateway has done it.
async fn callgrind_control(control: &Path, option: &str, pid: u32) -> Result<(), BenchError> {
    let run = tokio::process::Command::new(control).arg(option).arg(pid.to_string()).output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| BenchError::Setup(format!("callgrind_control {option} {pid}: no answer in 120 s")))?
        .map_err(|e| BenchError::Io(format!("run {}", control.display()), e))?;
    if !output.status.success() {
        return Err(BenchError::Setup(format!(
            "callgrind_control {option} {pid} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

/// Where a run's dumps are kept (`--profiles`).
#[derive(Debug, Clone, Copy)]
struct Kept<'a> {
    dir: &'a Path,
    config: &'a str,
    run: u32,
}

impl Kept<'_> {
    /// The kept dump of one window: `CONFIG-KIND-runN.callgrind.out`.
    fn path(self, kind: &str) -> PathBuf {
        self.dir.join(format!("{}-{kind}-run{}.callgrind.out", self.config, self.run))
    }
}

/// Dumps the gateway's counters and reads the dump (`callgrind.out.PID.N`, the highest N), then
/// moves it to `keep` or removes it.
async fn dump(control: &Path, pid: u32, dir: &Path, keep: Option<PathBuf>) -> Result<Profile, BenchError> {
    callgrind_control(control, "--dump", pid).await?;
    let prefix = format!("callgrind.out.{pid}.");
    let entries = std::fs::read_dir(dir).map_err(|e| BenchError::Io(format!("read {}", dir.display()), e))?;
    let newest = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, entry.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, path)| path)
        .ok_or_else(|| BenchError::Setup(format!("callgrind wrote no {prefix}N in {}", dir.display())))?;
    let text = std::fs::read_to_string(&newest)
        .map_err(|e| BenchError::Io(format!("read {}", newest.display()), e))?;
    let profile =
        Profile::parse(&text).map_err(|e| BenchError::Setup(format!("{}: {e}", newest.display())))?;
    // Each window's file is read once; the next dump writes the next number.
    // A copy, not a rename: `--profiles` may be on another file system than the temp dir.
    if let Some(kept) = keep {
        std::fs::copy(&newest, &kept).map_err(|e| BenchError::Io(format!("keep {}", kept.display()), e))?;
    }
    let _ = std::fs::remove_file(&newest);
    Ok(profile)
}

/// How many of `calls` client `i` of [`CLIENTS`] sends.
fn share(calls: u64, i: usize) -> u64 {
    let clients = CLIENTS as u64;
    calls / clients + u64::from((i as u64) < calls % clients)
}

/// `calls` unary `ServerLive` calls from [`CLIENTS`] clients; any failure fails the window.
async fn unary_calls(channels: &[Channel], calls: u64) -> Result<(), BenchError> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move {
                for _ in 0..share(calls, i) {
                    let mut request = tonic::Request::new(ServerLiveRequest {});
                    request.set_timeout(CALL_TIMEOUT);
                    client.server_live(request).await.map_err(|s| format!("ServerLive: {s}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    join(tasks).await
}

/// `calls` streaming `ModelStreamInfer` calls of [`STREAM_TOKENS`] tokens from [`CLIENTS`]
/// clients; any failure fails the window.
async fn stream_calls(channels: &[Channel], calls: u64) -> Result<(), BenchError> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move {
                for _ in 0..share(calls, i) {
                    let request = text_request("sim-llm", PROMPT, STREAM_TOKENS);
                    match crate::loadgen::call::streaming(client.clone(), request, CALL_TIMEOUT, None).await {
                        crate::loadgen::call::Outcome::Ok { .. } => {}
                        crate::loadgen::call::Outcome::Failed(code) => {
                            return Err(format!("ModelStreamInfer failed: {code}"));
                        }
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    join(tasks).await
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>) -> Result<(), BenchError> {
    for task in tasks {
        task.await
            .map_err(|e| BenchError::Setup(format!("a client task failed: {e}")))?
            .map_err(BenchError::Setup)?;
    }
    Ok(())
}

/// `git rev-parse --short HEAD`, `+dirty` when tracked files differ from it; none outside git.
fn git_commit() -> Option<String> {
    let output = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let commit = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let clean = std::process::Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()
        .map(|s| s.success())
        .unwrap_or(true);
    Some(if clean { commit } else { format!("{commit}+dirty") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_default_to_both_and_are_chosen_once_each() {
        assert_eq!(CostConfig::chosen(None).ok(), Some(CostConfig::ALL.to_vec()));
        let protected = CostConfig::chosen(Some(&["protected".to_string()])).ok();
        assert_eq!(protected, Some(vec![CostConfig::Protected]));
        let twice = CostConfig::chosen(Some(&["default".to_string(), "default".to_string()]));
        assert!(matches!(twice, Err(BenchError::Invalid(m)) if m.contains("twice")));
        let unknown = CostConfig::chosen(Some(&["fast".to_string()]));
        assert!(matches!(unknown, Err(BenchError::Invalid(m)) if m.contains("\"fast\"")));
    }

    #[test]
    fn the_calls_are_shared_among_the_clients() {
        let shares: Vec<u64> = (0..CLIENTS).map(|i| share(10, i)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!((0..CLIENTS).map(|i| share(4000, i)).sum::<u64>(), 4000);
    }

    #[test]
    fn a_window_keeps_its_median_run() {
        let runs = |totals: &[u64]| -> Vec<Profile> {
            totals.iter().map(|&total| Profile { total, ..Profile::default() }).collect()
        };
        assert_eq!(median(runs(&[105, 101, 106])).map(|p| p.total).ok(), Some(105));
        assert_eq!(median(runs(&[7])).map(|p| p.total).ok(), Some(7));
        assert_eq!(median(runs(&[4, 2])).map(|p| p.total).ok(), Some(2), "the lower middle of two");
        assert!(median(Vec::new()).is_err());
    }

    #[test]
    fn the_protected_gateway_adds_its_flags() {
        let args = gateway_args("127.0.0.1:9001", CostConfig::Protected);
        assert!(args.ends_with(&["--shed", "--limit", "vegas", "--rpc-metrics"].map(String::from)));
        assert!(args.windows(2).any(|w| w == ["--threads", "1"]));
        assert!(args.windows(2).any(|w| w == ["--backend", "http://127.0.0.1:9001"]));
    }
}
