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
//! - the **no-load unit time** `u₀` is an EWMA of `t / w` over the answers sent while nothing
//!   awaited a first byte (`n = 0`): what the endpoint takes when nothing queues ahead;
//! - an answer with work ahead (`n ≥ 1` and `A ≥ 2w` ([`WORK_AHEAD`]), so that one slot and
//!   many predict clearly different times) shows how many requests the endpoint worked on at once:
//!   `implied = u₀ × (A + w) / t`, clamped to `[1, n + 1]`. One slot answers in `u₀ × (A + w)`
//!   (implied 1); `k` slots answer as at no load while `n + 1 ≤ k` (implied `n + 1`: the
//!   endpoint has at least that many) and in `u₀ × (n + 1) / k` beyond (implied `k`).
//!   - If the answer was as fast as at no load (implied ≥ [`FLAT`] × (n + 1)), it is a lower
//!     bound: the slots move towards `n + 1` when that is above them, never down;
//!   - otherwise latency grew, and the slots move towards `implied`, up or down.
//!
//!   A lower bound moves the estimate [`GAIN`] of the way, a growth [`GROWN_GAIN`] of it (an
//!   answer slower than at no load is direct evidence; a fast one may be luck, such as an LLM
//!   engine prefilling two short prompts in one step). The estimate starts at 1 and never goes
//!   below. The policies use its whole part ([`CapacityEstimate::slots`]), so an LLM engine
//!   whose estimate wavers between 1 and 2 is costed as the serial queue it mostly is, and a
//!   server of `k` slots is costed with `k − 1` while its estimate nears `k` from below (the
//!   price is small: its latency is taken to grow one request early).
//!
//! This is the knee Gradient2 and Vegas look for (the concurrency at which latency leaves its
//! no-load value), read off the same samples, without a limit to enforce or a setting to make.

use std::time::Duration;

use tokio::time::Instant;

/// An answer at least this share of `n + 1` implied slots is "as fast as at no load".
pub const FLAT: f64 = 0.95;
/// How far the slots move up towards `n + 1` after one answer as fast as at no load.
pub const GAIN: f64 = 0.03125;
/// An answer teaches the slots only if at least this many times its own work awaited a first
/// byte ahead of it: one slot then predicts at least `1 + WORK_AHEAD` times the no-load time.
pub const WORK_AHEAD: f64 = 2.0;
/// How far the slots move towards the implied value after one answer slower than at no load.
pub const GROWN_GAIN: f64 = 0.125;

/// One endpoint's learnt capacity: its no-load time per unit of work and its slots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityEstimate {
    /// EWMA of `t / w` over answers sent with nothing awaiting a first byte, and when it was
    /// last updated.
    idle_unit: Option<(f64, Instant)>,
    /// The slots, ≥ 1, fractional while learning.
    slots: f64,
}

impl Default for CapacityEstimate {
    fn default() -> Self {
        Self { idle_unit: None, slots: 1.0 }
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

    /// The no-load time per unit of work, in nanoseconds, once an answer was sent with nothing
    /// ahead.
    pub fn idle_unit_nanos(&self) -> Option<f64> {
        self.idle_unit.map(|(u, _)| u)
    }

    /// Learns from one first byte at `now`; `tau` is the no-load unit time's EWMA time constant.
    pub fn record(&mut self, sample: FirstByte, now: Instant, tau: Duration) {
        let work = sample.work.max(1) as f64;
        if !(sample.nanos.is_finite() && sample.nanos > 0.0) {
            return;
        }
        if sample.requests_ahead == 0 {
            let per_unit = sample.nanos / work;
            let next = match self.idle_unit {
                Some((u, at)) => {
                    let w = weight_since(at, now, tau);
                    u * w + per_unit * (1.0 - w)
                }
                None => per_unit,
            };
            self.idle_unit = Some((next, now));
            return;
        }
        let Some((u0, _)) = self.idle_unit else { return };
        if (sample.work_ahead as f64) < WORK_AHEAD * work {
            return;
        }
        let at_once = f64::from(sample.requests_ahead) + 1.0;
        let implied = (u0 * (sample.work_ahead as f64 + work) / sample.nanos).clamp(1.0, at_once);
        if implied >= FLAT * at_once {
            if at_once > self.slots {
                self.slots += GAIN * (at_once - self.slots);
            }
        } else {
            self.slots += GROWN_GAIN * (implied - self.slots);
        }
        self.slots = self.slots.max(1.0);
    }
}

/// `e^(−Δt/τ)`: what an estimate made at `at` still weighs at `now`.
fn weight_since(at: Instant, now: Instant, tau: Duration) -> f64 {
    let dt = now.saturating_duration_since(at).as_secs_f64();
    (-dt / tau.as_secs_f64().max(1e-9)).exp()
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
        // It approaches 8 from below: the whole part in use is 7 until an answer shows more.
        assert!((7.9..=8.0).contains(&c.slots_estimate()), "{}", c.slots_estimate());
        assert_eq!(c.slots(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_serial_engine_keeps_one_slot() {
        // 1 µs a token, prompts prefilled one after another.
        let mut c = CapacityEstimate::default();
        c.record(byte(1.0, 1000, 0, 0), Instant::now(), TAU);
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
        assert!(c.slots_estimate() > 7.9, "flat at 8 at once: towards 8, {}", c.slots_estimate());
        // The server now takes 2 at once: 8 at once answer in 10 × 8 / 2 ms.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            c.record(byte(40.0, 1, 7, 7), Instant::now(), TAU);
        }
        assert_eq!(c.slots(), 2, "{}", c.slots_estimate());
    }

    #[tokio::test(start_paused = true)]
    async fn the_no_load_unit_time_is_an_ewma_over_idle_answers() {
        let mut c = CapacityEstimate::default();
        assert_eq!(c.idle_unit_nanos(), None);
        c.record(byte(4.0, 2, 3, 1), Instant::now(), TAU);
        assert_eq!((c.idle_unit_nanos(), c.slots()), (None, 1), "nothing learnt before a no-load answer");
        c.record(byte(4.0, 2, 0, 0), Instant::now(), TAU);
        assert_eq!(c.idle_unit_nanos(), Some(2.0 * MS));
        // 30 s later (one time constant) a 4 ms-a-unit answer weighs 1 − 1/e.
        tokio::time::advance(TAU).await;
        c.record(byte(8.0, 2, 0, 0), Instant::now(), TAU);
        let expected = 2.0 * MS * (-1f64).exp() + 4.0 * MS * (1.0 - (-1f64).exp());
        assert!((c.idle_unit_nanos().unwrap() - expected).abs() < 1.0);
    }
}
