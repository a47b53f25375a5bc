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
//! - every request takes at least `r₀` and at least `u₀` per unit of its work, so one slot works
//!   off the `n` requests ahead and this one in at least
//!   `serial = max((n + 1) × r₀, u₀ × (A + w))`. Both bounds are needed: an LLM engine's time
//!   grows with the prompt (`u₀` is the tighter bound), a classic server's does not (`r₀` is; its
//!   `u₀` is its time over the largest prompt it saw, far below what a typical one takes);
//! - an answer with enough ahead (`serial ≥ (1 + WORK_AHEAD) × max(r₀, u₀ × w)` ([`WORK_AHEAD`]),
//!   so that one slot and many predict clearly different times) shows how many requests the
//!   endpoint worked on at once: `implied = serial / t`, clamped to `[1, n + 1]`. One slot answers
//!   in `serial` (implied 1); `k` slots answer as at no load while `n + 1 ≤ k` (implied `n + 1`:
//!   the endpoint has at least that many) and in `serial / k` beyond (implied `k`).
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
//! Against the fastest no-load answers, noise can only make an answer look slower, so `implied`
//! errs low: on a noisy machine the slots are learnt below the truth (a server is taken to queue
//! earlier than it does), never above it, and a slow replica is not credited with room it does
//! not have. Noise within [`FLAT`]'s 5 % does not move them at all.
//!
//! This is the knee Gradient2 and Vegas look for (the concurrency at which latency leaves its
//! no-load value), read off the same samples, without a limit to enforce or a setting to make.

use std::time::Duration;

use tokio::time::Instant;

use crate::windowed_min::WindowedMin;

/// An answer at least this share of `n + 1` implied slots is "as fast as at no load".
pub const FLAT: f64 = 0.95;
/// How far the slots move up towards `n + 1` after one answer as fast as at no load.
pub const GAIN: f64 = 0.03125;
/// An answer teaches the slots only if one slot would take at least `1 + WORK_AHEAD` times its
/// own no-load time to answer it: at least this many times its own work awaited a first byte
/// ahead of it (on an endpoint whose time grows with the work), or this many requests did.
pub const WORK_AHEAD: f64 = 2.0;
/// How far the slots move towards the implied value after one answer slower than at no load.
pub const GROWN_GAIN: f64 = 0.125;

/// One endpoint's learnt capacity: its no-load time per unit of work and its slots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityEstimate {
    /// The fastest `t / w` and `t` of the last `τ` over the answers sent with nothing awaiting a
    /// first byte.
    idle: Option<IdleTimes>,
    /// The slots, ≥ 1, fractional while learning.
    slots: f64,
}

/// An endpoint's no-load times: per unit of work (`u₀`) and per request (`r₀`), in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IdleTimes {
    per_unit: WindowedMin,
    per_request: WindowedMin,
}

impl Default for CapacityEstimate {
    fn default() -> Self {
        Self { idle: None, slots: 1.0 }
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

    /// The no-load time per unit of work (`u₀`), in nanoseconds: the fastest `t / w` of the last
    /// `τ` over the answers sent with nothing ahead; `None` before the first.
    pub fn idle_unit_nanos(&self) -> Option<f64> {
        self.idle.map(|i| i.per_unit.get())
    }

    /// The no-load time per request (`r₀`), in nanoseconds: the fastest answer of the last `τ`
    /// sent with nothing ahead; `None` before the first.
    pub fn idle_request_nanos(&self) -> Option<f64> {
        self.idle.map(|i| i.per_request.get())
    }

    /// Learns from one first byte at `now`; `tau` is the window of the no-load times.
    pub fn record(&mut self, sample: FirstByte, now: Instant, tau: Duration) {
        let work = sample.work.max(1) as f64;
        if !(sample.nanos.is_finite() && sample.nanos > 0.0) {
            return;
        }
        if sample.requests_ahead == 0 {
            let per_unit = sample.nanos / work;
            match &mut self.idle {
                Some(idle) => {
                    idle.per_unit.record(per_unit, now, tau);
                    idle.per_request.record(sample.nanos, now, tau);
                }
                None => {
                    self.idle = Some(IdleTimes {
                        per_unit: WindowedMin::new(per_unit, now),
                        per_request: WindowedMin::new(sample.nanos, now),
                    })
                }
            }
            return;
        }
        let Some(idle) = self.idle else { return };
        let (u0, r0) = (idle.per_unit.get(), idle.per_request.get());
        let at_once = f64::from(sample.requests_ahead) + 1.0;
        let serial = (at_once * r0).max(u0 * (sample.work_ahead as f64 + work));
        if serial < (1.0 + WORK_AHEAD) * r0.max(u0 * work) {
            return;
        }
        let implied = (serial / sample.nanos).clamp(1.0, at_once);
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
        assert!((7.9..=8.0 + 1e-9).contains(&c.slots_estimate()), "{}", c.slots_estimate());
        assert_eq!(c.slots(), 7);
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
        assert!(c.slots_estimate() > 7.9, "flat at 8 at once: towards 8, {}", c.slots_estimate());
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
        assert!((7.9..=8.0 + 1e-9).contains(&c.slots_estimate()), "{}", c.slots_estimate());
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
            assert!(slots <= 8.0 + 1e-9, "noise up to {max_noise_ms} ms: {slots}");
            if max_noise_ms < 0.5 {
                // Within `FLAT`'s 5 %: as without noise.
                assert_eq!(c.slots(), 7, "{slots}");
            } else {
                // Larger noise makes answers look queued: the slots err low, not high.
                assert!(slots >= 2.0, "noise up to {max_noise_ms} ms: {slots}");
            }
        }
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
        assert!((7.9..=8.0 + 1e-9).contains(&c.slots_estimate()), "{}", c.slots_estimate());
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
