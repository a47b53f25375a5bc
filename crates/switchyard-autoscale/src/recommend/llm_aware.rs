//! Switchyard's default recommender, LLM-aware: it sizes the pool from the work arriving in
//! tokens and the replicas' learnt capacity in tokens a second, not from CPU or request counts.
//!
//! # Formula
//!
//! Every second ([`LlmAwareConfig::interval`]), from the [`Signals`]:
//!
//! ```text
//! work per request  w = 1 / EWMA of 1 / (pending work of a replica with one request awaiting
//!                   a first byte): the harmonic mean, which undoes the snapshot's length bias
//!                   (prompt tokens)
//! capacity          c = median over ready replicas of slots × 10⁹ / no-load ns per token
//! arrival rate      λ = EWMA (τ = 5 s) of requests started a second
//! trend             g = max(0, (λ now − λ trend_window ago) / trend_window)
//! projected rate    λ' = min(λ + g × cold_start, max_lead × λ), the lead counted only beyond
//!                   trend_deadband × λ (noise is not a trend)
//! demand            D = λ' × w / c  +  pending work / c / backlog_drain          (replicas of work)
//! needed            n = ceil(D / target_utilisation)
//! ```
//!
//! - **Counts replicas still starting**: `n` is compared with the desired count (ready and
//!   starting), not with the ready ones, and `D` is the pool's total work, not a per-ready-replica
//!   average that a replica still loading its weights would inflate: while 4 replicas start for a
//!   burst, the recommender does not ask for 4 more.
//! - **Early on the trend**: the rate is projected one cold start ahead, so the replicas that a
//!   growing load will need are started before it arrives (capped at `max_lead` × today's rate).
//! - **Down slowly**: one replica fewer at most every `scale_down_step` (20 s), only when every
//!   demand of the last `scale_down_window` (90 s) fits in one replica fewer with a margin
//!   (`down_margin` 0.85 of the target utilisation), and not within that window after a scale-up.
//! - **min/max** from [`Bounds`]; with `min = 0` and `idle_to_zero` set, an idle pool (nothing in
//!   flight, nothing arriving, nothing held) scales to zero after that long, and the first
//!   request held in front of the pool ([`Signals::held`]) or arriving brings one replica back.
//!   The gateway holds requests in its queue within their deadlines meanwhile.
//! - **Missing signals** (no snapshot, or no capacity learnt yet) keep the count; they never lower it.
//!
//! # Calibrating the target
//!
//! The target utilisation applies to the *learnt* figures, and both are biased estimates: the
//! no-load time per token includes the decode step a new prompt waits behind, and the harmonic
//! mean undoes the snapshot's length bias exactly only when a prompt's wait is proportional to
//! its work. `D` therefore misstates the replicas of work by a factor that depends on the engine
//! and the request mix. Set the target to the demand the recommender reads with one replica at the
//! utilisation you want (the metric of its decisions, logged and returned in
//! [`Recommendation::metric`](super::Recommendation::metric)): the lab's `burst` scenario does
//! exactly that on a calibration run at 70 % of a replica's measured capacity, as it does for the
//! HPA's and KPA's targets. The default (0.9) is an uncalibrated starting point. The other
//! defaults (cold start 30 s, backlog drained within 5 s, 30 s trend window, 90 s scale-down
//! window) are the lab's; `reports/lab/burst.md` shows what they give against the HPA, the KPA and
//! llm-d's autoscaler.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{Bounds, PoolSize, Recommendation, Recommender};
use crate::Signals;

/// Settings of [`LlmAware`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmAwareConfig {
    /// Share of the learnt capacity to plan for (0.9).
    pub target_utilisation: f64,
    /// How often it decides (1 s).
    pub interval: Duration,
    /// Time constant of the arrival rate's EWMA (5 s).
    pub rate_tau: Duration,
    /// Window over which the trend is measured (30 s).
    pub trend_window: Duration,
    /// A projected rise counts only beyond this share of the rate (0.25).
    pub trend_deadband: f64,
    /// A replica's cold start: how far ahead the trend is projected (30 s).
    pub cold_start: Duration,
    /// The projected rate is at most this many times today's (1.5).
    pub max_lead: f64,
    /// Work waiting for a first byte should be worked off within this (5 s).
    pub backlog_drain: Duration,
    /// A scale-down needs every demand of this window to fit in one replica fewer (90 s).
    pub scale_down_window: Duration,
    /// At most one replica fewer per this (20 s).
    pub scale_down_step: Duration,
    /// A scale-down plans for this share of the target utilisation (0.85).
    pub down_margin: f64,
    /// Scale to zero after this long idle, when `bounds.min` is 0 (off by default).
    pub idle_to_zero: Option<Duration>,
    /// Replica bounds.
    pub bounds: Bounds,
}

impl Default for LlmAwareConfig {
    fn default() -> Self {
        Self {
            target_utilisation: 0.9,
            interval: Duration::from_secs(1),
            rate_tau: Duration::from_secs(5),
            trend_window: Duration::from_secs(30),
            trend_deadband: 0.25,
            cold_start: Duration::from_secs(30),
            max_lead: 1.5,
            backlog_drain: Duration::from_secs(5),
            scale_down_window: Duration::from_secs(90),
            scale_down_step: Duration::from_secs(20),
            down_margin: 0.85,
            idle_to_zero: None,
            bounds: Bounds::default(),
        }
    }
}

/// Switchyard's LLM-aware recommender (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct LlmAware {
    config: LlmAwareConfig,
    work_per_request: Option<f64>,
    inverse_work: Option<f64>,
    capacity: Option<f64>,
    rate: Option<(f64, Instant)>,
    /// The smoothed rate over the trend window (one a decision: bounded by the window).
    rates: VecDeque<(Instant, f64)>,
    /// The demand over the scale-down window (one a decision: bounded by the window).
    demands: VecDeque<(Instant, f64)>,
    last_up: Option<Instant>,
    last_down: Option<Instant>,
    idle_since: Option<Instant>,
}

impl LlmAware {
    /// The recommender with `config`.
    pub fn new(config: LlmAwareConfig) -> Self {
        Self {
            config,
            work_per_request: None,
            inverse_work: None,
            capacity: None,
            rate: None,
            rates: VecDeque::new(),
            demands: VecDeque::new(),
            last_up: None,
            last_down: None,
            idle_since: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LlmAwareConfig {
        &self.config
    }

    fn smooth_rate(&mut self, now: Instant, raw: f64) -> f64 {
        let next = match self.rate {
            Some((r, at)) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                let w = (-dt / self.config.rate_tau.as_secs_f64().max(1e-9)).exp();
                r * w + raw * (1.0 - w)
            }
            None => raw,
        };
        self.rate = Some((next, now));
        next
    }

    /// The demand in replicas of work at `now`, or `None` while the capacity or the work per
    /// request is unknown.
    fn demand(&mut self, now: Instant, signals: &Signals) -> Option<f64> {
        if let Some(c) = signals.capacity_per_replica() {
            self.capacity = Some(c);
        }
        // A replica with exactly one request awaiting its first byte shows that request's work.
        // Such a snapshot is length-biased (a long prompt waits longer, so it is seen more
        // often, in proportion to its work), so the mean over arrivals is the harmonic mean of
        // the snapshots: an EWMA of 1 / work.
        for replica in &signals.replicas {
            if replica.awaiting_first_byte == 1 && replica.pending_work > 0 {
                let inverse = 1.0 / replica.pending_work as f64;
                self.inverse_work = Some(match self.inverse_work {
                    Some(v) => 0.95 * v + 0.05 * inverse,
                    None => inverse,
                });
            }
        }
        let awaiting = signals.awaiting_first_byte();
        if self.inverse_work.is_none() && awaiting > 0 {
            // Until then, the plain mean of the snapshot (biased high: an over-estimate).
            let sample = signals.pending_work() as f64 / awaiting as f64;
            self.work_per_request = Some(match self.work_per_request {
                Some(w) => 0.9 * w + 0.1 * sample,
                None => sample,
            });
        }
        if let Some(v) = self.inverse_work.filter(|v| *v > 0.0) {
            self.work_per_request = Some(1.0 / v);
        }
        let rate = self.smooth_rate(now, signals.arrival_rate.unwrap_or(0.0));
        let window = self.config.trend_window;
        while self.rates.front().is_some_and(|&(at, _)| now.saturating_duration_since(at) > window) {
            self.rates.pop_front();
        }
        self.rates.push_back((now, rate));
        let capacity = self.capacity?;
        let work = self.work_per_request?;
        let trend = match self.rates.front() {
            Some(&(at, old)) if now > at => ((rate - old)
                / now.saturating_duration_since(at).as_secs_f64().max(window.as_secs_f64()))
            .max(0.0),
            _ => 0.0,
        };
        let projected =
            (rate + trend * self.config.cold_start.as_secs_f64()).min(self.config.max_lead * rate);
        let backlog = signals.pending_work() as f64 / self.config.backlog_drain.as_secs_f64().max(1e-3);
        Some((projected * work + backlog) / capacity)
    }
}

impl Default for LlmAware {
    fn default() -> Self {
        Self::new(LlmAwareConfig::default())
    }
}

impl Recommender for LlmAware {
    fn name(&self) -> &'static str {
        "switchyard"
    }

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn recommend(&mut self, now: Instant, size: PoolSize, signals: Option<&Signals>) -> Recommendation {
        let c = self.config;
        let current = size.desired;
        let Some(signals) = signals else {
            return Recommendation::keep(current, "signals missing: keep");
        };
        let held = signals.held.unwrap_or(0);
        let arriving = signals.arrival_rate.unwrap_or(0.0) > 0.0;
        // Scale to zero, and back.
        let idle = held == 0 && !arriving && signals.in_flight() == 0;
        if !idle {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        if current == 0 {
            return if held > 0 || arriving {
                self.last_up = Some(now);
                Recommendation { desired: c.bounds.clamp(1), reason: "requests held: wake", metric: None }
            } else {
                Recommendation::keep(c.bounds.clamp(0), "scaled to zero")
            };
        }
        if let (Some(after), Some(since)) = (c.idle_to_zero, self.idle_since)
            && c.bounds.min == 0
            && now.saturating_duration_since(since) >= after
        {
            return Recommendation { desired: 0, reason: "idle: scale to zero", metric: Some(0.0) };
        }
        let Some(demand) = self.demand(now, signals) else {
            return Recommendation::keep(c.bounds.clamp(current), "capacity not learnt yet: keep");
        };
        let window = c.scale_down_window;
        // Keep the newest demand at or beyond the window: with decisions on a real clock (ticks a
        // little more or less than the interval apart), no sample is exactly `window` old, and
        // dropping every older one would leave the window never full.
        while self.demands.get(1).is_some_and(|&(at, _)| now.saturating_duration_since(at) >= window) {
            self.demands.pop_front();
        }
        self.demands.push_back((now, demand));
        let target = c.target_utilisation.max(1e-3);
        let needed = c.bounds.clamp((demand / target).ceil() as u32);
        if needed > current {
            self.last_up = Some(now);
            return Recommendation {
                desired: needed,
                reason: "scale up: demand over target",
                metric: Some(demand),
            };
        }
        let settled = |last: Option<Instant>, wait: Duration| {
            last.is_none_or(|at| now.saturating_duration_since(at) >= wait)
        };
        let full_window =
            self.demands.front().is_some_and(|&(at, _)| now.saturating_duration_since(at) >= window);
        let peak = self.demands.iter().map(|&(_, d)| d).fold(0.0, f64::max);
        let fits_fewer = ((peak / (target * c.down_margin)).ceil() as u32) < current;
        if current > c.bounds.min
            && fits_fewer
            && full_window
            && settled(self.last_up, window)
            && settled(self.last_down, c.scale_down_step)
        {
            self.last_down = Some(now);
            return Recommendation {
                desired: current - 1,
                reason: "scale down: one fewer fits",
                metric: Some(demand),
            };
        }
        Recommendation { desired: c.bounds.clamp(current), reason: "steady", metric: Some(demand) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::test_support::{pool, size};

    /// `n` replicas of 10,000 tokens a second, `rate` requests a second arriving, each request
    /// of 1,000 tokens, one awaiting its first byte on each replica.
    fn load(now: Instant, n: u32, rate: f64) -> Signals {
        let mut s = pool(now, n, 1, 0.3, 0);
        for r in &mut s.replicas {
            r.capacity_per_sec = Some(10_000.0);
            r.awaiting_first_byte = 1;
            r.pending_work = 1_000;
        }
        s.arrival_rate = Some(rate);
        s
    }

    /// The worked examples' settings: a 0.7 target, a 120 s scale-down window, 30 s steps.
    fn aware() -> LlmAware {
        LlmAware::new(LlmAwareConfig {
            target_utilisation: 0.7,
            scale_down_window: Duration::from_secs(120),
            scale_down_step: Duration::from_secs(30),
            bounds: Bounds::new(1, 20),
            ..LlmAwareConfig::default()
        })
    }

    /// Runs `seconds` of decisions at `rate`, the pool following every recommendation at once
    /// with `ready` of them ready; returns the last size.
    async fn run(a: &mut LlmAware, mut desired: u32, rate: f64, seconds: u32) -> u32 {
        for _ in 0..seconds {
            let now = Instant::now();
            desired = a.recommend(now, size(desired, desired), Some(&load(now, desired, rate))).desired;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        desired
    }

    #[tokio::test(start_paused = true)]
    async fn sizes_from_work_in_tokens_over_learnt_capacity() {
        // The worked example: 14 requests a second of 1,000 tokens on replicas of 10,000 tokens a
        // second is 1.4 replicas of work, plus 1,000 tokens waiting on each replica (drained in
        // 5 s: 0.02 a replica); at 70 % that is ceil(1.42·/0.7) = 3 replicas for a steady load.
        let mut a = aware();
        assert_eq!(run(&mut a, 3, 14.0, 60).await, 3);
        // Twice the load, steady: ceil(2.8·/0.7) = 5 (4.06 rounds up).
        let mut a = aware();
        assert_eq!(run(&mut a, 5, 28.0, 60).await, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn scales_up_on_the_trend_within_one_decision() {
        let mut a = aware();
        let d = run(&mut a, 3, 14.0, 60).await;
        // 1× → 5× in one second: the next decision asks for more.
        let now = Instant::now();
        let r = a.recommend(now, size(d, d), Some(&load(now, d, 70.0)));
        assert!(r.desired > d, "{r:?}");
        assert_eq!(r.reason, "scale up: demand over target");
    }

    #[tokio::test(start_paused = true)]
    async fn counts_replicas_still_starting() {
        // 4 replicas asked for, 2 ready and 2 starting, under 2.6 replicas of work: at 70 % that
        // needs 4, which are already on their way. A per-ready-replica average (what the HPA and
        // the KPA see) would double it.
        let mut a = aware();
        let mut desired = 4;
        for _ in 0..30 {
            let now = Instant::now();
            let signals = load(now, 2, 26.0);
            desired = a.recommend(now, PoolSize { desired, current: 4, ready: 2 }, Some(&signals)).desired;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(desired, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn down_slowly_one_at_a_time_after_the_window() {
        let mut a = aware();
        let d = run(&mut a, 6, 28.0, 30).await;
        assert_eq!(d, 6, "nothing lower within the window");
        // The load falls to a quarter: no scale-down before the 120 s window of demands is
        // full (90 s from here), then one replica at most every 30 s.
        let start = Instant::now();
        let mut desired = d;
        let mut downs = Vec::new();
        for _ in 0..400 {
            let now = Instant::now();
            let r = a.recommend(now, size(desired, desired), Some(&load(now, desired, 7.0)));
            if r.desired < desired {
                assert_eq!(r.desired, desired - 1, "one at a time");
                downs.push(now - start);
            }
            desired = r.desired;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(downs[0] >= Duration::from_secs(90), "first down {:?}", downs[0]);
        for pair in downs.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs(30), "{downs:?}");
        }
        // 7 requests a second is 0.7 replicas of work: it settles at ceil(0.7·/(0.7 × 0.85)) = 2.
        assert_eq!(desired, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn scales_down_on_decisions_a_little_more_than_an_interval_apart() {
        // Decisions on a real clock drift (1.003 s apart here): the window still fills.
        let mut a = aware();
        let mut desired = 6;
        for _ in 0..400 {
            let now = Instant::now();
            desired = a.recommend(now, size(desired, desired), Some(&load(now, desired, 7.0))).desired;
            tokio::time::advance(Duration::from_millis(1003)).await;
        }
        assert_eq!(desired, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_signals_and_unlearnt_capacity_never_scale_down() {
        let mut a = aware();
        for _ in 0..300 {
            let now = Instant::now();
            assert_eq!(a.recommend(now, size(5, 5), None).desired, 5);
            let mut unlearnt = pool(now, 5, 0, 0.0, 0);
            unlearnt.arrival_rate = Some(0.0);
            unlearnt.replicas[0].in_flight = 1;
            assert_eq!(a.recommend(now, size(5, 5), Some(&unlearnt)).desired, 5);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scales_to_zero_when_idle_and_wakes_on_a_held_request() {
        let mut a = LlmAware::new(LlmAwareConfig {
            target_utilisation: 0.7,
            bounds: Bounds::new(0, 4),
            idle_to_zero: Some(Duration::from_secs(60)),
            ..LlmAwareConfig::default()
        });
        let mut desired = 1;
        for _ in 0..61 {
            let now = Instant::now();
            desired = a.recommend(now, size(desired, desired), Some(&pool(now, desired, 0, 0.0, 0))).desired;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(desired, 0);
        let now = Instant::now();
        let mut empty = Signals::empty(now);
        assert_eq!(a.recommend(now, size(0, 0), Some(&empty)).desired, 0);
        empty.held = Some(3);
        assert_eq!(a.recommend(now, size(0, 0), Some(&empty)).desired, 1);
    }
}
