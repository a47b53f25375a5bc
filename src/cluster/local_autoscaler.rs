//! The autoscaler over local worker processes, as the autoscaled cluster and `switchyard bench
//! scale` run it: `switchyard_autoscale`'s [`Autoscaler`] with the pool's board as its signals
//! ([`BoardSignals`]), Switchyard's LLM-aware recommender ([`LlmAware`]) and the
//! [`ProcessScaler`] (a worker joins discovery once SERVING; a removed one drains before
//! SIGTERM).
//!
//! The caller owns the clock of the decisions: [`LocalAutoscaler::next_decision`] says when the
//! next one is due and [`LocalAutoscaler::decide`] takes it, so that a caller can observe the pool
//! between decisions (the bench reads the board every few milliseconds) from the same task.

use std::time::Duration;

use switchyard_autoscale::scaler::process::{ProcessConfig, ProcessScaler};
use switchyard_autoscale::{
    Autoscaler, BoardSignals, Bounds, Decision, LlmAware, LlmAwareConfig, PoolSize, Recommender, ScaleError,
    Scaler, SignalSource,
};
use switchyard_balance::LoadBoard;
use switchyard_discovery::Publisher;
use tokio::time::Instant;

/// The recommender's settings for a run of `duration_s` seconds: the windows of
/// [`LlmAwareConfig::default`] (made for 30 s cold starts over minutes of load) shrunk to the run.
/// The rate's EWMA has `τ = d / 30`, the trend window is `d / 12`, a scale-down needs the demand
/// of the last `d / 6` to fit in fewer replicas, and the pool scales down at most once every
/// `d / 20`: 2 s, 5 s, 10 s and 3 s for a minute. The trend is projected one `cold_start` ahead.
pub fn recommender_config_for_run(
    duration_s: f64,
    cold_start: Duration,
    bounds: Bounds,
    target_utilisation: f64,
) -> LlmAwareConfig {
    let d = duration_s;
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.1));
    LlmAwareConfig {
        target_utilisation,
        rate_tau: secs(d / 30.0),
        trend_window: secs(d / 12.0),
        cold_start,
        scale_down_window: secs(d / 6.0),
        scale_down_step: secs(d / 20.0),
        bounds,
        ..LlmAwareConfig::default()
    }
}

/// [`Autoscaler`] over the pool's board, [`LlmAware`] and local worker processes (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct LocalAutoscaler {
    autoscaler: Autoscaler<BoardSignals, LlmAware, ProcessScaler>,
    board: LoadBoard,
    config: LlmAwareConfig,
    every: Duration,
    next: Instant,
    scale_ups: u32,
    scale_downs: u32,
}

impl LocalAutoscaler {
    /// Workers started with `process`, published through `publisher` into the pool whose board
    /// is `board`, sized by [`LlmAware`] with `recommender`.
    pub fn new(
        process: ProcessConfig,
        publisher: Publisher,
        board: LoadBoard,
        recommender: LlmAwareConfig,
    ) -> Self {
        let scaler = ProcessScaler::new(process, publisher, board.clone());
        let config = recommender;
        let recommender = LlmAware::new(config);
        let every = recommender.interval();
        let autoscaler = Autoscaler::new(BoardSignals::new(board.clone()), recommender, scaler);
        Self { autoscaler, board, config, every, next: Instant::now() + every, scale_ups: 0, scale_downs: 0 }
    }

    /// Starts `n` replicas and waits until they are ready and on the board, at most `timeout`.
    pub async fn start(&mut self, n: u32, timeout: Duration) -> Result<(), ScaleError> {
        self.autoscaler.scaler_mut().set_desired(n).await?;
        let give_up = Instant::now() + timeout;
        while self.size().ready < n || self.board.len() < n as usize {
            if Instant::now() >= give_up {
                return Err(ScaleError::Start(format!("{n} worker(s) not SERVING within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // polling the scaler's observable size
        }
        Ok(())
    }

    /// Begins deciding: the signals' first sample now (an arrival rate is the difference of two),
    /// the first decision one interval on.
    pub fn begin(&mut self) {
        let _ = self.autoscaler.source_mut().sample();
        self.next = Instant::now() + self.every;
    }

    /// When the next decision is due.
    pub fn next_decision(&self) -> Instant {
        self.next
    }

    /// One decision now (sample, recommend, log, export, apply), the next one an interval after
    /// the one due (or after now, when late: missed decisions are not made up).
    pub async fn decide(&mut self) -> Result<Decision, ScaleError> {
        let decision = self.autoscaler.step().await?;
        let now = Instant::now();
        self.next += self.every;
        if self.next <= now {
            self.next = now + self.every;
        }
        if decision.changed() {
            if decision.recommendation.desired > decision.before.desired {
                self.scale_ups += 1;
            } else {
                self.scale_downs += 1;
            }
        }
        Ok(decision)
    }

    /// Waits until the next decision is due and takes it.
    pub async fn decide_when_due(&mut self) -> Result<Decision, ScaleError> {
        tokio::time::sleep_until(self.next).await;
        self.decide().await
    }

    /// The decisions that raised and that lowered the desired count so far.
    pub fn scale_events(&self) -> (u32, u32) {
        (self.scale_ups, self.scale_downs)
    }

    /// The pool's size now.
    pub fn size(&self) -> PoolSize {
        self.autoscaler.scaler().size()
    }

    /// The process scaler.
    pub fn scaler(&self) -> &ProcessScaler {
        self.autoscaler.scaler()
    }

    /// The recommender's settings.
    pub fn recommender(&self) -> LlmAwareConfig {
        self.config
    }

    /// Scales to zero and waits until every worker has drained and exited.
    pub async fn shutdown(self) {
        let (_, _, scaler) = self.autoscaler.into_parts();
        scaler.shutdown().await;
    }
}
