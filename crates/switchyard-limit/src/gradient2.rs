//! Gradient2: Netflix's concurrency-limits `Gradient2Limit`.
//!
//! Gradient2 compares the current RTT (`short`) with a long exponential average of it (`long`,
//! over `long_window` samples, or `long_window_ms`) and shrinks the limit in proportion when the current one runs
//! ahead, while adding a fixed `queue_size` of headroom every sample so that it keeps probing:
//!
//! ```text
//! long = long + (rtt − long) × 2 / (long_window + 1)     (a plain average of the first 10)
//! long / rtt > 2        → long = long × 0.95             (recover quickly after a load spike)
//! in_flight < limit / 2 → unchanged                      (app-limited)
//! gradient = clamp(rtt_tolerance × long / rtt, 0.5, 1)
//! new      = limit × gradient + queue_size + queue_share × limit
//! limit    = limit × (1 − smoothing) + new × smoothing, clamped to [min_limit, max_limit]
//! ```
//!
//! Here `queue_size` may grow with the limit (`queue_size + queue_share × limit`, as Netflix's
//! builder takes a function of the limit), the long window may be a time (`long_window_ms`: the
//! window in samples is that time at the rate samples have come so far), and `smoothing` may
//! weigh a round trip's worth of samples (`limit` of them) instead of each one. The formula is
//! Netflix's. Gradient2 reads no drop signal: a dropped request counts by its RTT only.
//!
//! # Defaults, and Netflix's
//!
//! [`Gradient2Params::netflix`] (and [`Gradient2::netflix`]) are Netflix's exactly: initial 20,
//! min 20, max 200, smoothing 0.2 a sample, queue size 4, long window 600 samples, RTT
//! tolerance 1.5. Fed every request, they do not find the knee (`tests/convergence.rs`, a
//! 40-slot replica: 146-400 % off after 30 s), for three reasons:
//!
//! - the long window counts samples: at hundreds of requests a second 600 samples span under a
//!   second, the long RTT follows the short one and the gradient says nothing;
//! - the smoothing is per sample: once past the knee, every request in flight comes back slow
//!   and each takes the limit down by up to 10 %, so one round trip of `L` late samples cuts it
//!   by `0.9^L` (to the minimum), and it climbs back, a sawtooth;
//! - the tolerance of 1.5 accepts a queue: where the RTT grows as `L / k` past a knee `k` and
//!   the long RTT is the no-load one, the fixed point of `L = L × 1.5 k / L + 4` is `1.5 k + 4`,
//!   60 % above the knee (behind [`Windowed`](crate::Windowed), one sample a second as
//!   Netflix's `WindowedLimit` feeds it, it settles there, and higher as the long average creeps).
//!
//! [`Gradient2Params::knee`] (and [`Gradient2::knee`]), **the default**, keeps the formula and fixes each: the long window is 600 s (what
//! Netflix's 600 samples span at their one windowed sample a second), so the long RTT stays the
//! no-load RTT of the first samples for minutes; the smoothing of 0.2 weighs one round trip, so
//! the limit moves by at most a fifth of the way a round trip whatever its size; the tolerance is
//! 1.0 (no queue accepted) and the headroom is 8 % of the limit instead of 4 requests, so that the
//! fixed point scales with the knee: the limit settles where `E[min(1, long / rtt)] = 0.92`,
//! about 10 % past the knee, and grows by 1.6 % a round trip below it. The headroom must exceed
//! what the RTT's own noise costs the gradient below the knee (2.3 % for a service time ±10 %,
//! `tests/convergence.rs`), or the limit sinks; a service whose RTT varies more per request (LLM
//! prompts of 100 and 8,000 tokens) needs [`Windowed`](crate::Windowed) or a larger share. The
//! limit starts at 4 (min 1, max 1000), under the knee, so that the first samples (the long RTT's
//! plain average of 10) are no-load ones. In `tests/convergence.rs` (replicas of 8 to 128
//! slots, offered twice their capacity) it is within 8-19 % of the knee after 30 s. Over
//! minutes the long average still follows the short RTT, which runs ~10 % above it, so the limit
//! creeps (17-28 % above the knee after 300 s): Gradient2 has no no-load baseline of its own
//! (Vegas and Envoy's gradient do).
//!
//! `knee` is the default (a bare `"gradient2"` in a config gets it) because it is what finds a
//! replica's knee with no hand-set limit. Its limit is only as good as the per-request RTT is
//! steady at no load: in lab `overload` (LLM requests from the Azure trace, RTTs spanning two
//! orders of magnitude at no load) the gradient sits far below 0.92 at any load and the limit
//! sinks (goodput 0.036 of capacity at 0.5×, 0.007 at 3×, against 0.280 at 3× with Netflix's;
//! behind `Windowed` 0.019 against 0.534; `reports/lab/overload.md`). For such traffic use
//! Netflix's parameters, best behind [`Windowed`](crate::Windowed): `{ name = "gradient2",
//! initial_limit = 20, min_limit = 20, max_limit = 200, smoothing_per_round = false,
//! queue_size = 4, queue_share = 0, long_window = 600, long_window_ms = 0, rtt_tolerance = 1.5 }`
//! (`long_window_ms = 0`: the window counts samples), or [`Gradient2::netflix`] in code.
//!
//! Source: Netflix/concurrency-limits, `com.netflix.concurrency.limits.limit.Gradient2Limit`.

use std::time::Duration;

use tokio::time::Instant;

use crate::algorithm::{LimitAlgorithm, Sample};

/// The parameters of [`Gradient2`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gradient2Params {
    /// The limit to start from.
    pub initial_limit: usize,
    /// The lowest limit.
    pub min_limit: usize,
    /// The highest limit.
    pub max_limit: usize,
    /// Weight of a new limit against the old one, in (0, 1].
    pub smoothing: f64,
    /// Whether `smoothing` weighs one round trip's worth of samples (`limit` of them, each then
    /// weighing `1 − (1 − smoothing)^(1/limit)`) rather than each sample.
    pub smoothing_per_round: bool,
    /// Headroom added every sample, in requests.
    pub queue_size: f64,
    /// Headroom added every sample as a share of the limit (Netflix's `queueSize` as a function
    /// of the limit), in [0, 1).
    pub queue_share: f64,
    /// Samples the long RTT averages over, when `long_window_ms` is not set.
    pub long_window: usize,
    /// Time the long RTT averages over, in milliseconds: the window in samples is this time at
    /// the rate samples have come so far. Overrides `long_window`; 0 means unset.
    pub long_window_ms: Option<u64>,
    /// How far the current RTT may exceed the long one before the limit shrinks (≥ 1).
    pub rtt_tolerance: f64,
}

impl Gradient2Params {
    /// Parameters that find a replica's knee with no hand-set limit (see the
    /// [module docs](self)): initial 4, min 1, max 1000, smoothing 0.2 a round trip, headroom 8 %
    /// of the limit, long window 600 s, RTT tolerance 1.0. For a service whose RTT varies little
    /// per request at no load; not for LLM requests of very different sizes (they sink it).
    pub fn knee() -> Self {
        Self {
            initial_limit: 4,
            min_limit: 1,
            max_limit: 1000,
            smoothing: 0.2,
            smoothing_per_round: true,
            queue_size: 0.0,
            queue_share: 0.08,
            long_window: 600,
            long_window_ms: Some(600_000),
            rtt_tolerance: 1.0,
        }
    }

    /// Netflix's defaults, exactly: initial 20, min 20, max 200, smoothing 0.2, queue size 4,
    /// long window 600 samples, RTT tolerance 1.5.
    pub fn netflix() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            smoothing: 0.2,
            smoothing_per_round: false,
            queue_size: 4.0,
            queue_share: 0.0,
            long_window: 600,
            long_window_ms: None,
            rtt_tolerance: 1.5,
        }
    }
}

impl Default for Gradient2Params {
    /// The knee-finding parameters ([`Gradient2Params::knee`]).
    fn default() -> Self {
        Self::knee()
    }
}

/// Samples averaged plainly before the long RTT becomes exponential.
const WARMUP: usize = 10;

/// Netflix's Gradient2 limit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Gradient2 {
    params: Gradient2Params,
    limit: f64,
    long_rtt: f64,
    samples: usize,
    first: Option<Instant>,
}

impl Gradient2 {
    /// A Gradient2 limit with `params` (bounds made consistent).
    pub fn new(mut params: Gradient2Params) -> Self {
        let fallback = Gradient2Params::default();
        params.min_limit = params.min_limit.max(1);
        params.max_limit = params.max_limit.max(params.min_limit);
        if !(params.smoothing > 0.0 && params.smoothing <= 1.0) {
            params.smoothing = fallback.smoothing;
        }
        if params.rtt_tolerance.is_nan() {
            params.rtt_tolerance = fallback.rtt_tolerance;
        }
        params.rtt_tolerance = params.rtt_tolerance.max(1.0);
        params.long_window = params.long_window.max(1);
        params.long_window_ms = params.long_window_ms.filter(|&ms| ms > 0);
        if !params.queue_size.is_finite() || params.queue_size < 0.0 {
            params.queue_size = fallback.queue_size;
        }
        if !(params.queue_share >= 0.0 && params.queue_share < 1.0) {
            params.queue_share = fallback.queue_share;
        }
        let limit = params.initial_limit.clamp(params.min_limit, params.max_limit) as f64;
        Self { params, limit, long_rtt: 0.0, samples: 0, first: None }
    }

    /// Gradient2 with Netflix's defaults ([`Gradient2Params::netflix`]).
    pub fn netflix() -> Self {
        Self::new(Gradient2Params::netflix())
    }

    /// Gradient2 that finds a replica's knee ([`Gradient2Params::knee`]), as `default()`.
    pub fn knee() -> Self {
        Self::new(Gradient2Params::knee())
    }

    /// The long RTT average, once a sample has come.
    pub fn long_rtt(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_secs_f64(self.long_rtt))
    }

    /// The long window in samples: `long_window`, or `long_window_ms` at the rate samples have
    /// come since the first (never fewer than the warm-up).
    fn window_samples(&self, now: Instant) -> f64 {
        match (self.params.long_window_ms, self.first) {
            (Some(ms), Some(first)) => {
                let elapsed = now.saturating_duration_since(first).as_secs_f64();
                if elapsed <= 0.0 {
                    return f64::INFINITY;
                }
                let rate = (self.samples - 1) as f64 / elapsed;
                (rate * ms as f64 / 1000.0).max(WARMUP as f64)
            }
            _ => self.params.long_window as f64,
        }
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Self::new(Gradient2Params::default())
    }
}

impl LimitAlgorithm for Gradient2 {
    fn name(&self) -> &'static str {
        "gradient2"
    }

    fn limit(&self) -> usize {
        self.limit as usize
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let short = sample.rtt.as_secs_f64().max(1e-9);
        self.samples += 1;
        self.first.get_or_insert(sample.now);
        if self.samples <= WARMUP {
            self.long_rtt += (short - self.long_rtt) / self.samples as f64;
        } else {
            let factor = 2.0 / (self.window_samples(sample.now) + 1.0);
            self.long_rtt += (short - self.long_rtt) * factor;
        }
        if self.long_rtt / short > 2.0 {
            self.long_rtt *= 0.95;
        }
        let p = &self.params;
        if (sample.in_flight as f64) < self.limit / 2.0 {
            return self.limit();
        }
        let gradient = (p.rtt_tolerance * self.long_rtt / short).clamp(0.5, 1.0);
        let queue = p.queue_size + p.queue_share * self.limit;
        let new = self.limit * gradient + queue;
        let smoothing = if p.smoothing_per_round {
            1.0 - (1.0 - p.smoothing).powf(1.0 / self.limit.max(1.0))
        } else {
            p.smoothing
        };
        let new = self.limit * (1.0 - smoothing) + new * smoothing;
        self.limit = new.clamp(p.min_limit as f64, p.max_limit as f64);
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample;

    fn gradient2() -> Gradient2 {
        Gradient2::new(Gradient2Params { initial_limit: 50, min_limit: 5, ..Gradient2Params::netflix() })
    }

    #[tokio::test(start_paused = true)]
    async fn grows_while_latency_holds_and_shrinks_when_it_rises() {
        let mut g = gradient2();
        let mut limit = 50;
        for _ in 0..50 {
            limit = g.update(&sample(100, limit, false));
        }
        assert!(limit > 80, "steady latency: it probes upwards ({limit})");
        let high = limit;
        // Latency triples: the gradient hits its floor of 0.5.
        for _ in 0..30 {
            limit = g.update(&sample(300, limit, false));
        }
        assert!(limit < high / 2, "rising latency: it backs off ({high} → {limit})");
        assert_eq!(g.update(&sample(300, 1, false)), limit, "app-limited: unchanged");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drop_counts_by_its_rtt_only() {
        let mut a = gradient2();
        let mut b = gradient2();
        for _ in 0..20 {
            a.update(&sample(100, 50, false));
            b.update(&sample(100, 50, false));
        }
        assert_eq!(a.update(&sample(100, 50, true)), b.update(&sample(100, 50, false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_window_in_time_does_not_follow_a_fast_stream_of_samples() {
        let mut by_time = Gradient2::knee();
        let mut by_count = Gradient2::netflix();
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(1)).await;
            by_time.update(&sample(100, 4, false));
            by_count.update(&sample(100, 20, false));
        }
        // A second of samples at 1,000 a second, three times slower.
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            by_time.update(&sample(300, 4, false));
            by_count.update(&sample(300, 20, false));
        }
        let ms = |g: &Gradient2| g.long_rtt().unwrap().as_millis();
        assert!(ms(&by_time) < 110, "600 s window: still the old RTT ({} ms)", ms(&by_time));
        assert!(ms(&by_count) > 200, "600 samples: follows the new one ({} ms)", ms(&by_count));
    }

    #[test]
    fn netflix_is_reachable_from_a_config() {
        let netflix: Gradient2Params = serde_json::from_str(
            r#"{"initial_limit": 20, "min_limit": 20, "max_limit": 200, "smoothing_per_round": false,
                "queue_size": 4, "queue_share": 0, "long_window": 600, "long_window_ms": 0,
                "rtt_tolerance": 1.5}"#,
        )
        .unwrap();
        assert_eq!(Gradient2::new(netflix).params, Gradient2::netflix().params);
        assert_eq!(Gradient2::default().params, Gradient2Params::knee());
    }
}
