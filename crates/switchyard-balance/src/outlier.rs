//! Outlier ejection: endpoints that keep failing are taken out of rotation for a while.
//!
//! The rule is Envoy's consecutive-failures detector. An endpoint whose last
//! [`consecutive_failures`](OutlierConfig::consecutive_failures) responses all failed (gRPC
//! `UNAVAILABLE`, HTTP 502/503/504, or a connection error: see
//! [`Outcome::is_endpoint_failure`](switchyard_core::Outcome::is_endpoint_failure)) is ejected for `base_ejection × n`, where `n` counts its
//! ejections so far, capped at [`max_ejection`](OutlierConfig::max_ejection). It then comes back
//! by itself; one more failure streak sends it away for longer. At most
//! [`max_ejected_share`](OutlierConfig::max_ejected_share) of the pool is ejected at once (at
//! least one endpoint may always be), so a cluster-wide outage does not empty the pool.
//! Requests already in flight on an ejected endpoint finish normally, and their outcomes do not
//! count: an endpoint comes back with a fresh streak, not one its last requests built up while it
//! was away.
//!
//! "In a row" is in the order the requests were sent, not the order they end: a success breaks
//! a streak only if its request was sent no earlier than the streak's first failing request. An answer to
//! a request sent earlier says the endpoint was healthy when it took that request, not that it
//! is now: a replica that starts refusing every new call at once still finishes the calls it had
//! begun, and counted in the order they end, those answers kept resetting the streak while the
//! refusals came back at once, to new calls, faster than anything else (`switchyard bench faults`,
//! fault `unavailable`: 9 calls refused before the ejection where 5 end a streak; 1 of 10 calls
//! succeeded in the 100 ms after the fault). Envoy and linkerd count in the order of the
//! responses; with requests of one length the two orders are the same.
//!
//! A request cancelled by its caller, or whose deadline passed before any byte of its answer,
//! neither breaks nor extends a streak: it says nothing of the endpoint's health either way. Any
//! other outcome that is not a failure (an answer, whatever its status) breaks it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::observer::Observer;

use tokio::time::Instant;

/// Settings of the outlier detector.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 disables ejection. Default 5 (Envoy's).
    pub consecutive_failures: u32,
    /// Ejection time of a first ejection; the n-th lasts n times as long. Default 10 s.
    pub base_ejection: Duration,
    /// Longest ejection. Default 300 s (Envoy's).
    pub max_ejection: Duration,
    /// Largest share of the pool ejected at once, from 0 to 1; one endpoint may always be
    /// ejected. Default 0.5.
    pub max_ejected_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

impl OutlierConfig {
    /// A detector that never ejects.
    pub fn disabled() -> Self {
        Self { consecutive_failures: 0, ..Self::default() }
    }

    /// The same settings, ejecting after `n` failures in a row (0: never).
    pub fn with_consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// The same settings with this first ejection time.
    pub fn with_base_ejection(mut self, base: Duration) -> Self {
        self.base_ejection = base;
        self
    }

    /// The same settings with this longest ejection time.
    pub fn with_max_ejection(mut self, max: Duration) -> Self {
        self.max_ejection = max;
        self
    }

    /// The same settings with this largest ejected share of the pool (0 to 1).
    pub fn with_max_ejected_share(mut self, share: f64) -> Self {
        self.max_ejected_share = share;
        self
    }

    fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection.saturating_mul(times.max(1)).min(self.max_ejection)
    }
}

/// One endpoint's failure streak and ejection.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    consecutive: u32,
    /// When the earliest failing request of the current streak was sent: only a success sent
    /// after it breaks the streak.
    streak_sent: Option<Instant>,
    pub(crate) times_ejected: u32,
    /// Set until the balancer sees the ejection run out (see `try_return`): the endpoint holds
    /// one of the pool's ejection slots exactly while this is `Some`.
    pub(crate) ejected_until: Option<Instant>,
    /// The endpoint left the pool; failures of its last requests eject it no more.
    pub(crate) retired: bool,
}

/// What one outcome means for the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// The streak reached the threshold: eject, if the pool allows.
    Eject,
}

impl OutlierState {
    /// Counts the outcome of a request sent at `sent_at` and ended at `now`.
    pub(crate) fn record(
        &mut self,
        failed: bool,
        config: &OutlierConfig,
        sent_at: Instant,
        now: Instant,
    ) -> Verdict {
        if config.consecutive_failures == 0 {
            return Verdict::Keep;
        }
        if self.ejected_until.is_some_and(|until| now < until) {
            // A request sent before the ejection: the streak starts again when the endpoint
            // returns.
            return Verdict::Keep;
        }
        if !failed {
            // A request sent before the streak began says nothing of the endpoint since.
            if self.streak_sent.is_none_or(|first| sent_at >= first) {
                self.consecutive = 0;
                self.streak_sent = None;
            }
            return Verdict::Keep;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.streak_sent = Some(self.streak_sent.map_or(sent_at, |first| first.min(sent_at)));
        if self.consecutive >= config.consecutive_failures { Verdict::Eject } else { Verdict::Keep }
    }

    /// Whether a failure streak is under way (failures since the last success, in send order).
    pub(crate) fn in_streak(&self) -> bool {
        self.consecutive > 0
    }

    /// Ejects the endpoint until `now` plus its next ejection time; returns that instant.
    pub(crate) fn eject(&mut self, config: &OutlierConfig, now: Instant) -> Instant {
        self.times_ejected = self.times_ejected.saturating_add(1);
        self.consecutive = 0;
        self.streak_sent = None;
        let until = now + config.ejection_time(self.times_ejected);
        self.ejected_until = Some(until);
        until
    }

    /// Takes the endpoint out of the pool for good; true if it held an ejection slot, which the
    /// caller gives back.
    pub(crate) fn retire(&mut self) -> bool {
        self.retired = true;
        self.ejected_until.take().is_some()
    }

    /// Ends an ejection that has run out; true if it did.
    pub(crate) fn try_return(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) if until <= now => {
                self.ejected_until = None;
                true
            }
            _ => false,
        }
    }
}

/// What the endpoints of one balancer share: its name and observer, how many endpoints there
/// are, how many are ejected, and an ejection generation that moves whenever an ejection starts.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) outlier: OutlierConfig,
    pub(crate) size: AtomicUsize,
    pub(crate) ejected: AtomicUsize,
    pub(crate) generation: AtomicU64,
    /// Builds each endpoint's concurrency limit, when endpoints have one.
    pub(crate) endpoint_limit: Option<crate::EndpointLimit>,
    /// Callers waiting while every endpoint is at its limit.
    pub(crate) limit_waiters: Arc<crate::endpoint_limit::LimitWaiters>,
}

impl PoolState {
    pub(crate) fn new(outlier: OutlierConfig) -> Self {
        Self { outlier, ..Self::default() }
    }

    /// A copy of this state (its counts as they are now) changed by `change`: builder methods
    /// replace the pool state this way, so nothing counted so far is lost.
    pub(crate) fn with(&self, change: impl FnOnce(&mut PoolState)) -> Self {
        let mut next = Self {
            name: self.name.clone(),
            observer: self.observer.clone(),
            outlier: self.outlier,
            size: AtomicUsize::new(self.size.load(Ordering::Acquire)),
            ejected: AtomicUsize::new(self.ejected.load(Ordering::Acquire)),
            generation: AtomicU64::new(self.generation.load(Ordering::Acquire)),
            endpoint_limit: self.endpoint_limit.clone(),
            limit_waiters: self.limit_waiters.clone(),
        };
        change(&mut next);
        next
    }

    /// Takes one ejection slot if the pool's share allows another ejection.
    pub(crate) fn try_reserve_ejection(&self, config: &OutlierConfig) -> bool {
        let size = self.size.load(Ordering::Acquire);
        let allowed = ((size as f64 * config.max_ejected_share.clamp(0.0, 1.0)).floor() as usize).max(1);
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < allowed && n < size).then_some(n + 1))
            .is_ok()
    }

    pub(crate) fn release_ejection(&self) {
        let _ = self.ejected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_streak_ejects_and_repeats_eject_longer() {
        let config = OutlierConfig { consecutive_failures: 3, ..OutlierConfig::default() };
        let mut s = OutlierState::default();
        let now = Instant::now();
        assert_eq!(s.record(true, &config, now, now), Verdict::Keep);
        assert_eq!(s.record(true, &config, now, now), Verdict::Keep);
        assert_eq!(s.record(false, &config, now, now), Verdict::Keep, "a success breaks the streak");
        for _ in 0..2 {
            assert_eq!(s.record(true, &config, now, now), Verdict::Keep);
        }
        assert_eq!(s.record(true, &config, now, now), Verdict::Eject);
        assert_eq!(s.eject(&config, now), now + Duration::from_secs(10));
        assert!(!s.try_return(now + Duration::from_secs(9)));
        assert!(s.try_return(now + Duration::from_secs(10)));
        assert_eq!(
            s.eject(&config, now),
            now + Duration::from_secs(20),
            "second ejection lasts twice as long"
        );
        for _ in 0..100 {
            s.eject(&config, now);
        }
        assert_eq!(s.ejected_until, Some(now + Duration::from_secs(300)), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_while_ejected_do_not_count_toward_the_next_ejection() {
        let config = OutlierConfig { consecutive_failures: 3, ..OutlierConfig::default() };
        let mut s = OutlierState::default();
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(s.record(true, &config, now, now), Verdict::Keep);
        }
        assert_eq!(s.record(true, &config, now, now), Verdict::Eject);
        let until = s.eject(&config, now);
        // Requests sent before the ejection keep failing while it lasts.
        for _ in 0..10 {
            assert_eq!(s.record(true, &config, now, now + Duration::from_secs(1)), Verdict::Keep);
        }
        assert!(s.try_return(until));
        assert_eq!(s.record(true, &config, until, until), Verdict::Keep, "a fresh streak after the return");
        assert_eq!(s.record(true, &config, until, until), Verdict::Keep);
        assert_eq!(s.record(true, &config, until, until), Verdict::Eject);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_success_sent_after_the_streak_began_breaks_it() {
        let config = OutlierConfig { consecutive_failures: 3, ..OutlierConfig::default() };
        let mut s = OutlierState::default();
        let before = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let first = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let now = Instant::now();
        // The endpoint starts refusing new calls; calls it took before finish fine in between.
        assert_eq!(s.record(true, &config, first, now), Verdict::Keep);
        assert_eq!(s.record(false, &config, before, now), Verdict::Keep);
        assert_eq!(s.record(true, &config, now, now), Verdict::Keep);
        assert_eq!(s.record(false, &config, before, now), Verdict::Keep);
        assert_eq!(
            s.record(true, &config, now, now),
            Verdict::Eject,
            "answers to calls sent before the first failure do not break the streak"
        );
        s.eject(&config, now);
        assert!(s.try_return(now + Duration::from_secs(10)));
        let later = now + Duration::from_secs(10);
        assert_eq!(s.record(true, &config, later, later), Verdict::Keep);
        assert_eq!(s.record(true, &config, later, later), Verdict::Keep);
        assert_eq!(s.record(false, &config, later, later), Verdict::Keep, "a call sent since breaks it");
        assert_eq!(s.record(true, &config, later, later), Verdict::Keep);
    }

    #[test]
    fn the_pool_caps_ejections_but_always_allows_one() {
        let pool = PoolState::default();
        pool.size.store(4, Ordering::Release);
        let config = OutlierConfig { max_ejected_share: 0.5, ..OutlierConfig::default() };
        assert!(pool.try_reserve_ejection(&config));
        assert!(pool.try_reserve_ejection(&config));
        assert!(!pool.try_reserve_ejection(&config), "half of four");
        pool.release_ejection();
        assert!(pool.try_reserve_ejection(&config));
        let tiny = PoolState::default();
        tiny.size.store(1, Ordering::Release);
        let none = OutlierConfig { max_ejected_share: 0.0, ..OutlierConfig::default() };
        assert!(tiny.try_reserve_ejection(&none), "one may always be ejected");
        assert!(!tiny.try_reserve_ejection(&none));
    }

    #[test]
    fn disabled_never_ejects() {
        let mut s = OutlierState::default();
        for _ in 0..100 {
            assert_eq!(
                s.record(true, &OutlierConfig::disabled(), Instant::now(), Instant::now()),
                Verdict::Keep
            );
        }
    }
}
