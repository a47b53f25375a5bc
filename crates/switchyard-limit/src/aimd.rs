//! AIMD: additive increase, multiplicative decrease, after Netflix's concurrency-limits
//! `AIMDLimit`, with a drop signal relative to the learnt no-load RTT.
//!
//! The loss-based algorithm of TCP Reno applied to concurrency: each successful request that
//! found the limit at least half used adds to the limit; a drop multiplies it by `backoff_ratio`.
//!
//! ```text
//! base  = the smallest RTT of the last base_rtt_window (a windowed minimum, TCP Vegas's base RTT)
//! drop  = dropped (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE: see Signal::of)
//!         or rtt > timeout
//!         or rtt > rtt_tolerance × base                       (when rtt_tolerance > 0)
//! drop of a request that began after the last cut, or any drop without once_per_rtt
//!                               → limit = limit × backoff_ratio; the last cut is now
//! drop of a request that began before the last cut → unchanged (it saw the limit before the cut)
//! success with in_flight × 2 ≥ limit
//!                               → limit = limit + 1            (before the first cut, or
//!                                                                without per_rtt_increase)
//!                               → limit = limit + 1 every limit such successes (after it: one a round trip)
//! limit = clamp(limit, min_limit, max_limit)
//! ```
//!
//! A request began at `now − rtt` (exact for a unary call, whose RTT is the whole call; later than
//! its start for a stream, whose RTT ends at its first byte, so a stream's drop may cut once more).
//! The base RTT learns from successes only.
//!
//! # Defaults, and Netflix's
//!
//! [`AimdParams::netflix`] (and [`Aimd::netflix`]) are Netflix's exactly: initial 20, min 20,
//! max 200, backoff 0.9, timeout 5 s, no relative threshold, every drop cuts, one more per
//! success. With them AIMD knows nothing about latency below 5 s: it finds the capacity only by
//! being refused, so it needs a service that refuses when full. Over replicas that queue instead
//! (bench `overload`: four workers of 4 slots at 100 ms, deadline 1 s) it backs off only when
//! requests miss their deadlines, its floor of 20 is above the 16 slots, and goodput at 3× is
//! 0.52-0.59 of capacity.
//!
//! [`AimdParams::knee`] (and [`Aimd::knee`]), **the default**, keeps Netflix's initial limit,
//! ceiling, backoff and timeout, and adds TCP's answers to a signal that comes a round trip late:
//!
//! - `rtt_tolerance = 1.5`: an RTT above 1.5 × the base RTT is a drop: the replica kept the request
//!   queued for half its service time, so it holds more than it serves at once (TCP Vegas reads an
//!   RTT grown past its base as queueing: Brakmo and Peterson 1995). An admitted request's latency
//!   is its wait in the shed queue in front (held near the shed layer's 50 ms target) plus its
//!   RTT; 1.5 keeps that sum within issue 19's `≤ 2 ×` its no-load value. In the model of
//!   bench `overload` in `tests/aimd_queueing.rs` (four replicas of 4 slots at 100 ms ± 5 %
//!   that queue what they cannot start, the shed queue in front, 0.5× to 3× the capacity, three
//!   seeds) the default gives goodput 1.00 at 3× and a p99 of admitted requests 2.1-2.4 × the
//!   model's noise-free 105 ms at 0.5× (a fixed limit of 16, the slots: 1.8 ×; Netflix's AIMD:
//!   goodput 0.57, 9.5 ×); while tuning (with a fractional form of the same increase), 2 gave
//!   2.5-2.7 × and 1.3 no lower than 1.5. Over real processes (bench `overload`, two runs) the
//!   default met all three targets: goodput 1.185 and 0.994, critical 1.0, p99 ratio 1.94 and 1.70;
//! - `base_rtt_window_ms = 10 000`: the base RTT is the smallest of the last 10 s (BBR's `min_rtt`
//!   window; see [`WindowedMin`]), so that it follows a replica that became slower within 10 s;
//! - `once_per_rtt = true`: one cut per round trip, as TCP Reno's fast recovery reduces its
//!   window once per loss event (RFC 5681 §3.2): the requests admitted before a cut finish slow
//!   because of the limit before it, and cutting again for each of them (Netflix's behaviour)
//!   sinks the limit towards its floor after every spike (`0.9ⁿ` for `n` slow requests);
//! - `per_rtt_increase = true`: after the first cut, one more per `limit` used successes, one per round trip
//!   (TCP's congestion avoidance, RFC 5681 §3.1); before it, one per success (slow start, so that
//!   a limit far below a large pool's capacity climbs as fast as Netflix's). One per success adds
//!   a whole limit's worth each round trip, which a signal a round trip late cannot stop: in the
//!   model the limit then averaged 28-71 and the p99 ratio was 2.7-8.7 (tolerance 1.5-2);
//! - `min_limit = 1`: the limit may go below the replicas' slots (16 in bench `overload`), which
//!   Netflix's floor of 20 forbids.
//!
//! Like Gradient2's and Vegas's `knee`, the default reads a per-request RTT and assumes it steady
//! at no load (a classic server). The RTT of an LLM stream is its time to first token, mostly the
//! prefill of its prompt, which varies with the prompt's length by far more than 1.5 ×: the
//! threshold reads long prompts as queueing and the limit sinks to its floor (lab `overload`:
//! goodput 0.020 of capacity at 3×). There, turn the relative threshold off and keep one more per
//! success (`{ name = "aimd", rtt_tolerance = 0, per_rtt_increase = false }`, what lab `overload`
//! runs: goodput 1.22, every target met), or use Netflix's parameters.
//!
//! As a config: `{ name = "aimd" }` is the default; Netflix's is `{ name = "aimd", min_limit = 20,
//! rtt_tolerance = 0, once_per_rtt = false, per_rtt_increase = false }`.
//!
//! Sources: Netflix/concurrency-limits, `com.netflix.concurrency.limits.limit.AIMDLimit`; Brakmo
//! and Peterson, "TCP Vegas: end to end congestion avoidance on a global internet", IEEE JSAC
//! 1995; RFC 5681, "TCP Congestion Control"; Cardwell et al., "BBR: congestion-based congestion
//! control", ACM Queue 2016.

use std::time::Duration;

use tokio::time::Instant;

use crate::algorithm::{LimitAlgorithm, Sample};
use crate::windowed_min::WindowedMin;

/// The parameters of [`Aimd`] (a `{ name = "aimd", ... }` spec's fields).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AimdParams {
    /// The limit to start from.
    pub initial_limit: usize,
    /// The lowest limit.
    pub min_limit: usize,
    /// The highest limit.
    pub max_limit: usize,
    /// The factor a drop multiplies the limit by, in (0, 1).
    pub backoff_ratio: f64,
    /// An RTT above this counts as a drop, in milliseconds.
    pub timeout_ms: u64,
    /// An RTT above this multiple of the base RTT (the smallest of the last
    /// `base_rtt_window_ms`) counts as a drop; 0 turns the relative threshold off.
    pub rtt_tolerance: f64,
    /// How long the base RTT remembers a sample, in milliseconds.
    pub base_rtt_window_ms: u64,
    /// Cut at most once per round trip: a drop of a request that began before the last cut
    /// leaves the limit as it is.
    pub once_per_rtt: bool,
    /// After the first drop, add `1 / limit` per success (one per round trip, TCP's congestion
    /// avoidance) rather than one per success (which stays the rule until then: slow start).
    pub per_rtt_increase: bool,
}

impl AimdParams {
    /// Netflix's defaults: initial 20, min 20, max 200, backoff 0.9, timeout 5 s; no relative
    /// threshold; every drop cuts.
    pub fn netflix() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            backoff_ratio: 0.9,
            timeout_ms: 5_000,
            rtt_tolerance: 0.0,
            base_rtt_window_ms: 10_000,
            once_per_rtt: false,
            per_rtt_increase: false,
        }
    }

    /// The default (see the [module docs](self)): Netflix's, with a drop at 1.5 × the base RTT
    /// of the last 10 s, one cut and (after the first cut) one step up per round trip, and a
    /// floor of 1.
    pub fn knee() -> Self {
        Self {
            min_limit: 1,
            rtt_tolerance: 1.5,
            once_per_rtt: true,
            per_rtt_increase: true,
            ..Self::netflix()
        }
    }
}

impl Default for AimdParams {
    /// [`AimdParams::knee`].
    fn default() -> Self {
        Self::knee()
    }
}

/// An AIMD limit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Aimd {
    params: AimdParams,
    limit: usize,
    /// Used successes since the per-round-trip increase last added one.
    successes: usize,
    base_rtt: Option<WindowedMin>,
    last_cut: Option<Instant>,
}

impl Aimd {
    /// An AIMD limit with `params` (bounds made consistent: `1 ≤ min ≤ max`, ratio in (0, 1),
    /// a tolerance that is not a finite number ≥ 1 turns the relative threshold off).
    pub fn new(mut params: AimdParams) -> Self {
        params.min_limit = params.min_limit.max(1);
        params.max_limit = params.max_limit.max(params.min_limit);
        if !(params.backoff_ratio > 0.0 && params.backoff_ratio < 1.0) {
            params.backoff_ratio = AimdParams::default().backoff_ratio;
        }
        if !(params.rtt_tolerance.is_finite() && params.rtt_tolerance >= 1.0) {
            params.rtt_tolerance = 0.0;
        }
        params.base_rtt_window_ms = params.base_rtt_window_ms.max(1);
        let limit = params.initial_limit.clamp(params.min_limit, params.max_limit);
        Self { params, limit, successes: 0, base_rtt: None, last_cut: None }
    }

    /// AIMD with Netflix's defaults ([`AimdParams::netflix`]).
    pub fn netflix() -> Self {
        Self::new(AimdParams::netflix())
    }

    /// AIMD with the default parameters ([`AimdParams::knee`]), as `default()`.
    pub fn knee() -> Self {
        Self::new(AimdParams::knee())
    }

    /// The base RTT (the smallest of the window), once a success has come.
    pub fn base_rtt(&self) -> Option<Duration> {
        self.base_rtt.map(|m| Duration::from_secs_f64(m.get()))
    }

    /// Whether `sample`'s RTT is past the absolute timeout or the relative threshold.
    fn too_slow(&self, sample: &Sample) -> bool {
        if sample.rtt > Duration::from_millis(self.params.timeout_ms) {
            return true;
        }
        let tolerance = self.params.rtt_tolerance;
        tolerance > 0.0 && self.base_rtt.is_some_and(|m| sample.rtt.as_secs_f64() > tolerance * m.get())
    }
}

impl Default for Aimd {
    fn default() -> Self {
        Self::knee()
    }
}

impl LimitAlgorithm for Aimd {
    fn name(&self) -> &'static str {
        "aimd"
    }

    fn limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if !sample.dropped {
            let rtt = sample.rtt.as_secs_f64();
            let window = Duration::from_millis(self.params.base_rtt_window_ms);
            match &mut self.base_rtt {
                Some(m) => m.record(rtt, sample.now, window),
                None => self.base_rtt = Some(WindowedMin::new(rtt, sample.now)),
            }
        }
        let p = &self.params;
        let mut limit = self.limit;
        if sample.dropped || self.too_slow(sample) {
            let began = sample.now.checked_sub(sample.rtt).unwrap_or(sample.now);
            let stale = p.once_per_rtt && self.last_cut.is_some_and(|cut| began < cut);
            if !stale {
                limit = (limit as f64 * p.backoff_ratio) as usize;
                self.last_cut = Some(sample.now);
            }
        } else if sample.in_flight * 2 >= limit {
            if p.per_rtt_increase && self.last_cut.is_some() {
                self.successes += 1;
                if self.successes >= limit {
                    self.successes = 0;
                    limit += 1;
                }
            } else {
                limit += 1;
            }
        }
        self.limit = limit.clamp(p.min_limit, p.max_limit);
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    fn netflix() -> Aimd {
        Aimd::new(AimdParams { initial_limit: 50, min_limit: 5, max_limit: 100, ..AimdParams::netflix() })
    }

    /// The default, from a limit of 20 and a base RTT of 100 ms, with its absolute timeout far
    /// above every RTT of these tests.
    fn knee() -> Aimd {
        let mut a = Aimd::new(AimdParams { initial_limit: 20, timeout_ms: 60_000, ..AimdParams::default() });
        assert_eq!(a.update(&sample(100, 1, false)), 20, "app-limited: not grown");
        assert_eq!(a.base_rtt(), Some(Duration::from_millis(100)));
        a
    }

    #[tokio::test(start_paused = true)]
    async fn netflix_grows_by_one_while_used_and_ignores_latency_below_its_timeout() {
        let mut a = netflix();
        assert_eq!(a.update(&sample(10, 50, false)), 51);
        assert_eq!(a.update(&sample(4_000, 51, false)), 52, "a slow success still grows it");
        assert_eq!(a.update(&sample(10, 10, false)), 52, "app-limited: not grown");
        assert_eq!(a.update(&sample(6_000, 52, false)), 46, "past the timeout: a drop");
        assert_eq!(a.update(&sample(6_000, 46, false)), 41, "every drop cuts");
    }

    #[tokio::test(start_paused = true)]
    async fn netflix_drops_cut_it_by_the_backoff_ratio_down_to_the_floor() {
        let mut a = netflix();
        assert_eq!(a.update(&sample(10, 50, true)), 45);
        let mut limit = 45;
        for _ in 0..40 {
            limit = a.update(&sample(10, limit, true));
        }
        assert_eq!(limit, 5);
        assert_eq!(Aimd::netflix().limit(), 20);
        assert_eq!(AimdParams::netflix().min_limit, 20, "Netflix's floor");
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_when_the_rtt_grows_past_its_base_under_a_constant_timeout() {
        let mut a = knee();
        // Slow start: one more per used success at the base RTT (and below 1.5 × it).
        assert_eq!(a.update(&sample(100, 20, false)), 21);
        assert_eq!(a.update(&sample(140, 21, false)), 22, "within 1.5 × the base: a success");
        tokio::time::advance(Duration::from_millis(200)).await;
        // 160 ms: far below the timeout of 60 s, above 1.5 × 100 ms.
        assert_eq!(a.update(&sample(160, 22, false)), 19, "22 × 0.9, truncated");
        // A request that began before that cut says nothing new about the limit after it.
        assert_eq!(a.update(&sample(300, 22, false)), 19, "one cut per round trip");
        // One that began after it, and is still slow, cuts again.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(a.update(&sample(160, 19, false)), 17);
        assert_eq!(a.base_rtt(), Some(Duration::from_millis(100)), "slow samples leave the base");

        // Netflix's AIMD, with the same timeout, never backs off on these RTTs.
        let mut n = Aimd::new(AimdParams { initial_limit: 20, timeout_ms: 60_000, ..AimdParams::netflix() });
        n.update(&sample(100, 20, false));
        assert_eq!(n.update(&sample(300, 21, false)), 22);
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_on_an_overloaded_outcome_down_to_a_floor_of_one() {
        let mut a = knee();
        // `dropped` is what Signal::of makes of RESOURCE_EXHAUSTED (Outcome::Overloaded) and of
        // DEADLINE_EXCEEDED: a drop at the base RTT cuts.
        assert_eq!(a.update(&sample(100, 20, true)), 18);
        let mut limit = 18;
        for _ in 0..60 {
            tokio::time::advance(Duration::from_millis(200)).await;
            limit = a.update(&sample(100, limit, true));
        }
        assert_eq!(limit, 1, "the floor is 1, below any replica's slots");
        assert_eq!(a.base_rtt(), Some(Duration::from_millis(100)), "drops do not teach the base");
    }

    #[tokio::test(start_paused = true)]
    async fn grows_again_by_one_a_round_trip_when_the_rtt_returns_to_its_base() {
        let mut a = knee();
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(a.update(&sample(400, 20, false)), 18, "a slow request: cut");
        // Back at the base RTT, the limit used: after a cut, one more per `limit` successes.
        let mut limit = 18;
        for _ in 0..17 {
            limit = a.update(&sample(100, limit, false));
        }
        assert_eq!(limit, 18, "17 successes are less than a round trip of 18");
        assert_eq!(a.update(&sample(100, 18, false)), 19, "the 18th completes it");
        limit = 19;
        for _ in 0..(19 + 20 + 21) {
            limit = a.update(&sample(100, limit, false));
        }
        assert_eq!(limit, 22, "three more round trips, three more");
        assert_eq!(a.update(&sample(100, 5, false)), 22, "app-limited: not grown");
    }

    #[tokio::test(start_paused = true)]
    async fn the_base_rtt_follows_a_replica_that_became_slower() {
        let mut a = knee();
        // The replica now takes 200 ms: slow against the base of 100 ms, until the window of
        // 10 s forgets it.
        let mut cuts = 0;
        let mut limit = a.limit();
        for _ in 0..60 {
            tokio::time::advance(Duration::from_millis(250)).await;
            let next = a.update(&sample(200, limit, false));
            cuts += usize::from(next < limit);
            limit = next;
        }
        assert_eq!(a.base_rtt(), Some(Duration::from_millis(200)));
        assert!(cuts > 0 && cuts <= 40, "cut while the old base held, then no more: {cuts}");
        let before = a.limit();
        assert!(a.update(&sample(200, before, false)) >= before, "200 ms is the base now");
    }

    #[test]
    fn netflix_and_the_default_are_reachable_from_a_config() {
        let spec = |json: &str| serde_json::from_str::<switchyard_core::Spec>(json).unwrap();
        let netflix = r#"{"name": "aimd", "min_limit": 20, "rtt_tolerance": 0,
            "once_per_rtt": false, "per_rtt_increase": false}"#;
        let params: AimdParams = spec(netflix).params().unwrap();
        assert_eq!(params, AimdParams::netflix());
        let params: AimdParams = spec(r#"{"name": "aimd"}"#).params().unwrap();
        assert_eq!(params, AimdParams::knee());
        assert!(spec(r#"{"name": "aimd", "tolerance": 2}"#).params::<AimdParams>().is_err());
    }

    #[test]
    fn bad_parameters_are_made_consistent() {
        let a = Aimd::new(AimdParams {
            min_limit: 0,
            max_limit: 0,
            backoff_ratio: 2.0,
            rtt_tolerance: 0.5,
            ..AimdParams::default()
        });
        assert_eq!((a.params.min_limit, a.params.max_limit, a.limit()), (1, 1, 1));
        assert_eq!(a.params.backoff_ratio, 0.9);
        assert_eq!(a.params.rtt_tolerance, 0.0, "a tolerance below 1 would call every RTT slow");
    }
}
