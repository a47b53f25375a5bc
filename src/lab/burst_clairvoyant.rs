//! The `burst` scenario's `clairvoyant` autoscaler: a bound, not a product.
//!
//! It is given the workload's arrivals in advance and sizes the pool from them, so its row says
//! what the lab's set-up allows an autoscaler to reach (whole replicas, a cold start, the same
//! target utilisation), measured through the same pool, cold start and drain as every other
//! autoscaler rather than computed. No deployed autoscaler can know its future arrivals; nothing
//! outside the lab should use it.
//!
//! # Formula
//!
//! Every second (the decision interval of Switchyard's recommender), at `t` seconds from the
//! start of the arrivals:
//!
//! ```text
//! rate        λ(s) = arrivals in [s, s + rate_window) / rate_window       (requests a second)
//! needed      n(s) = ceil(λ(s) / (target_utilisation × C))              (whole replicas)
//! desired     d(t) = max { n(s) : s = t − hold, …, t, t + 1 s, …, t + lead }
//!                                                        (lead = cold start, hold = 0)
//! ```
//!
//! `C` is one replica's measured capacity on the workload's request mix, and the target
//! utilisation is the 0.7 the lab calibrates every autoscaler to. A replica started at `t` is
//! ready at `t + cold start`, so `n(t + cold start)` enters the maximum exactly when a replica
//! started for it is ready in time (provisioning early by nothing); and a replica is let go as
//! soon as no second up to one cold start ahead needs it (a replica needed later than that can be
//! started again in time), so the pool scales down as early as the future allows. It reads no
//! signal: the arrivals are all it needs. `rate_window` (10 s) smooths the count of a Poisson
//! process (at 45 requests a second a one-second count varies by ±15 %); a window reaching past
//! the last arrival counts over what is left of it, so the workload's end does not read as a
//! fall. The rate is of requests, not tokens, since `C` is measured in requests a second on the
//! same request mix.
//!
//! It runs through the [`Autoscaler`](switchyard_autoscale::Autoscaler) loop and the lab's
//! [`SimPool`](super::burst_pool::SimPool) like the others: its SLO attainment and replica-seconds
//! are the simulation's, including the drain of the replicas it lets go and the queue a burst
//! builds while its replicas start.

use std::time::Duration;

use switchyard_autoscale::{Bounds, PoolSize, Recommendation, Recommender, Signals};
use switchyard_sim::TraceRecord;
use tokio::time::Instant;

/// Settings of [`Clairvoyant`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ClairvoyantConfig {
    /// One replica's capacity, requests a second.
    pub(crate) capacity_rps: f64,
    /// Share of a replica's capacity to plan for (the lab's 0.7).
    pub(crate) target_utilisation: f64,
    /// How far ahead it provisions: a replica's cold start.
    pub(crate) lead: Duration,
    /// Rates are counted over this window (10 s).
    pub(crate) rate_window: Duration,
    /// Keeps what the last this long needed (zero: lets go as soon as the future allows; a
    /// scale-down window, to measure what one costs).
    pub(crate) hold: Duration,
    /// Replica bounds.
    pub(crate) bounds: Bounds,
}

/// The clairvoyant recommender (see the [module docs](self)).
#[derive(Debug, Clone)]
pub(crate) struct Clairvoyant {
    config: ClairvoyantConfig,
    /// The instant the arrivals are timed from.
    origin: Instant,
    /// Arrival times, seconds from `origin`, ascending.
    arrivals: Vec<f64>,
}

impl Clairvoyant {
    /// The recommender for `records`, whose times count from `origin`.
    pub(crate) fn new(config: ClairvoyantConfig, origin: Instant, records: &[TraceRecord]) -> Self {
        let mut arrivals: Vec<f64> = records.iter().map(|r| r.at.as_secs_f64()).collect();
        arrivals.sort_by(f64::total_cmp);
        Self { config, origin, arrivals }
    }

    /// Requests arriving in `[from, to)` seconds.
    fn arrivals_between(&self, from: f64, to: f64) -> usize {
        let lo = self.arrivals.partition_point(|&a| a < from);
        let hi = self.arrivals.partition_point(|&a| a < to);
        hi - lo
    }

    /// `n(s)`: the whole replicas the rate from `s` on needs at the target.
    fn needed_at(&self, s: f64) -> u32 {
        let c = &self.config;
        let window = c.rate_window.as_secs_f64().max(1e-3);
        // A window reaching past the last arrival is the rate of what is left of it (at least a
        // second), not that rate thinned by the empty time after the workload's end.
        let last = self.arrivals.last().copied().unwrap_or(0.0);
        let span = window.min(last - s).max(1.0);
        let rate = self.arrivals_between(s, s + window) as f64 / span;
        let per_replica = (c.target_utilisation * c.capacity_rps).max(1e-9);
        let needed = (rate / per_replica).ceil();
        if needed >= f64::from(u32::MAX) { u32::MAX } else { needed as u32 }
    }

    /// `d(t)`: the most any second from `t` (`t − hold`) to one lead ahead needs, within the
    /// bounds.
    pub(crate) fn desired_at(&self, t: f64) -> u32 {
        let lead = self.config.lead.as_secs_f64().max(0.0).floor() as i64;
        let hold = self.config.hold.as_secs_f64().max(0.0).floor() as i64;
        let most = (-hold..=lead).map(|k| self.needed_at(t + k as f64)).max().unwrap_or(0);
        self.config.bounds.clamp(most)
    }
}

impl Recommender for Clairvoyant {
    fn name(&self) -> &'static str {
        "clairvoyant"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn recommend(&mut self, now: Instant, _size: PoolSize, _signals: Option<&Signals>) -> Recommendation {
        let t = now.saturating_duration_since(self.origin).as_secs_f64();
        let desired = self.desired_at(t);
        Recommendation { desired, reason: "clairvoyant: the arrivals one cold start ahead", metric: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arrivals at `rate` a second, evenly spaced, from `from` to `to` seconds.
    fn even(rate: f64, from: f64, to: f64) -> Vec<TraceRecord> {
        let n = ((to - from) * rate).round() as usize;
        (0..n)
            .map(|i| TraceRecord {
                at: Duration::from_secs_f64(from + i as f64 / rate),
                prompt_tokens: 100,
                output_tokens: 100,
                prefix: Default::default(),
            })
            .collect()
    }

    fn config() -> ClairvoyantConfig {
        ClairvoyantConfig {
            capacity_rps: 10.0,
            target_utilisation: 0.7,
            lead: Duration::from_secs(30),
            rate_window: Duration::from_secs(10),
            hold: Duration::ZERO,
            bounds: Bounds::new(1, 12),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn provisions_one_cold_start_ahead_and_lets_go_as_soon_as_the_future_allows() {
        // Replicas of 10 a second at a 0.5 target carry 5 a second each. 5 a second (1 replica)
        // until 100 s, 20 a second (4 replicas) from 100 s to 200 s, 5 again until 400 s.
        let mut records = even(5.0, 0.0, 100.0);
        records.extend(even(20.0, 100.0, 200.0));
        records.extend(even(5.0, 200.0, 400.0));
        let config = ClairvoyantConfig { target_utilisation: 0.5, ..config() };
        let mut c = Clairvoyant::new(config, Instant::now(), &records);
        let mut asked = Vec::new();
        for _ in 0..300 {
            asked.push(c.recommend(Instant::now(), PoolSize::default(), None).desired);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // At 61 s the window one cold start ahead ([91 s, 101 s)) holds one second of the burst:
        // 5 × 9 + 20 = 65 in 10 s, 1.3 replicas, 2. At 60 s it holds none.
        assert_eq!(asked[60], 1, "nothing is started earlier than a cold start + a window ahead");
        assert_eq!(asked[61], 2);
        // The window from s holds s − 90 seconds of the burst, 50 + 15 (s − 90) requests: over
        // 100 (3 replicas) from 94 s, over 150 (4) from 97 s, one cold start later than now.
        assert_eq!(asked[63], 2);
        assert_eq!(asked[64], 3);
        assert_eq!(asked[66], 3);
        assert_eq!(asked[67], 4, "all 4 by a cold start before the window is mostly burst");
        assert!(asked[67..194].iter().all(|&d| d == 4), "held through the burst: {asked:?}");
        // From 194 s the windows ahead hold less of the burst: 3, then 2 from 197 s (95 in 10 s).
        assert_eq!(asked[194], 3);
        assert_eq!(asked[197], 2);
        assert_eq!(asked[200], 1, "the last replica of the burst goes as the burst ends");
        assert!(asked[200..].iter().all(|&d| d == 1), "{asked:?}");
        // Up to the cold start's lead ahead, never further: with no lead it asks for what the
        // window from now needs, and the burst's first replicas are asked for at 91 s.
        let now_only = ClairvoyantConfig { lead: Duration::ZERO, ..config };
        let c = Clairvoyant::new(now_only, Instant::now(), &records);
        assert_eq!(c.desired_at(90.0), 1);
        assert_eq!(c.desired_at(91.0), 2);
        // A 10 s hold keeps what the last 10 s needed: 4 until 203 s (the window from 193 s
        // needed 4), 3 at 204 s, 1 from 210 s.
        let held = Clairvoyant::new(
            ClairvoyantConfig { hold: Duration::from_secs(10), ..config },
            Instant::now(),
            &records,
        );
        assert_eq!(held.desired_at(203.0), 4);
        assert_eq!(held.desired_at(204.0), 3);
        assert_eq!(held.desired_at(210.0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_arrivals_it_keeps_the_bounds_minimum() {
        let mut c = Clairvoyant::new(config(), Instant::now(), &[]);
        let r = c.recommend(Instant::now(), PoolSize { desired: 5, current: 5, ready: 5 }, None);
        assert_eq!(r.desired, 1);
    }
}
