//! What one endpoint can take at once, learnt from its answers: its no-load time per unit of work
//! and its slots (how many requests it serves at once before a new one has to wait).
//!
//! Two kinds of replica sit behind the balancer. An LLM engine prefills prompts one after
//! another: a new prompt's time to first byte is the work queued ahead of it plus its own, times
//! the engine's time per unit of work, so its latency grows with the very first request ahead of
//! it (one slot). A classic server runs `k` requests in parallel at a near fixed time each and
//! queues the rest: its latency is flat up to `k` requests at once and grows by a whole service
//! time per `k` queued after that (`k` slots). Both fit one model:
//!
//! ```text
//! time to first byte ≈ unit × (work ahead + work) / min(slots, requests ahead + 1)
//! ```
//!
//! (the backlog is worked off `slots` requests at a time, never more at once than there are
//! requests). With one slot it is a serial queue; with `k` slots and every request one unit it is
//! `unit × max(1, (n + 1) / k)` for `n` requests ahead, the fluid form of `⌈(n + 1) / k⌉`.
//!
//! # How the slots are learnt
//!
//! From each first byte: its time `t`, its own work `w`, and the requests (`n`) and work (`A`)
//! that awaited a first byte on the endpoint when it was sent, all of which the balancer tracks
//! for least response time already (no second count):
//!
//! - the **no-load times** are the fastest answers sent while nothing awaited a first byte
//!   (`n = 0`), as TCP Vegas keeps its base RTT: `u₀`, the smallest `t / w` (per unit of work),
//!   and `r₀`, the smallest `t` (per request), each a [`WindowedMin`] over the last `τ` (the
//!   speed's time constant, 30 s by default), so that a replica that truly slows down is
//!   followed within `τ`. Delays on a loaded machine (a process waiting for a core) only add to
//!   a time; a mean of the no-load answers grows with them (on a machine with a load average of
//!   11 a 20 ms server measured 32-43 ms), a minimum does not;
//! - every request takes at least `r₀` and at least `u₀` per unit of its work: a request of `w`
//!   units at least `τ(w) = max(r₀, u₀ × w) = u₀ × max(w, ω)`, with `ω = r₀ ÷ u₀` the **least
//!   work a request counts for** ([`CapacityEstimate::min_request_work`]). An LLM engine's time
//!   grows with the prompt, so its `ω` is about its shortest prompt (plus what a step costs
//!   whatever its size); a classic server's does not, so its `u₀` is its time over the largest
//!   request it saw and `ω` that largest size: every request counts alike, whatever the size it
//!   carries. `ω` so computed follows the largest request seen at no load, and a larger one
//!   seen later counts for its size; so every request counts for [`PER_REQUEST_WORK`], far
//!   above any size, until the no-load answers show that the time grows with the size (a
//!   least-squares line through them, `SizeFit`, judged from [`FIT_SAMPLES`] answers on: the
//!   work explains more than [`GROWS`] of the mean time; back to counting per request under
//!   [`FLAT_IN_WORK`]). Counting per request first is the safe side: an LLM engine counted so
//!   for its first few no-load answers is costed as a queue of requests, roughly; a classic
//!   server counted by sizes it ignores looks cheap for short requests and dear for long ones
//!   at random (in lab `hetero-parallel` with the bench's sizes and delays, p99 70 ms when the
//!   sizes counted until the fit judged, 17 ms counting per request first, both with the brake
//!   then weighing only requests past their first byte). An endpoint added
//!   to a pool whose judged endpoints mostly count the work starts counting it too
//!   ([`CapacityEstimate::set_counting_prior`], set by the balancer): a replica added to a
//!   pool of LLM engines by an autoscaler is costed by its prompts' sizes from its first
//!   answer (in lab `burst`, costed per request for its first answers, new replicas were
//!   misjudged while the load rose and the Azure replay's SLO fell from 1.000 to 0.996). So
//!   does an endpoint whose replica's load report counts its prefill backlog in prompt tokens
//!   (ORCA's named metric `prefill_backlog_tokens`, which Switchyard's workers send), from
//!   that report on, until its own answers judge
//!   ([`EndpointState::record_report`](crate::EndpointState::record_report)): a balancer among many
//!   sends a slow replica too few requests for its no-load answers to judge (in lab `herd`,
//!   32 balancers, the two slow replicas were costed per request most of the run). The
//!   sizes of the requests ahead are not kept one by one, so `n` requests of `A`
//!   units in all count for `max(A, n × ω)`, and one slot works them off and this one in at least
//!   `serial = u₀ × (max(A, n × ω) + max(w, ω))`. The costs of least response time and
//!   load-report count the work the same way ([`request_work`], [`work_ahead`]);
//! - an answer with at least its own work ahead (`max(A, n × ω) ≥ max(w, ω)`) shows how many
//!   requests the endpoint worked on at once: `implied = serial / t`, clamped to `[1, n + 1]`.
//!   One slot answers in `serial` (implied 1); `k` slots answer as at no load while `n + 1 ≤ k`
//!   (implied `n + 1`: the endpoint has at least that many) and in `serial / k` beyond
//!   (implied `k`).
//!   - If the answer was as fast as at no load (implied ≥ [`FLAT`] × (n + 1)), it is a lower
//!     bound: the estimate moves towards `n + 2` when that is above it, never down, so that its
//!     whole part reaches `n + 1` (moving towards `n + 1` it would only near it from below,
//!     and an endpoint learnt at one slot would need answers at three at once to show two,
//!     which a policy that costs it as one slot seldom sends it: it stayed at one slot, with
//!     a seventh of the calls, in a bench run of 2026-12-01);
//!   - if it was clearly slower (implied < [`GROWN`] × (n + 1)), and had enough ahead for one
//!     slot and many to predict clearly different times (`max(A, n × ω) ≥ WORK_AHEAD ×
//!     max(w, ω)`, [`WORK_AHEAD`]), latency grew, and the slots move towards `implied`, up or
//!     down;
//!   - in between it is within a real process's jitter and teaches nothing. Without that band
//!     (before 2026-12-01) every answer a timer fired late on pulled the slots towards the
//!     concurrency the endpoint happened to be given, while only answers above the estimate
//!     could raise it: a server of 8 slots at 20 ms, given 2 to 6 requests at once, was learnt
//!     with 3 or 4.
//!
//!   A lower bound moves the estimate [`GAIN`] of the way, a growth [`GROWN_GAIN`] of it (an
//!   answer slower than at no load is direct evidence; a fast one may be luck, such as an LLM
//!   engine prefilling two short prompts in one step). The estimate starts at 1 and never goes
//!   below. The policies use its whole part ([`CapacityEstimate::slots`]), so an LLM engine
//!   whose estimate wavers between 1 and 2 is costed as the serial queue it mostly is, and a
//!   server of `k` slots, flat up to `k` and clearly slower from about `1.25 k` on, settles
//!   between `k` and `k + 1`.
//!
//! Against the fastest no-load answers, noise can only make an answer look slower, so `implied`
//! errs low: on a noisy machine the slots are learnt below the truth (a server is taken to queue
//! earlier than it does), hardly ever above it, and a slow replica is not credited with room it
//! does not have. Noise that keeps answers above [`GROWN`]'s share does not move them at all, and
//! the band widens with the spread of the endpoint's own no-load answers (their mean plus
//! [`SPREAD_DEVIATIONS`] mean deviations above `τ(w)`): on a loaded machine, where a 20 ms
//! server's answers come tens of milliseconds late, only an answer later than its no-load
//! answers ever are shows fewer slots. The band only keeps the estimate from moving down; what
//! raises it is still an answer as fast as the fastest.
//!
//! This is the knee Gradient2 and Vegas look for (the concurrency at which latency leaves its
//! no-load value), read off the same samples, without a limit to enforce or a setting to make.

use std::time::Duration;

use tokio::time::Instant;

use crate::windowed_min::WindowedMin;

/// An answer at least this share of `n + 1` implied slots is "as fast as at no load".
pub const FLAT: f64 = 0.95;
/// How far the slots move up towards `n + 2` after one answer as fast as at no load.
pub const GAIN: f64 = 0.03125;
/// A slower answer teaches the slots only if one slot would take at least `1 + WORK_AHEAD`
/// times its own no-load time to answer it: at least this many times its own work awaited a
/// first byte ahead of it (on an endpoint whose time grows with the work), or this many requests
/// did. A flat answer teaches them with its own work ahead.
pub const WORK_AHEAD: f64 = 2.0;
/// How far the slots move towards the implied value after one answer slower than at no load.
pub const GROWN_GAIN: f64 = 0.125;
/// An answer below this share of `n + 1` implied slots shows that latency grew; one between
/// this and [`FLAT`] is within the jitter of a real process (a timer that fires on the next
/// millisecond, a thread that waits for a core) and teaches nothing. Where the endpoint's own
/// no-load answers spread wider ([`SPREAD_DEVIATIONS`]), the band widens with them.
pub const GROWN: f64 = 0.8;
/// The weight of one no-load answer in the EWMAs of the no-load spread.
pub const SPREAD_GAIN: f64 = 0.0625;
/// An answer is only taken to show that latency grew if it is slower than its no-load time by
/// more than the no-load answers' mean spread plus this many mean deviations.
pub const SPREAD_DEVIATIONS: f64 = 3.0;

/// One endpoint's learnt capacity: its no-load time per unit of work and its slots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityEstimate {
    /// The fastest `t / w` and `t` of the last `τ` over the answers sent with nothing awaiting a
    /// first byte.
    idle: Option<IdleTimes>,
    /// The slots, ≥ 1, fractional while learning.
    slots: f64,
    /// How the work counts until the endpoint's own no-load answers judge: per request (the
    /// safe side) unless the endpoint's pool found its peers' time growing with the work.
    prior_per_request: bool,
}

/// An endpoint's no-load times: per unit of work (`u₀`) and per request (`r₀`), in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IdleTimes {
    per_unit: WindowedMin,
    per_request: WindowedMin,
    /// EWMA ([`SPREAD_GAIN`]) of `t ÷ τ(w)` over the no-load answers (≥ 1): how far above the
    /// fastest they come on average.
    spread_mean: f64,
    /// EWMA ([`SPREAD_GAIN`]) of `|t ÷ τ(w) − spread_mean|`.
    spread_dev: f64,
    /// How the no-load times vary with the work: whether the endpoint's time grows with it.
    fit: SizeFit,
}

impl IdleTimes {
    /// The least work a request counts for: `ω = r₀ ÷ u₀` (≥ 1), or [`PER_REQUEST_WORK`] on an
    /// endpoint whose time does not grow with the work.
    fn min_request_work(&self) -> f64 {
        if self.fit.per_request {
            return PER_REQUEST_WORK;
        }
        let (u0, r0) = (self.per_unit.get(), self.per_request.get());
        if u0 > 0.0 { (r0 / u0).max(1.0) } else { 1.0 }
    }

    /// The no-load time per unit of work as the costs count the work: `u₀`, or `r₀ ÷`
    /// [`PER_REQUEST_WORK`] on an endpoint whose time does not grow with the work.
    fn cost_unit(&self) -> f64 {
        if self.fit.per_request { self.per_request.get() / PER_REQUEST_WORK } else { self.per_unit.get() }
    }
}

/// The work every request counts for on an endpoint whose time does not grow with the work
/// (see `SizeFit`): far above any request's size, so that `max(w, ω)` is `ω` for all.
pub const PER_REQUEST_WORK: f64 = 1e9;
/// The weight of one no-load answer in the moments of `SizeFit`.
pub const FIT_GAIN: f64 = 0.03125;
/// No-load answers `SizeFit` waits for before it judges.
pub const FIT_SAMPLES: u32 = 8;
/// Below this share of the mean no-load time explained by the work (`b × sd(w) ÷ mean(t)`),
/// the endpoint's time does not grow with the work; above [`GROWS`], it does again.
pub const FLAT_IN_WORK: f64 = 0.1;
/// See [`FLAT_IN_WORK`].
pub const GROWS: f64 = 0.2;

/// A least-squares line through the no-load answers, `t ≈ a + b × w` (EWMA moments,
/// [`FIT_GAIN`]), to tell an endpoint whose time grows with the work (an LLM engine's prefill:
/// `b × sd(w)` is of the order of the mean time) from one whose time does not (a classic server
/// answering any request in the same time: `b` is noise around 0). Requests of one size say
/// nothing, and the fit keeps its verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SizeFit {
    samples: u32,
    mean_w: f64,
    mean_t: f64,
    var_w: f64,
    cov: f64,
    per_request: bool,
}

impl SizeFit {
    /// A fit that counts per request (or not) until it judges.
    fn with_prior(per_request: bool) -> Self {
        Self { samples: 0, mean_w: 0.0, mean_t: 0.0, var_w: 0.0, cov: 0.0, per_request }
    }

    /// Whether it has had the answers to judge from.
    fn judged(&self) -> bool {
        self.samples >= FIT_SAMPLES
    }

    fn record(&mut self, w: f64, t: f64) {
        if self.samples == 0 {
            (self.mean_w, self.mean_t) = (w, t);
        } else {
            let g = FIT_GAIN;
            let (dw, dt) = (w - self.mean_w, t - self.mean_t);
            self.mean_w += g * dw;
            self.mean_t += g * dt;
            self.var_w = (1.0 - g) * (self.var_w + g * dw * dw);
            self.cov = (1.0 - g) * (self.cov + g * dw * dt);
        }
        self.samples = self.samples.saturating_add(1);
        if self.samples < FIT_SAMPLES || self.mean_t <= 0.0 || self.mean_w <= 0.0 {
            return;
        }
        // One size (or nearly): nothing to judge by.
        if self.var_w.sqrt() < 0.05 * self.mean_w {
            return;
        }
        let explained = (self.cov / self.var_w.sqrt()).max(0.0) / self.mean_t;
        if self.per_request && explained > GROWS {
            self.per_request = false;
        } else if !self.per_request && explained < FLAT_IN_WORK {
            self.per_request = true;
        }
    }
}

impl Default for CapacityEstimate {
    fn default() -> Self {
        Self { idle: None, slots: 1.0, prior_per_request: true }
    }
}

/// One first byte, as the capacity estimate sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirstByte {
    /// Time from sending to the first byte, in nanoseconds.
    pub nanos: f64,
    /// The request's own work.
    pub work: u64,
    /// The work that awaited a first byte on the endpoint when the request was sent.
    pub work_ahead: u64,
    /// The requests that awaited a first byte on the endpoint when the request was sent.
    pub requests_ahead: u32,
}

/// The work a request counts for on an endpoint whose requests count for at least
/// `min_request_work` each ([`CapacityEstimate::min_request_work`]): `max(work, ω)`.
pub fn request_work(work: f64, min_request_work: f64) -> f64 {
    work.max(min_request_work)
}

/// The work `requests` requests of `work` units in all count for together on such an endpoint:
/// `max(work, requests × ω)` (each counts for at least `ω`; their sizes are not kept one by one).
pub fn work_ahead(work: f64, requests: f64, min_request_work: f64) -> f64 {
    work.max(requests * min_request_work)
}

impl CapacityEstimate {
    /// The slots in use: the whole part of the estimate, at least 1.
    pub fn slots(&self) -> u32 {
        // `slots` is finite and ≥ 1; `as` saturates.
        self.slots.floor() as u32
    }

    /// The estimate of the slots, fractional while learning.
    pub fn slots_estimate(&self) -> f64 {
        self.slots
    }

    /// The no-load time per unit of work (`u₀`), in nanoseconds: the fastest `t / w` of the last
    /// `τ` over the answers sent with nothing ahead; `None` before the first.
    pub fn idle_unit_nanos(&self) -> Option<f64> {
        self.idle.map(|i| i.per_unit.get())
    }

    /// The no-load time per unit of work as the costs count the work, in nanoseconds: `u₀`, or
    /// `r₀ ÷` [`PER_REQUEST_WORK`] on an endpoint whose time does not grow with the work; `None`
    /// before the first no-load answer.
    pub fn idle_cost_unit_nanos(&self) -> Option<f64> {
        self.idle.map(|i| i.cost_unit())
    }

    /// The no-load time per request (`r₀`), in nanoseconds: the fastest answer of the last `τ`
    /// sent with nothing ahead; `None` before the first.
    pub fn idle_request_nanos(&self) -> Option<f64> {
        self.idle.map(|i| i.per_request.get())
    }

    /// Whether the endpoint's no-load time was found not to grow with the work, so that every
    /// request counts alike ([`PER_REQUEST_WORK`]); see the [module docs](self).
    pub fn counts_per_request(&self) -> bool {
        self.idle.is_some_and(|i| i.fit.per_request)
    }

    /// The least work a request counts for on the endpoint, `ω = r₀ ÷ u₀`, or
    /// [`PER_REQUEST_WORK`] where the time does not grow with the work (see the
    /// [module docs](self)): 1 before the first no-load answer.
    pub fn min_request_work(&self) -> f64 {
        self.idle.map_or(1.0, |i| i.min_request_work())
    }

    /// Whether the endpoint's own no-load answers have judged how its work counts: `Some(true)`
    /// where its time was found not to grow with the work (every request counts alike),
    /// `Some(false)` where it grows; `None` before [`FIT_SAMPLES`] no-load answers.
    pub fn counting_verdict(&self) -> Option<bool> {
        self.idle.filter(|i| i.fit.judged()).map(|i| i.fit.per_request)
    }

    /// How the work counts until the endpoint's own answers judge (see the [module docs](self)):
    /// per request by default; a pool whose judged endpoints count the work sets `false` on a new
    /// one, so that a replica added to a pool of LLM engines is costed by its prompts' sizes from
    /// its first answer, and so does a load report that counts the replica's backlog in prompt
    /// tokens. Takes effect at once on an endpoint whose answers have not judged yet, and not on
    /// one whose answers have.
    pub fn set_counting_prior(&mut self, per_request: bool) {
        self.prior_per_request = per_request;
        if let Some(idle) = &mut self.idle
            && !idle.fit.judged()
        {
            idle.fit.per_request = per_request;
        }
    }

    /// Learns from one first byte at `now`; `tau` is the window of the no-load times.
    pub fn record(&mut self, sample: FirstByte, now: Instant, tau: Duration) {
        let work = sample.work.max(1) as f64;
        if !(sample.nanos.is_finite() && sample.nanos > 0.0) {
            return;
        }
        if sample.requests_ahead == 0 {
            self.record_idle(sample.nanos, work, now, tau);
            return;
        }
        let Some(idle) = self.idle else { return };
        let u0 = idle.cost_unit();
        let omega = idle.min_request_work();
        let own = request_work(work, omega);
        let ahead = work_ahead(sample.work_ahead as f64, f64::from(sample.requests_ahead), omega);
        if ahead < own {
            return;
        }
        let at_once = f64::from(sample.requests_ahead) + 1.0;
        // What one slot would take for the requests ahead and this one, at no load.
        let serial = u0 * (ahead + own);
        let implied = (serial / sample.nanos).clamp(1.0, at_once);
        if implied >= FLAT * at_once {
            // At least `at_once` slots: the estimate moves towards one more, so that its whole
            // part reaches `at_once`.
            let target = at_once + 1.0;
            if target > self.slots {
                self.slots += GAIN * (target - self.slots);
            }
        } else if ahead >= WORK_AHEAD * own && implied * idle.spread_high().max(1.0 / GROWN) < at_once {
            self.slots += GROWN_GAIN * (implied - self.slots);
        }
        self.slots = self.slots.max(1.0);
    }

    /// Learns the no-load times, and how the no-load answers spread above them, from an answer
    /// sent with nothing ahead.
    fn record_idle(&mut self, nanos: f64, work: f64, now: Instant, tau: Duration) {
        let per_unit = nanos / work;
        let idle = match &mut self.idle {
            Some(idle) => {
                idle.per_unit.record(per_unit, now, tau);
                idle.per_request.record(nanos, now, tau);
                idle
            }
            None => self.idle.insert(IdleTimes {
                per_unit: WindowedMin::new(per_unit, now),
                per_request: WindowedMin::new(nanos, now),
                spread_mean: 1.0,
                spread_dev: 0.0,
                fit: SizeFit::with_prior(self.prior_per_request),
            }),
        };
        // `τ(w) = u₀ × max(w, ω)`: the fastest this answer could have been.
        idle.fit.record(work, nanos);
        let fastest = idle.cost_unit() * request_work(work, idle.min_request_work());
        if fastest > 0.0 {
            let ratio = (nanos / fastest).max(1.0);
            let deviation = (ratio - idle.spread_mean).abs();
            idle.spread_mean += SPREAD_GAIN * (ratio - idle.spread_mean);
            idle.spread_dev += SPREAD_GAIN * (deviation - idle.spread_dev);
        }
    }
}

impl IdleTimes {
    /// How much slower than `τ(w)` a no-load answer comes at most, bar outliers:
    /// `spread_mean + SPREAD_DEVIATIONS × spread_dev`.
    fn spread_high(&self) -> f64 {
        self.spread_mean + SPREAD_DEVIATIONS * self.spread_dev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const TAU: Duration = Duration::from_secs(30);

    fn byte(ms: f64, work: u64, work_ahead: u64, requests_ahead: u32) -> FirstByte {
        FirstByte { nanos: ms * MS, work, work_ahead, requests_ahead }
    }

    #[tokio::test(start_paused = true)]
    async fn a_parallel_server_shows_its_slots() {
        // 8 slots at 10 ms: flat up to 8 at once, then 10 ms more per 8 queued.
        let mut c = CapacityEstimate::default();
        let served = |n: u32| if n < 8 { 10.0 } else { 10.0 * f64::from(n + 1) / 8.0 };
        c.record(byte(10.0, 1, 0, 0), Instant::now(), TAU);
        assert_eq!(c.idle_unit_nanos(), Some(10.0 * MS));
        for round in 0..50 {
            for n in 1..16u32 {
                tokio::time::advance(Duration::from_millis(1)).await;
                c.record(byte(served(n), 1, u64::from(n), n), Instant::now(), TAU);
            }
            if round == 0 {
                assert!(c.slots_estimate() > 1.0, "flat answers at 2+ at once raise it");
            }
        }
        // Flat answers at 8 at once move it towards 9, answers at 10 and more (clearly queued)
        // back towards 8: the whole part in use is 8.
        assert!((8.0..9.0).contains(&c.slots_estimate()), "{}", c.slots_estimate());
        assert_eq!(c.slots(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_serial_engine_keeps_one_slot() {
        // 1 µs a token, prompts prefilled one after another.
        let mut c = CapacityEstimate::default();
        c.record(byte(1.0, 1000, 0, 0), Instant::now(), TAU);
        // The shortest prompt seen at no load sets the time per request: it bounds nothing here.
        c.record(byte(0.1, 100, 0, 0), Instant::now(), TAU);
        for n in 1..200u32 {
            tokio::time::advance(Duration::from_millis(5)).await;
            let ahead = u64::from(n % 5) * 700 + 1000;
            c.record(byte((ahead + 1000) as f64 / 1000.0, 1000, ahead, n % 5 + 1), Instant::now(), TAU);
        }
        assert_eq!(c.slots(), 1);
        assert!(c.slots_estimate() < 1.01, "{}", c.slots_estimate());
    }

    #[tokio::test(start_paused = true)]
    async fn slots_come_down_when_latency_grows_earlier() {
        let mut c = CapacityEstimate::default();
        c.record(byte(10.0, 1, 0, 0), Instant::now(), TAU);
        for _ in 0..300 {
            c.record(byte(10.0, 1, 7, 7), Instant::now(), TAU);
        }
        assert_eq!(c.slots(), 8, "flat at 8 at once: {}", c.slots_estimate());
        // The server now takes 2 at once: 8 at once answer in 10 × 8 / 2 ms.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            c.record(byte(40.0, 1, 7, 7), Instant::now(), TAU);
        }
        assert_eq!(c.slots(), 2, "{}", c.slots_estimate());
    }

    #[tokio::test(start_paused = true)]
    async fn the_no_load_times_are_the_fastest_answers_sent_with_nothing_ahead() {
        let mut c = CapacityEstimate::default();
        assert_eq!(c.idle_unit_nanos(), None);
        c.record(byte(4.0, 2, 3, 1), Instant::now(), TAU);
        assert_eq!((c.idle_unit_nanos(), c.slots()), (None, 1), "nothing learnt before a no-load answer");
        c.record(byte(4.0, 2, 0, 0), Instant::now(), TAU);
        assert_eq!((c.idle_unit_nanos(), c.idle_request_nanos()), (Some(2.0 * MS), Some(4.0 * MS)));
        tokio::time::advance(Duration::from_secs(1)).await;
        c.record(byte(9.0, 2, 0, 0), Instant::now(), TAU);
        c.record(byte(3.0, 6, 0, 0), Instant::now(), TAU);
        assert_eq!((c.idle_unit_nanos(), c.idle_request_nanos()), (Some(0.5 * MS), Some(3.0 * MS)));
    }

    /// A deterministic noise in `[0, max_ms]`, different from one call to the next.
    fn noise(i: u32, max_ms: f64) -> f64 {
        f64::from((i * 7919 + 13) % 101) / 100.0 * max_ms
    }

    /// 8 slots at 10 ms: flat up to 8 at once, then 10 ms more per 8 queued.
    fn eight_slots(n: u32) -> f64 {
        if n < 8 { 10.0 } else { 10.0 * f64::from(n + 1) / 8.0 }
    }

    #[tokio::test(start_paused = true)]
    async fn delays_on_no_load_answers_inflate_neither_the_no_load_time_nor_the_slots() {
        // A loaded machine: a process woken from idle waits for a core (up to 10 ms here), one
        // already running does not. A mean of the no-load answers would be 15 ms, and a server
        // of 8 slots answering 16 at once in 20 ms would look like one of 12.
        let mut c = CapacityEstimate::default();
        let mut i = 0;
        for _ in 0..100 {
            for n in 0..16u32 {
                tokio::time::advance(Duration::from_millis(1)).await;
                i += 1;
                let ms = if n == 0 { 10.0 + noise(i, 10.0) } else { eight_slots(n) };
                c.record(byte(ms, 1, u64::from(n), n), Instant::now(), TAU);
            }
        }
        assert_eq!(c.idle_unit_nanos(), Some(10.0 * MS));
        assert_eq!(c.slots(), 8, "{}", c.slots_estimate());
    }

    #[tokio::test(start_paused = true)]
    async fn noise_on_every_answer_never_credits_more_slots_than_there_are() {
        for max_noise_ms in [0.4, 5.0, 10.0, 20.0] {
            let mut c = CapacityEstimate::default();
            let mut i = 0;
            for _ in 0..100 {
                for n in 0..16u32 {
                    tokio::time::advance(Duration::from_millis(1)).await;
                    i += 1;
                    let ms = eight_slots(n) + noise(i, max_noise_ms);
                    c.record(byte(ms, 1, u64::from(n), n), Instant::now(), TAU);
                }
            }
            assert_eq!(c.idle_unit_nanos(), Some(10.0 * MS), "noise up to {max_noise_ms} ms");
            let slots = c.slots_estimate();
            assert!(slots < 9.0, "noise up to {max_noise_ms} ms: {slots}");
            if max_noise_ms < 0.5 {
                // Within `FLAT`'s 5 %: as without noise, or one slot short (queued answers a
                // little late pull the estimate back below 8).
                assert!((7..=8).contains(&c.slots()), "{slots}");
            } else {
                // Larger noise makes answers look queued: the slots err low, not high.
                assert!(slots >= 2.0, "noise up to {max_noise_ms} ms: {slots}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_costed_as_one_slot_shows_more_with_two_at_once() {
        // A server of 4 slots at 10 ms that a policy sends at most 2 requests at once, since it
        // costs it as one slot: every answer flat.
        let mut c = CapacityEstimate::default();
        c.record(byte(10.0, 1, 0, 0), Instant::now(), TAU);
        for _ in 0..40 {
            tokio::time::advance(Duration::from_millis(1)).await;
            c.record(byte(10.0, 1, 1, 1), Instant::now(), TAU);
        }
        assert_eq!(c.slots(), 2, "{}", c.slots_estimate());
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_whose_time_grows_with_the_work_counts_it_a_classic_server_does_not() {
        let size = |i: u32| u64::from(100 + (i * 7919) % 1901);
        // An LLM engine's prefill: 2 ms a step plus 5 µs a token, at no load.
        let mut engine = CapacityEstimate::default();
        // A classic server: 10 ms whatever the size, up to 1 ms late.
        let mut server = CapacityEstimate::default();
        for i in 0..FIT_SAMPLES * 2 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let w = size(i);
            engine.record(byte(2.0 + 0.005 * w as f64, w, 0, 0), Instant::now(), TAU);
            server.record(byte(10.0 + noise(i, 1.0), w, 0, 0), Instant::now(), TAU);
            if i + 1 < FIT_SAMPLES {
                assert!(engine.counts_per_request(), "judged only after {FIT_SAMPLES} answers");
            }
            assert!(server.counts_per_request(), "answer {i}");
        }
        assert!(!engine.counts_per_request());
        // Its least work per request is its shortest prompt plus a step's worth (400 tokens).
        let omega = engine.min_request_work();
        assert!((400.0..1000.0).contains(&omega), "{omega}");
        assert!(server.counts_per_request());
        assert_eq!(server.min_request_work(), PER_REQUEST_WORK);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_at_a_low_load_does_not_wear_the_slots_down() {
        // A server of 8 slots at 10 ms, learnt first over the whole range.
        let mut c = CapacityEstimate::default();
        for _ in 0..100 {
            for n in 0..16u32 {
                tokio::time::advance(Duration::from_millis(1)).await;
                c.record(byte(eight_slots(n), 1, u64::from(n), n), Instant::now(), TAU);
            }
        }
        assert_eq!(c.slots(), 8);
        // Then a long stretch at a low load (2 to 5 requests at once) where every answer comes
        // up to 1 ms late, as a timer firing on the next millisecond does: no answer shows more
        // slots, and none shows fewer.
        let mut i = 0;
        for _ in 0..1000 {
            for n in 2..5u32 {
                tokio::time::advance(Duration::from_millis(1)).await;
                i += 1;
                c.record(byte(eight_slots(n) + noise(i, 1.0), 1, u64::from(n), n), Instant::now(), TAU);
            }
        }
        assert_eq!(c.slots(), 8, "{}", c.slots_estimate());
    }

    #[tokio::test(start_paused = true)]
    async fn a_parallel_servers_slots_do_not_depend_on_the_request_sizes() {
        // Prompts of 100 to 2,000 tokens, 10 ms each whatever the size: the time per request
        // bounds the serial time, not the time per token (the fastest per token is the largest
        // prompt's, 5 µs, which would make every answer look queued).
        let mut c = CapacityEstimate::default();
        let size = |i: u32| u64::from(100 + (i * 7919) % 1901);
        let mut i = 0;
        for _ in 0..100 {
            for n in 0..16u32 {
                tokio::time::advance(Duration::from_millis(1)).await;
                i += 1;
                let ahead: u64 = (1..=n).map(|j| size(i + j)).sum();
                c.record(byte(eight_slots(n), size(i), ahead, n), Instant::now(), TAU);
            }
        }
        assert_eq!(c.idle_request_nanos(), Some(10.0 * MS));
        // Its no-load time does not grow with the size: every request counts alike.
        assert!(c.counts_per_request());
        assert_eq!(c.min_request_work(), PER_REQUEST_WORK);
        assert_eq!(c.slots(), 8, "{}", c.slots_estimate());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_slows_down_is_followed_within_the_window() {
        let mut c = CapacityEstimate::default();
        for _ in 0..100 {
            for n in 0..16u32 {
                tokio::time::advance(Duration::from_millis(1)).await;
                c.record(byte(eight_slots(n), 1, u64::from(n), n), Instant::now(), TAU);
            }
        }
        assert_eq!(c.idle_unit_nanos(), Some(10.0 * MS));
        // From now on every answer takes 4 times as long (still 8 at once); one round a second.
        let slowed = Instant::now();
        let mut followed = None;
        for second in 1..=120u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            for n in 0..16u32 {
                c.record(byte(4.0 * eight_slots(n), 1, u64::from(n), n), Instant::now(), TAU);
            }
            if followed.is_none() && c.idle_unit_nanos() == Some(40.0 * MS) {
                followed = Some(second);
            }
        }
        let followed = followed.expect("the no-load time follows the slowdown");
        assert!(followed <= TAU.as_secs(), "followed after {followed} s, the window is {TAU:?}");
        assert!(
            followed as f64 >= 0.75 * TAU.as_secs_f64(),
            "a slowdown is not followed at once: {followed} s"
        );
        // Until then its answers looked queued; against the new no-load time they show 8 again.
        assert!(Instant::now() - slowed >= Duration::from_secs(120));
        assert!(c.slots_estimate() > 7.5, "{}", c.slots_estimate());
    }
}
