//! Switchyard's default recommender, LLM-aware: it sizes the pool from the work arriving in
//! tokens and the replicas' learnt capacity in tokens a second, not from CPU or request counts.
//!
//! # Formula
//!
//! Every second ([`LlmAwareConfig::interval`]), from the [`Signals`]:
//!
//! ```text
//! work rate         ω = EWMA (τ = 5 s) of work started a second (prompt tokens), from the
//!                   board's cumulative counters (Signals::work_rate)
//! capacity          c = median over ready replicas of slots × 10⁹ / no-load ns per token
//! trend             g = max(0, (ω now − ω trend_window ago) / trend_window)
//! projected rate    ω' = min(ω + max(0, g × cold_start − trend_deadband × ω), max_lead × ω)
//! drain             T = backlog_drain (5 s); max(backlog_drain, cold_start) while replicas start
//! demand            D = ω' / c  +  pending work / c / T                      (replicas of work)
//! needed            n = ceil(D / target_utilisation)
//! ```
//!
//! The work rate counts what arrives, not what a snapshot shows waiting, so `D` for a given load
//! is the same whether one replica or ten carry it. A source without the work counter (no
//! [`Signals::work_rate`]) gives `ω = λ × w` instead: the arrival rate `λ` (requests started a
//! second) times the work per request `w = 1 / EWMA of 1 / (pending work of a replica with one
//! request awaiting a first byte)`, the harmonic mean, which undoes the snapshot's length bias.
//! That estimate drifts with the pool's size (many lightly loaded replicas show a different
//! snapshot than one busy one), which is why the counter is preferred when there is one.
//!
//! - **Counts replicas still starting**: `n` is compared with the desired count (ready and
//!   starting), not with the ready ones, and `D` is the pool's total work, not a per-ready-replica
//!   average that a replica still loading its weights would inflate: while 4 replicas start for a
//!   burst, the recommender does not ask for 4 more.
//! - **Early on the trend**: the rate is projected one cold start ahead, so the replicas that a
//!   growing load will need are started before it arrives (capped at `max_lead` × today's rate).
//!   Only the part of the projected rise beyond `trend_deadband` (0.5) × today's rate counts: a
//!   slower rise is met when the rate itself crosses the target (the target's headroom and the
//!   backlog term carry the cold start); only a faster one starts replicas ahead of it. Counting
//!   every rise held the lab's Azure replay, whose load climbs for a minute at a time, a replica
//!   or two above its load for the whole climb (2,450 → 2,076 replica-s, SLO 1.0000 both;
//!   `reports/lab/burst.md`).
//! - **The backlog over the cold start while replicas start**: the backlog term asks for the
//!   replicas that drain the work waiting for a first byte within `backlog_drain` (5 s), which is
//!   what a pool with nothing on its way needs (a step: the next decision asks for the replicas
//!   the backlog needs on top of the rate). While replicas are starting it is drained within the
//!   cold start instead: a replica asked for now would be ready only in a cold start, by which
//!   time the replicas already on their way (counted) have drained a backlog that a late climb
//!   built. Sizing it over 5 s then kept asking for replicas that came ready after the peak: the
//!   lab's Azure replay asked for 10 replicas where the clairvoyant bound needs 7
//!   (`backlog_over_cold_start`; 1,821 → 1,732 replica-s, SLO 1.0000; the step's SLO and 1 s
//!   decision unchanged; `reports/lab/burst.md`).
//! - **Down slowly**: at most every `scale_down_step` (10 s), only when the demands of the last
//!   `scale_down_window` (60 s, two cold starts) fit in fewer replicas with a margin
//!   (`down_margin` 0.85 of the target utilisation), and not within that window after a
//!   scale-up; then to the count they fit in, not one replica at a time (the window already
//!   guards against flapping: stepping down one per 10 s held the lab's pools above what the
//!   window allowed for a minute after each burst, 1,888 → 1,821 replica-s on the Azure replay,
//!   1,987 → 1,648 on the spike, SLOs and direction changes unchanged). (A 90 s window and 20 s
//!   steps kept the lab's pools at their peak size for most of the two minutes after a burst:
//!   2,076 → 1,888 replica-s on the Azure replay, 2,584 → 1,987 on the spike, SLOs unchanged, no
//!   more direction changes.)
//!   "Fit" is judged on the window's 75th percentile (`down_quantile`), not its peak: a
//!   one-second demand carries a snapshot's backlog and a trend read off noise, and the peak of
//!   a window of them held the lab's pools a replica or two above their load
//!   (`reports/lab/burst.md`).
//! - **A big fall faster** (`fast_down`): when the demands of the last half cold start fit in
//!   two replicas or more fewer than the pool has (and at least a quarter of the scale-down
//!   window has passed with them, with no scale-up in it and no replica starting), the pool
//!   goes down to one more than they fit in at once, and again a `scale_down_step` later
//!   while the fall goes on; the last replica waits for the whole window. A steady load's noise
//!   moves the count it fits in by one, which still waits the window out (the flapping target
//!   holds); the end of a burst moves it by several, and the whole window held a pool of 8 for
//!   a minute where 3 did. On the lab's Azure replay: 1,731 → 1,596 replica-s (0.97 → 0.89 ×
//!   the fixed peak pool), spike 1,492 → 1,222, step 2,701 → 2,631, SLOs and `steady`
//!   unchanged; seeds 2-3 and a 15 s cold start alike, little with 60 and 90 s, where the
//!   falls come while replicas are still starting (`reports/lab/burst.md`). A third of a 60 s
//!   cold start instead of a half lost 15 % of the Azure replay's SLO: a replica let go was
//!   wanted back before one started in its place was ready. While replicas start, the demand
//!   drains the backlog over the cold start counting on them, so it does not cancel them.
//! - **min/max** from [`Bounds`]; with `min = 0` and `idle_to_zero` set, an idle pool (nothing in
//!   flight, nothing arriving, nothing held) scales to zero after that long, and the first
//!   request held in front of the pool ([`Signals::held`]) or arriving brings one replica back.
//!   The gateway holds requests in its queue within their deadlines meanwhile.
//! - **Missing signals** (no snapshot, or no capacity learnt yet) keep the count; they never lower it.
//!   A snapshot without any rate (neither [`Signals::arrival_rate`] nor [`Signals::work_rate`])
//!   is missing that signal, not a rate of zero: the backlog may still raise the count, nothing
//!   lowers it, and the pool is not idle (no scale to zero) on it.
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
//! defaults (cold start 30 s, backlog drained within 5 s, 30 s trend window with a 0.5
//! deadband, 60 s scale-down window, 10 s scale-down step) are the lab's; `reports/lab/burst.md`
//! shows what they give against the HPA, the KPA and llm-d's autoscaler, and what a higher
//! target costs (on the lab's Azure replay 0.8 of a replica kept the SLO at 0.9993 but flapped
//! on its steady load; 0.85 lost the SLO).

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
    /// A projected rise counts only beyond this share of the rate (0.5).
    pub trend_deadband: f64,
    /// A replica's cold start: how far ahead the trend is projected (30 s).
    pub cold_start: Duration,
    /// The projected rate is at most this many times today's (1.5).
    pub max_lead: f64,
    /// Work waiting for a first byte should be worked off within this (5 s).
    pub backlog_drain: Duration,
    /// While replicas are starting, size for the backlog drained within the cold start instead
    /// of `backlog_drain` (true): a replica asked for now is ready only then, and those on their
    /// way are already counted.
    pub backlog_over_cold_start: bool,
    /// A scale-down needs the demands of this window to fit in fewer replicas (60 s).
    pub scale_down_window: Duration,
    /// At most one scale-down per this (10 s), to the count the window's demands fit in.
    pub scale_down_step: Duration,
    /// A scale-down plans for this share of the target utilisation (0.85).
    pub down_margin: f64,
    /// A fall of two replicas or more goes down within half a cold start (true): when the demands
    /// of the last `max(cold_start / 2, scale_down_window / 4)` (at most `scale_down_window`;
    /// at least half of its decisions with a finite demand) fit in at least two replicas fewer
    /// than the pool has, no scale-up came within that time and no replica is still starting,
    /// it goes down to one more than they fit in, without waiting for the whole
    /// `scale_down_window` (again after `scale_down_step` while the fall goes on); the last
    /// replica waits for the window.
    pub fast_down: bool,
    /// Which quantile of the window's one-second demands must fit in fewer replicas (0.75):
    /// the noisiest quarter of the samples (a snapshot's backlog, a trend read off noise) does
    /// not hold the pool up; 1.0 asks the window's peak to fit.
    pub down_quantile: f64,
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
            trend_deadband: 0.5,
            cold_start: Duration::from_secs(30),
            max_lead: 1.5,
            backlog_drain: Duration::from_secs(5),
            backlog_over_cold_start: true,
            scale_down_window: Duration::from_secs(60),
            scale_down_step: Duration::from_secs(10),
            down_margin: 0.85,
            fast_down: true,
            down_quantile: 0.75,
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
    /// Whether the source has given a work rate (from then on the smoothed rate is in work units).
    counted_work: bool,
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
            counted_work: false,
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

    /// The replicas the demands of the fast way down's window (`fast_down_window`) fit in, with
    /// the scale-down's margin and quantile; `None` before that much has been seen, within it
    /// after a scale-up, or when fewer than half its decisions read a finite demand (a gap in
    /// the signals, a capacity reported as zero): a few samples do not decide a fall.
    fn fit_over_half_a_cold_start(&self, now: Instant) -> Option<u32> {
        let c = &self.config;
        let short = fast_down_window(c);
        let since = |at: Instant| now.saturating_duration_since(at);
        let seen = self.demands.front().is_some_and(|&(at, _)| since(at) >= short);
        let settled = self.last_up.is_none_or(|at| since(at) >= short);
        if !seen || !settled {
            return None;
        }
        let recent: Vec<f64> = self
            .demands
            .iter()
            .filter(|&&(at, d)| since(at) < short && d.is_finite())
            .map(|&(_, d)| d)
            .collect();
        let decisions = short.as_secs_f64() / c.interval.as_secs_f64().max(1e-3);
        if recent.is_empty() || (recent.len() as f64) < decisions / 2.0 {
            return None;
        }
        let high = window_quantile(recent.into_iter(), c.down_quantile);
        Some((high / (c.target_utilisation.max(1e-3) * c.down_margin)).ceil() as u32)
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
    /// request is unknown; `starting`: replicas are starting (the backlog term is then drained
    /// within the cold start).
    fn demand(&mut self, now: Instant, signals: &Signals, starting: bool) -> Option<f64> {
        let drain = if starting && self.config.backlog_over_cold_start {
            self.config.backlog_drain.max(self.config.cold_start)
        } else {
            self.config.backlog_drain
        };
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
        if signals.work_rate.is_some() && !self.counted_work {
            // From requests a second to work a second: what was smoothed is in other units.
            self.counted_work = true;
            self.rate = None;
            self.rates.clear();
        }
        let arrival = signals.arrival_rate.unwrap_or(0.0);
        if rate_missing(signals) {
            // Missing, not zero: the last smoothed rate stands (the caller lowers nothing on it).
            let rate = self.rate.map_or(0.0, |(r, _)| r);
            let work = if self.counted_work { 1.0 } else { self.work_per_request.unwrap_or(0.0) };
            let backlog = signals.pending_work() as f64 / self.config.backlog_drain.as_secs_f64().max(1e-3);
            return Some((rate * work + backlog) / self.capacity?);
        }
        let raw = if self.counted_work {
            // A gap in the counter (a source that lost it) falls back to the estimate.
            match signals.work_rate {
                Some(rate) => rate,
                None => arrival * self.work_per_request.unwrap_or(0.0),
            }
        } else {
            arrival
        };
        let rate = self.smooth_rate(now, raw);
        let window = self.config.trend_window;
        while self.rates.front().is_some_and(|&(at, _)| now.saturating_duration_since(at) > window) {
            self.rates.pop_front();
        }
        self.rates.push_back((now, rate));
        let capacity = self.capacity?;
        // The smoothed rate is in work units already, or in requests to multiply by their work.
        let work = if self.counted_work { 1.0 } else { self.work_per_request? };
        let trend = match self.rates.front() {
            Some(&(at, old)) if now > at => ((rate - old)
                / now.saturating_duration_since(at).as_secs_f64().max(window.as_secs_f64()))
            .max(0.0),
            _ => 0.0,
        };
        // Only a rise beyond the deadband counts: the target's headroom carries a slower one.
        let rise = trend * self.config.cold_start.as_secs_f64() - self.config.trend_deadband * rate;
        let projected = (rate + rise.max(0.0)).min(self.config.max_lead * rate);
        let backlog = signals.pending_work() as f64 / drain.as_secs_f64().max(1e-3);
        Some((projected * work + backlog) / capacity)
    }
}

/// The `q` quantile (nearest rank) of `values`; 0 when there are none.
fn window_quantile(values: impl Iterator<Item = f64>, q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The window of the fast way down ([`LlmAwareConfig::fast_down`]): half a cold start, so that
/// a replica let go is not wanted back before one started in its place could be ready (a third
/// lost requests in the lab's Azure replay with a 60 s cold start), and at least a quarter of
/// the scale-down window, the one sized against a steady load's noise; at most that window.
fn fast_down_window(c: &LlmAwareConfig) -> Duration {
    (c.cold_start / 2).max(c.scale_down_window / 4).min(c.scale_down_window)
}

/// How many replicas fewer than the pool the fast way down's window must fit in for the pool to go
/// down before the whole scale-down window has passed (see [`LlmAwareConfig::fast_down`]): a
/// steady load's noise moves the count it fits in by one.
const FAST_DOWN_FALL: u32 = 2;

/// Whether the snapshot has no rate at all (neither requests nor work started a second).
fn rate_missing(signals: &Signals) -> bool {
    signals.arrival_rate.is_none() && signals.work_rate.is_none()
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
        // A missing rate is neither arriving nor idle.
        let arriving = signals.arrival_rate.or(signals.work_rate).map(|r| r > 0.0);
        // Scale to zero, and back.
        let idle = held == 0 && arriving == Some(false) && signals.in_flight() == 0;
        if !idle {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        if current == 0 {
            return if held > 0 || arriving == Some(true) {
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
        let Some(demand) = self.demand(now, signals, size.starting() > 0) else {
            return Recommendation::keep(c.bounds.clamp(current), "capacity not learnt yet: keep");
        };
        let target = c.target_utilisation.max(1e-3);
        if rate_missing(signals) {
            // As the HPA with a missing metric: up if the backlog alone asks for it, never down.
            let needed = c.bounds.clamp((demand / target).ceil() as u32);
            if needed > current {
                self.last_up = Some(now);
                return Recommendation {
                    desired: needed,
                    reason: "scale up: backlog over target",
                    metric: Some(demand),
                };
            }
            return Recommendation::keep(c.bounds.clamp(current), "arrival rate missing: keep");
        }
        let window = c.scale_down_window;
        // Keep the newest demand at or beyond the window: with decisions on a real clock (ticks a
        // little more or less than the interval apart), no sample is exactly `window` old, and
        // dropping every older one would leave the window never full.
        while self.demands.get(1).is_some_and(|&(at, _)| now.saturating_duration_since(at) >= window) {
            self.demands.pop_front();
        }
        self.demands.push_back((now, demand));
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
        let high = window_quantile(self.demands.iter().map(|&(_, d)| d), c.down_quantile);
        let fits = (high / (target * c.down_margin)).ceil() as u32;
        // A window without one finite demand (a capacity reported as zero) tells nothing.
        let read = self.demands.iter().any(|&(_, d)| d.is_finite());
        if current > c.bounds.min
            && read
            && fits < current
            && full_window
            && settled(self.last_up, window)
            && settled(self.last_down, c.scale_down_step)
        {
            self.last_down = Some(now);
            return Recommendation {
                desired: c.bounds.clamp(fits),
                reason: "scale down: fewer fit",
                metric: Some(demand),
            };
        }
        if c.fast_down
            && current > c.bounds.min
            && size.starting() == 0
            && settled(self.last_down, c.scale_down_step)
            && let Some(fits) = self.fit_over_half_a_cold_start(now)
            && fits.saturating_add(FAST_DOWN_FALL) <= current
        {
            self.last_down = Some(now);
            return Recommendation {
                desired: c.bounds.clamp(fits + 1),
                reason: "scale down: many fewer fit",
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
            // The tests of the scale-down window; the fast way down has its own.
            fast_down: false,
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

    /// [`run`] on a fresh recommender with `config`.
    async fn fresh_run(config: LlmAwareConfig, desired: u32, rate: f64, seconds: u32) -> u32 {
        run(&mut LlmAware::new(config), desired, rate, seconds).await
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

    /// `n` replicas of 10,000 tokens a second carrying 14,000 tokens a second of work started
    /// (the board's counter), with `pending` tokens awaiting a first byte on each, in one request.
    fn counted(now: Instant, n: u32, pending: u64) -> Signals {
        let mut s = load(now, n, 14.0);
        for r in &mut s.replicas {
            r.pending_work = pending;
            r.awaiting_first_byte = u32::from(pending > 0);
        }
        s.work_rate = Some(14_000.0);
        s
    }

    #[tokio::test(start_paused = true)]
    async fn the_demand_from_the_work_counter_does_not_grow_with_the_pool() {
        // The same 14,000 tokens a second arriving, read by two recommenders: one on a pool of 2
        // busy replicas (1,000 tokens waiting on each), one on a pool of 8 lightly loaded ones
        // (100 tokens waiting on each: the same work spread thinner). Both read 1.4 replicas of
        // work plus the waiting work drained in 5 s: 2,000 / 10,000 / 5 = 0.04 and 800 /
        // 10,000 / 5 = 0.016 replicas.
        let (mut small, mut large) = (aware(), aware());
        let (mut d2, mut d8) = (None, None);
        for _ in 0..60 {
            let now = Instant::now();
            d2 = small.recommend(now, size(2, 2), Some(&counted(now, 2, 1_000))).metric;
            d8 = large.recommend(now, size(8, 8), Some(&counted(now, 8, 100))).metric;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let (d2, d8) = (d2.expect("a demand"), d8.expect("a demand"));
        assert!((d2 - 1.44).abs() < 1e-6, "{d2}");
        assert!((d8 - 1.416).abs() < 1e-6, "{d8}");
        // Without the counter, the estimate from snapshots (14 requests a second × the work one
        // request awaiting a first byte shows) reads ten times less work on the larger pool.
        let mut snapshots = aware();
        let mut d = None;
        for _ in 0..60 {
            let now = Instant::now();
            let mut s = counted(now, 8, 100);
            s.work_rate = None;
            d = snapshots.recommend(now, size(8, 8), Some(&s)).metric;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!((d.expect("a demand") - 0.156).abs() < 1e-6, "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_that_grows_under_the_same_work_comes_back_down() {
        // 14,000 tokens a second need ceil(1.4·/0.7) = 3 replicas. A pool of 8 (after a burst)
        // under that load reads the same demand as a pool of 3 and steps down to 3, not to a
        // count that its own size props up.
        let mut a = aware();
        let mut desired = 8;
        for _ in 0..600 {
            let now = Instant::now();
            let pending = 3_000 / u64::from(desired);
            desired = a.recommend(now, size(desired, desired), Some(&counted(now, desired, pending))).desired;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(desired, 3);
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

    /// The replicas asked for, second by second, while the rate climbs from 14 to `to` requests
    /// a second over 30 s (after 60 s at 14 on 3 replicas) and then holds for 60 s.
    async fn on_a_climb(config: LlmAwareConfig, to: f64) -> Vec<u32> {
        let mut a = LlmAware::new(config);
        let mut desired = 3;
        let mut asked = Vec::new();
        for second in 0..150u32 {
            let rate = 14.0 + (to - 14.0) * (f64::from(second.saturating_sub(60)) / 30.0).min(1.0);
            let now = Instant::now();
            desired = a.recommend(now, size(desired, desired), Some(&load(now, desired, rate))).desired;
            asked.push(desired);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        asked
    }

    /// The most replicas asked for on that climb.
    async fn peak_on_a_climb(config: LlmAwareConfig, to: f64) -> u32 {
        on_a_climb(config, to).await.into_iter().max().unwrap_or(0)
    }

    /// The second at which that climb first has `n` replicas asked for.
    async fn first_at(config: LlmAwareConfig, to: f64, n: u32) -> Option<usize> {
        on_a_climb(config, to).await.iter().position(|&d| d >= n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_climb_is_not_projected_a_fast_one_is() {
        // 14 → 18 requests a second in 30 s (+29 % within a cold start): 1.8 replicas of work
        // plus 0.06 of backlog fit in 3 at 70 % (2.66 → 3). Projected a cold start ahead, every
        // rise would read about 2.2 and start a fourth replica for a load that never needs it;
        // the deadband (half the rate) leaves that rise to the target's headroom.
        let base = aware().config;
        assert_eq!(peak_on_a_climb(base, 18.0).await, 3, "the default does not project +29 %");
        assert_eq!(
            peak_on_a_climb(LlmAwareConfig { trend_deadband: 0.0, ..base }, 18.0).await,
            4,
            "projecting every rise asks for a fourth"
        );
        // 14 → 35 in 30 s (2.5 ×): once the rate has doubled over the trend window the rise is
        // beyond the deadband and projected, so the sixth replica (ceil(3.56 / 0.7)) is asked for
        // earlier than on the rate alone (91 s vs 96 s; projecting every rise: 79 s).
        let ahead = first_at(base, 35.0, 6).await.expect("6 on the fast climb");
        let on_rate =
            first_at(LlmAwareConfig { max_lead: 1.0, ..base }, 35.0, 6).await.expect("6 on the rate");
        assert!(ahead < on_rate, "a fast climb is still met ahead: {ahead} vs {on_rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_burst_the_pool_goes_down_to_what_fits_once_the_window_has_passed() {
        // 8 replicas (what a burst left) under 0.7 replicas of work, which fits 2 (0.86 with the
        // backlog term over 8 replicas, at 0.7 × 0.85: 1.45 → 2). Nothing goes within the 60 s
        // window; then the pool goes to 2 in one decision. Stepping down one replica per 10 s
        // (the former rule) would still hold 7 at 61 s and 2 only at 110 s. (Without the fast
        // way down, below.)
        let base = LlmAwareConfig { target_utilisation: 0.7, fast_down: false, ..LlmAwareConfig::default() };
        let mut a = LlmAware::new(base);
        assert_eq!(run(&mut a, 8, 7.0, 60).await, 8, "nothing within the window");
        let mut a = LlmAware::new(base);
        assert_eq!(run(&mut a, 8, 7.0, 61).await, 2, "then down to what the window fits");
        let mut a = LlmAware::new(base);
        assert_eq!(run(&mut a, 8, 7.0, 300).await, 2, "and it stays there");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fall_of_two_replicas_or_more_goes_down_within_half_a_cold_start() {
        // As above, 8 replicas under what fits in 2. The last 15 s (half the 30 s cold start)
        // fit in 6 fewer: the pool goes to 3, one more than they fit in, at 15 s, and to 2 once
        // the whole window has passed.
        let base = LlmAwareConfig { target_utilisation: 0.7, ..LlmAwareConfig::default() };
        assert!(base.fast_down, "on by default");
        assert_eq!(fresh_run(base, 8, 7.0, 15).await, 8, "nothing within half a cold start");
        assert_eq!(fresh_run(base, 8, 7.0, 16).await, 3, "then to one more than the fall fits in");
        assert_eq!(fresh_run(base, 8, 7.0, 61).await, 2, "the rest once the window has passed");
        // Half of a 60 s cold start is 30 s.
        let slow_start = LlmAwareConfig { cold_start: Duration::from_secs(60), ..base };
        assert_eq!(fresh_run(slow_start, 8, 7.0, 30).await, 8);
        assert_eq!(fresh_run(slow_start, 8, 7.0, 31).await, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fall_of_one_replica_waits_for_the_whole_window() {
        // 3 replicas under what fits in 2 (0.76 replicas of work at 0.7 × 0.85): a steady load's
        // noise moves the count by one, so the pool waits out the 60 s window.
        let base = LlmAwareConfig { target_utilisation: 0.7, ..LlmAwareConfig::default() };
        assert_eq!(fresh_run(base, 3, 7.0, 60).await, 3);
        assert_eq!(fresh_run(base, 3, 7.0, 61).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scale_up_holds_the_fast_way_down_for_half_a_cold_start() {
        // 2 replicas under what fits in 2, then one second with 100,000 tokens waiting (2
        // replicas of work drained within 5 s): the pool goes to 4. The last 15 s fit in 2
        // (one sample of 15 is not their 75th percentile), but the scale-up holds the pool for
        // half a cold start after it.
        let base = LlmAwareConfig { target_utilisation: 0.7, ..LlmAwareConfig::default() };
        let mut a = LlmAware::new(base);
        assert_eq!(run(&mut a, 2, 7.0, 20).await, 2);
        let now = Instant::now();
        let mut blip = load(now, 2, 7.0);
        for r in &mut blip.replicas {
            r.awaiting_first_byte = 2;
            r.pending_work = 50_000;
        }
        let up = a.recommend(now, size(2, 2), Some(&blip)).desired;
        assert_eq!(up, 4);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(run(&mut a, up, 7.0, 14).await, up, "within half a cold start of the scale-up");
        assert_eq!(run(&mut a, up, 7.0, 1).await, 3, "then the fall goes down");
    }

    /// `n` replicas of 10,000 tokens a second carrying 26,000 tokens a second of work started
    /// (2.6 replicas of work), with `backlog` tokens awaiting a first byte spread over `ready` of
    /// them (two requests each, so the work per request is not learnt from them).
    fn with_backlog(now: Instant, ready: u32, backlog: u64) -> Signals {
        let mut s = load(now, ready, 26.0);
        for r in &mut s.replicas {
            r.awaiting_first_byte = if backlog > 0 { 2 } else { 0 };
            r.pending_work = backlog / u64::from(ready);
        }
        s.work_rate = Some(26_000.0);
        s
    }

    /// What the recommender asks for a pool of `size` when, after 30 s of 2.6 replicas of work
    /// (4 replicas at 70 %), 15,000 tokens wait for a first byte.
    async fn asked_with_a_backlog(config: LlmAwareConfig, size: PoolSize) -> u32 {
        let mut a = LlmAware::new(config);
        for _ in 0..30 {
            let now = Instant::now();
            let r = a.recommend(now, size, Some(&with_backlog(now, size.ready, 0)));
            assert_eq!(r.desired, 4, "{r:?}");
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let now = Instant::now();
        a.recommend(now, size, Some(&with_backlog(now, size.ready, 15_000))).desired
    }

    #[tokio::test(start_paused = true)]
    async fn while_replicas_start_the_backlog_is_drained_over_the_cold_start() {
        // 15,000 tokens waiting, drained within 5 s, are 0.3 replicas of work on top of 2.6:
        // ceil(2.9 / 0.7) = 5. With 2 of the 4 replicas still starting, a fifth asked for now
        // would be ready in 30 s, after the two on their way; over the 30 s cold start the
        // backlog is 0.05 replicas of work: ceil(2.65 / 0.7) = 4.
        let base = aware().config;
        let starting = PoolSize { desired: 4, current: 4, ready: 2 };
        assert_eq!(asked_with_a_backlog(base, starting).await, 4, "those starting drain it");
        let former = LlmAwareConfig { backlog_over_cold_start: false, ..base };
        assert_eq!(asked_with_a_backlog(former, starting).await, 5, "over 5 s it asks for a fifth");
        // With nothing starting the backlog is drained within 5 s, as after a step.
        assert_eq!(asked_with_a_backlog(base, size(4, 4)).await, 5, "nothing on its way: a fifth");
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
    async fn down_only_after_the_window_and_a_step_apart() {
        let mut a = aware();
        let d = run(&mut a, 6, 28.0, 30).await;
        assert_eq!(d, 6, "nothing lower within the window");
        // The load falls to a quarter: no scale-down before the 120 s window of demands is
        // full (90 s from here), then at most one scale-down every 30 s, never below what the
        // load needs.
        let start = Instant::now();
        let mut desired = d;
        let mut downs = Vec::new();
        for _ in 0..400 {
            let now = Instant::now();
            let r = a.recommend(now, size(desired, desired), Some(&load(now, desired, 7.0)));
            if r.desired < desired {
                assert!(r.desired >= 2, "{r:?}");
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
    async fn a_noisy_tenth_of_the_samples_does_not_hold_the_pool_up() {
        // 0.7 replicas of work, and one second in ten a snapshot shows a backlog of 10,000 tokens
        // a replica (awaiting 2, so the work per request is not learnt from it): that second's
        // demand is about 1.3 replicas, below what asks for more than 2 but above what lets 3
        // become 2 if the window's peak must fit.
        async fn settle(config: LlmAwareConfig) -> u32 {
            let mut a = LlmAware::new(config);
            let mut desired = 3;
            for second in 0..400u32 {
                let now = Instant::now();
                let mut signals = load(now, desired, 7.0);
                if second % 10 == 9 {
                    for r in &mut signals.replicas {
                        r.awaiting_first_byte = 2;
                        r.pending_work = 10_000;
                    }
                }
                let r = a.recommend(now, size(desired, desired), Some(&signals));
                assert!(r.desired <= 3, "second {second}: a noisy sample scaled up to {}", r.desired);
                desired = r.desired;
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            desired
        }
        let base = aware().config;
        assert_eq!(settle(base).await, 2, "the 75th percentile fits in 2");
        assert_eq!(settle(LlmAwareConfig { down_quantile: 1.0, ..base }).await, 3, "the peak does not");
    }

    #[test]
    fn the_window_quantile_is_the_nearest_rank() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(window_quantile(v.into_iter(), 1.0), 5.0);
        assert_eq!(window_quantile(v.into_iter(), 0.75), 4.0);
        assert_eq!(window_quantile(v.into_iter(), 0.0), 1.0);
        assert_eq!(window_quantile(v.into_iter(), f64::NAN), 5.0, "a bad quantile is the peak");
        assert_eq!(window_quantile(std::iter::empty(), 0.75), 0.0);
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

    /// Runs `seconds` of decisions over replicas reporting a capacity of zero and no work (every
    /// demand 0 / 0), the pool following each at once; returns the last size.
    async fn run_without_capacity(a: &mut LlmAware, mut desired: u32, seconds: u32) -> u32 {
        for _ in 0..seconds {
            let now = Instant::now();
            let mut s = counted(now, desired, 0);
            s.work_rate = Some(0.0);
            for r in &mut s.replicas {
                r.capacity_per_sec = Some(0.0);
            }
            desired = a.recommend(now, size(desired, desired), Some(&s)).desired;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        desired
    }

    #[tokio::test(start_paused = true)]
    async fn a_capacity_of_zero_never_scales_down() {
        // Replicas reporting a capacity of zero and no work: every demand is 0 / 0, not a
        // figure; a scale-down to what "fits" would take the pool to its minimum at once.
        assert_eq!(run_without_capacity(&mut aware(), 5, 200).await, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fast_way_down_reads_only_a_window_of_finite_demands() {
        // 8 replicas under 4 replicas of work (fits 7: no fall of two), then the replicas report
        // a capacity of zero and no work (as in `a_capacity_of_zero_never_scales_down`): every
        // demand is 0 / 0, not a figure, and the pool is not cut to its minimum once the
        // finite ones have left the window.
        let base = LlmAwareConfig { target_utilisation: 0.7, ..LlmAwareConfig::default() };
        let mut a = LlmAware::new(base);
        assert_eq!(run(&mut a, 8, 40.0, 20).await, 8);
        assert_eq!(run_without_capacity(&mut a, 8, 30).await, 8, "no finite demand, no fall");
        // A gap in the signals: the first demands after it do not decide a fall on their own;
        // half the window's decisions (8 of 15) do.
        let mut a = LlmAware::new(base);
        assert_eq!(run(&mut a, 8, 40.0, 20).await, 8);
        for _ in 0..20 {
            assert_eq!(a.recommend(Instant::now(), size(8, 8), None).desired, 8);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(run(&mut a, 8, 7.0, 7).await, 8, "7 demands after the gap");
        assert_eq!(run(&mut a, 8, 7.0, 1).await, 3, "the 8th");
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
