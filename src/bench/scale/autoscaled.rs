//! The autoscaled part of scenario `scale`: the real autoscaler sizes the pool while the load
//! goes through a profile of rates.
//!
//! The autoscaler is the one `switchyard cluster` runs ([`LocalAutoscaler`]):
//! `switchyard_autoscale::Autoscaler` with the gateway's board as its signals (`BoardSignals`),
//! the default `LlmAware` recommender and the `ProcessScaler`. Its windows are shrunk to the
//! profile's length as the cluster shrinks them to its run ([`recommender_config_for_run`]), its
//! target utilisation is `LlmAware`'s default (the workers are of the parallel kind, which the
//! cluster does not calibrate either), and it keeps the pool between [`MIN_REPLICAS`] and
//! [`MAX_REPLICAS`]. It decides once a second; between decisions the run reads the board every
//! [`DRAIN_SAMPLE_EVERY`] (replicas leaving, the timeline), from the same task, so a decision and
//! an observation never race.
//!
//! [`AutoscaledRun`] is the run as a value: [`AutoscaledRun::start`], then
//! [`AutoscaledRun::set_rate`] and either a fixed time (the bench's `--steps`) or
//! [`AutoscaledRun::until`] a state of the pool ([`Progress`]: what a test waits for), then
//! [`AutoscaledRun::finish`] for the report.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use switchyard_autoscale::{Bounds, LlmAwareConfig, PoolSize, ScaleError};
use switchyard_balance::LoadBoard;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::traffic::{Call, Watch, generate, start_gateway, worker_process};
use super::{
    COLD_START, CONNECTIONS, DRAIN_SAMPLE_EVERY, Drained, LoadStep, Outcomes, Sample, drained_markdown,
};
use crate::bench::{BenchArgs, BenchError};
use crate::cluster::local_autoscaler::{LocalAutoscaler, recommender_config_for_run};
use crate::gateway::Gateway;

/// The fewest replicas the autoscaler keeps.
pub const MIN_REPLICAS: u32 = 1;
/// The most replicas the autoscaler starts.
pub const MAX_REPLICAS: u32 = 8;
/// How long the first replica may take to be ready.
const FIRST_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How an autoscaled run is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Each worker's simulated weight loading.
    pub cold_start: Duration,
    /// The recommender's settings.
    pub recommender: LlmAwareConfig,
    /// The gateway's threads.
    pub threads: usize,
    /// The seed of the arrivals.
    pub seed: u64,
}

impl Settings {
    /// For a run of about `run_s` seconds: the recommender's windows shrunk to it, the default
    /// target utilisation, [`MIN_REPLICAS`]..[`MAX_REPLICAS`].
    pub fn for_run(run_s: f64, cold_start: Duration, threads: usize) -> Self {
        let target = LlmAwareConfig::default().target_utilisation;
        Self {
            cold_start,
            recommender: recommender_config_for_run(
                run_s,
                cold_start,
                Bounds::new(MIN_REPLICAS, MAX_REPLICAS),
                target,
            ),
            threads,
            seed: 11,
        }
    }
}

/// The pool as the run last observed it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Progress {
    /// Seconds since the load began.
    pub at_s: f64,
    /// The pool's size (desired, current, ready).
    pub size: PoolSize,
    /// Decisions that raised the desired count.
    pub scale_ups: u32,
    /// Decisions that lowered it.
    pub scale_downs: u32,
    /// Replicas out of discovery still on the board (finishing their calls).
    pub draining: u32,
    /// Replicas that left discovery so far.
    pub drained: u32,
}

/// One decision that changed the desired count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleEvent {
    /// Seconds since the load began.
    pub at_s: f64,
    /// Desired before.
    pub from: u32,
    /// Desired after.
    pub to: u32,
    /// Replicas ready when it was taken.
    pub ready: u32,
    /// The recommender's reason.
    pub reason: String,
    /// The recommender's metric (demand in replicas of work), if any.
    pub metric: Option<f64>,
}

/// The recommender's settings, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecommenderSettings {
    /// The recommender.
    pub name: String,
    /// Share of the learnt capacity planned for.
    pub target_utilisation: f64,
    /// Seconds: the arrival rate's EWMA time constant.
    pub rate_tau_s: f64,
    /// Seconds: the trend window.
    pub trend_window_s: f64,
    /// Seconds: the window whose demand must fit in fewer replicas to scale down.
    pub scale_down_window_s: f64,
    /// Seconds: at most one scale-down per this, to the count the window's demand fits in.
    pub scale_down_step_s: f64,
    /// Seconds: the cold start the trend is projected over.
    pub cold_start_s: f64,
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
}

impl RecommenderSettings {
    fn of(c: &LlmAwareConfig) -> Self {
        Self {
            name: "switchyard (LlmAware)".into(),
            target_utilisation: c.target_utilisation,
            rate_tau_s: c.rate_tau.as_secs_f64(),
            trend_window_s: c.trend_window.as_secs_f64(),
            scale_down_window_s: c.scale_down_window.as_secs_f64(),
            scale_down_step_s: c.scale_down_step.as_secs_f64(),
            cold_start_s: c.cold_start.as_secs_f64(),
            min_replicas: c.bounds.min,
            max_replicas: c.bounds.max,
        }
    }
}

/// The report of an autoscaled run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaledReport {
    /// The recommender and its settings.
    pub recommender: RecommenderSettings,
    /// The load: calls a second from each time on (seconds since the load began).
    pub offered: Vec<(f64, f64)>,
    /// The load profile it ran, when it was one of fixed steps.
    pub steps: Vec<LoadStep>,
    /// Seconds of load.
    pub duration_s: f64,
    /// The calls.
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// Calls in flight at some moment of a scale-down: after a replica left discovery and
    /// before it left the board (the drain), answered or not.
    pub calls_during_scale_down: u64,
    /// How many of those failed.
    pub failed_during_scale_down: u64,
    /// Every decision that changed the desired count.
    pub scale_events: Vec<AutoscaleEvent>,
    /// Decisions up.
    pub scale_ups: u32,
    /// Decisions down.
    pub scale_downs: u32,
    /// The most replicas asked for.
    pub desired_max: u32,
    /// The most replicas ready at once.
    pub ready_max: u32,
    /// Replica-seconds of the replicas that existed (ready or starting), from the timeline.
    pub replica_seconds: f64,
    /// The replicas that left discovery, in order.
    pub drained: Vec<Drained>,
    /// The timeline, every 0.5 s.
    pub timeline: Vec<Sample>,
}

impl AutoscaledReport {
    /// The figures in a few lines.
    pub fn summary(&self) -> String {
        format!(
            "autoscaled ({}, target {}): {:.0} s of load, rates {}\n\
             requests {}, answered {}, failed {} ({}); latency p50 {:.0} ms, p99 {:.0} ms\n\
             scale-ups {}, scale-downs {}, desired at most {}, ready at most {}; replicas drained {} \
             ({} with calls in flight); calls in flight during a scale-down {}, failed {}\n",
            self.recommender.name,
            self.recommender.target_utilisation,
            self.duration_s,
            self.offered.iter().map(|(_, r)| format!("{r}")).collect::<Vec<_>>().join(" → "),
            self.outcomes.requests,
            self.outcomes.ok,
            self.outcomes.failures,
            self.outcomes.failures_line(),
            self.outcomes.latency_ms.p50,
            self.outcomes.latency_ms.p99,
            self.scale_ups,
            self.scale_downs,
            self.desired_max,
            self.ready_max,
            self.drained.len(),
            self.drained.iter().filter(|d| d.in_flight_at_removal > 0).count(),
            self.calls_during_scale_down,
            self.failed_during_scale_down,
        )
    }

    /// The markdown section.
    pub fn markdown(&self) -> String {
        let r = &self.recommender;
        let mut out = format!(
            "## Autoscaled\n\nThe replica count is decided by `switchyard_autoscale::Autoscaler`: `BoardSignals` (the \
             gateway pool's `LoadBoard`), {} with target utilisation {} and its windows shrunk to the run's {:.0} s \
             (rate EWMA τ {:.1} s, trend window {:.1} s, scale-down window {:.1} s, at most one scale-down, to what \
             fits, per {:.1} s, trend projected over the {:.1} s cold start), {}..{} replicas; the `ProcessScaler` starts and \
             drains the workers. It decides once a second. The load, Poisson:\n\n| from (s) | calls/s |\n| --- | --- |\n",
            r.name,
            r.target_utilisation,
            self.duration_s,
            r.rate_tau_s,
            r.trend_window_s,
            r.scale_down_window_s,
            r.scale_down_step_s,
            r.cold_start_s,
            r.min_replicas,
            r.max_replicas,
        );
        for (at, rate) in &self.offered {
            out.push_str(&format!("| {at:.1} | {rate} |\n"));
        }
        out.push_str("\n### Outcomes\n\n");
        out.push_str(&self.outcomes.markdown());
        out.push_str(&format!(
            "Calls in flight while a replica drained (after it left discovery, before it left the board): {}, \
             of which failed: {}. Replica-seconds: {:.0}; desired at most {}, ready at most {}.\n\n",
            self.calls_during_scale_down,
            self.failed_during_scale_down,
            self.replica_seconds,
            self.desired_max,
            self.ready_max,
        ));
        out.push_str(
            "### Scale events\n\n| t (s) | from | to | ready then | reason | demand (replicas of work) |\n| --- | --- | --- | --- | --- | --- |\n",
        );
        for e in &self.scale_events {
            out.push_str(&format!(
                "| {:.1} | {} | {} | {} | {} | {} |\n",
                e.at_s,
                e.from,
                e.to,
                e.ready,
                e.reason,
                e.metric.map_or_else(|| "-".to_string(), |m| format!("{m:.2}"))
            ));
        }
        out.push_str("\n### Replicas over time\n\nEvery 5 s of the timeline (all of it, every 0.5 s, in `scale.json`):\n\n");
        out.push_str("| t (s) | calls/s | desired | current | ready | draining | calls in flight |\n| --- | --- | --- | --- | --- | --- | --- |\n");
        let mut next = 0.0;
        for s in &self.timeline {
            if s.at_s + 1e-9 >= next {
                next += 5.0;
                out.push_str(&format!(
                    "| {:.1} | {} | {} | {} | {} | {} | {} |\n",
                    s.at_s, s.offered_rps, s.desired, s.current, s.ready, s.draining, s.in_flight
                ));
            }
        }
        out.push_str("\n### Replicas drained\n\n");
        out.push_str(&drained_markdown(&self.drained));
        out.push('\n');
        out
    }
}

/// What the control task hands back.
struct Controlled {
    autoscaler: LocalAutoscaler,
    watch: Watch,
    events: Vec<AutoscaleEvent>,
}

/// An autoscaled run under way (see the [module docs](self)).
#[derive(Debug)]
pub struct AutoscaledRun {
    gateway: Gateway,
    start: Instant,
    recommender: LlmAwareConfig,
    rate: watch::Sender<f64>,
    offered: Vec<(f64, f64)>,
    stop_load: Arc<tokio::sync::Notify>,
    generator: JoinHandle<(Vec<Call>, u64)>,
    stop_control: oneshot::Sender<()>,
    control: JoinHandle<Result<Controlled, (ScaleError, LocalAutoscaler)>>,
    progress: watch::Receiver<Progress>,
}

impl std::fmt::Debug for Controlled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controlled").field("events", &self.events).finish_non_exhaustive()
    }
}

impl AutoscaledRun {
    /// A gateway, the autoscaler with its first replica ready, and the load generator at no
    /// load: the run begins (time 0) when this returns.
    pub async fn start(exe: &Path, settings: &Settings) -> Result<Self, BenchError> {
        let (gateway, publisher, board) = start_gateway(settings.threads).await?;
        let process = worker_process(exe, settings.cold_start);
        let mut autoscaler = LocalAutoscaler::new(process, publisher, board.clone(), settings.recommender);
        let min = settings.recommender.bounds.min.max(1);
        if let Err(e) = autoscaler.start(min, FIRST_READY_TIMEOUT).await {
            autoscaler.shutdown().await;
            let _ = gateway.shutdown().await;
            return Err(BenchError::Setup(e.to_string()));
        }
        let channels = crate::bench::load::connect(&[gateway.local_addr().to_string()], CONNECTIONS)
            .await
            .map_err(BenchError::Setup)?;
        let (rate, rate_rx) = watch::channel(0.0);
        let stop_load = Arc::new(tokio::sync::Notify::new());
        let start = Instant::now();
        let generator =
            tokio::spawn(generate(channels, rate_rx.clone(), stop_load.clone(), settings.seed, start));
        let (stop_control, stopped) = oneshot::channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let control = tokio::spawn(control(autoscaler, board, start, rate_rx, progress_tx, stopped));
        Ok(Self {
            gateway,
            start,
            recommender: settings.recommender,
            rate,
            offered: Vec::new(),
            stop_load,
            generator,
            stop_control,
            control,
            progress,
        })
    }

    /// When the run began.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Offers `rate` calls a second from now on.
    pub fn set_rate(&mut self, rate: f64) {
        self.offered.push((self.start.elapsed().as_secs_f64(), rate));
        self.rate.send_replace(rate);
        eprintln!("bench: scale: autoscaled: {rate} calls/s");
    }

    /// The pool as last observed.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Waits until the pool's observed state satisfies `done`, at most `timeout` (an error
    /// naming `what` then), or until the autoscaler stopped on an error.
    pub async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Progress) -> bool,
    ) -> Result<Progress, BenchError> {
        let waited = tokio::time::timeout(timeout, async {
            self.progress.wait_for(|p| done(p)).await.map(|p| *p).map_err(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(())) => Err(BenchError::Setup(format!("{what}: the autoscaler stopped"))),
            Err(_) => Err(BenchError::Setup(format!(
                "{what}: not within {timeout:?} (last seen {:?})",
                *self.progress.borrow()
            ))),
        }
    }

    /// Ends the load, waits for every call's outcome, stops the autoscaler and the workers, and
    /// reports.
    pub async fn finish(self, steps: Vec<LoadStep>) -> Result<AutoscaledReport, BenchError> {
        let duration_s = self.start.elapsed().as_secs_f64();
        self.stop_load.notify_one();
        let generated = self.generator.await;
        let _ = self.stop_control.send(());
        let controlled = self.control.await;
        let controlled = match controlled {
            Ok(Ok(c)) => Ok(c),
            Ok(Err((e, autoscaler))) => {
                autoscaler.shutdown().await;
                Err(BenchError::Setup(format!("autoscaler: {e}")))
            }
            Err(e) => Err(BenchError::Setup(format!("autoscaler task: {e}"))),
        };
        let Controlled { autoscaler, watch, events } = match controlled {
            Ok(c) => c,
            Err(e) => {
                let _ = self.gateway.shutdown().await;
                return Err(e);
            }
        };
        autoscaler.shutdown().await;
        if let Err(e) = self.gateway.shutdown().await {
            eprintln!("bench: warning: gateway: {e}");
        }
        let (calls, not_sent) = generated.map_err(|e| BenchError::Setup(format!("load generator: {e}")))?;

        // A scale-down's drain: from a replica leaving discovery to its leaving the board.
        let drains: Vec<(f64, f64)> =
            watch.drained.iter().map(|d| (d.at_s, d.left_board_at_s.unwrap_or(f64::INFINITY))).collect();
        let during: Vec<&Call> = calls
            .iter()
            .filter(|c| drains.iter().any(|&(from, to)| c.sent_s <= to && c.ended_s >= from))
            .collect();
        let timeline = watch.timeline;
        let replica_seconds =
            timeline.windows(2).map(|w| f64::from(w[0].current) * (w[1].at_s - w[0].at_s)).sum();
        Ok(AutoscaledReport {
            recommender: RecommenderSettings::of(&self.recommender),
            offered: self.offered,
            steps,
            duration_s,
            outcomes: Outcomes::of(&calls, not_sent),
            calls_during_scale_down: during.len() as u64,
            failed_during_scale_down: during.iter().filter(|c| c.end.is_err()).count() as u64,
            scale_ups: events.iter().filter(|e| e.to > e.from).count() as u32,
            scale_downs: events.iter().filter(|e| e.to < e.from).count() as u32,
            scale_events: events,
            desired_max: timeline.iter().map(|s| s.desired).max().unwrap_or(0),
            ready_max: timeline.iter().map(|s| s.ready).max().unwrap_or(0),
            replica_seconds,
            drained: watch.drained,
            timeline,
        })
    }
}

/// The task that owns the autoscaler: a decision when one is due, an observation of the board
/// every [`DRAIN_SAMPLE_EVERY`], until `stop`.
async fn control(
    mut autoscaler: LocalAutoscaler,
    board: LoadBoard,
    start: Instant,
    rate: watch::Receiver<f64>,
    progress: watch::Sender<Progress>,
    mut stop: oneshot::Receiver<()>,
) -> Result<Controlled, (ScaleError, LocalAutoscaler)> {
    let mut watch = Watch::new(start);
    let mut events = Vec::new();
    let mut tick = tokio::time::interval(DRAIN_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    autoscaler.begin();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            () = tokio::time::sleep_until(autoscaler.next_decision()) => {
                let decision = match autoscaler.decide().await {
                    Ok(d) => d,
                    Err(e) => return Err((e, autoscaler)),
                };
                if decision.changed() {
                    let r = &decision.recommendation;
                    let at_s = decision.at.saturating_duration_since(start).as_secs_f64();
                    eprintln!(
                        "bench: scale: autoscaler {} -> {} at {at_s:.1} s ({})",
                        decision.before.desired, r.desired, r.reason
                    );
                    events.push(AutoscaleEvent {
                        at_s,
                        from: decision.before.desired,
                        to: r.desired,
                        ready: decision.before.ready,
                        reason: r.reason.to_string(),
                        metric: r.metric,
                    });
                }
            }
            _ = tick.tick() => {}
        }
        let size = autoscaler.size();
        watch.observe(&board, Some(size), *rate.borrow());
        let (scale_ups, scale_downs) = autoscaler.scale_events();
        progress.send_replace(Progress {
            at_s: start.elapsed().as_secs_f64(),
            size,
            scale_ups,
            scale_downs,
            draining: watch.draining() as u32,
            drained: watch.drained.len() as u32,
        });
    }
    Ok(Controlled { autoscaler, watch, events })
}

/// Runs the autoscaled part over `steps` (the bench's `--steps`), each step a fixed time.
pub(crate) async fn run(
    args: &BenchArgs,
    exe: &Path,
    steps: &[LoadStep],
) -> Result<AutoscaledReport, BenchError> {
    let run_s: f64 = steps.iter().map(|s| s.secs).sum();
    let settings = Settings::for_run(run_s, COLD_START, args.proxy_threads());
    let mut run = AutoscaledRun::start(exe, &settings).await?;
    let mut at = Duration::ZERO;
    for step in steps {
        run.set_rate(step.rate);
        at += Duration::from_secs_f64(step.secs);
        tokio::time::sleep_until(run.started() + at).await; // the profile's step, not a wait for a state
    }
    run.finish(steps.to_vec()).await
}
