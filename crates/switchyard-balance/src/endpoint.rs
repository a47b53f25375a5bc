//! The live state of one endpoint: what the balancer tracks and what policies read.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use switchyard_core::{Endpoint, EndpointId, Load, ReportedLoad};
use tokio::time::Instant;

use crate::outlier::{OutlierConfig, OutlierState, Verdict};

/// How load is tracked: the peak-EWMA latency's decay and prior.
///
/// The defaults are linkerd's and tower's: a 10 s decay and a 30 ms prior RTT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackingConfig {
    /// Time constant of the latency EWMA: a sample's weight falls to 1/e after this long.
    pub decay: Duration,
    /// The latency assumed for an endpoint that has not answered yet.
    pub default_rtt: Duration,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self { decay: Duration::from_secs(10), default_rtt: Duration::from_millis(30) }
    }
}

/// One endpoint's live load: in-flight requests, the peak-EWMA latency, the last load report its
/// replica sent, its outcome counters and its ejection state.
///
/// The balancer owns one per endpoint and shares it (behind an `Arc`) with policies, with the
/// futures of the requests in flight, and with the [`LoadBoard`](crate::LoadBoard). Reads are
/// cheap: atomics, and short uncontended locks for the latency and the report.
#[derive(Debug)]
pub struct EndpointState {
    endpoint: Endpoint,
    tracking: TrackingConfig,
    in_flight: AtomicU32,
    completed: AtomicU64,
    failed: AtomicU64,
    rtt: Mutex<Option<RttEstimate>>,
    report: Mutex<Option<(Arc<ReportedLoad>, Instant)>>,
    pub(crate) outlier: Mutex<OutlierState>,
}

#[derive(Debug, Clone, Copy)]
struct RttEstimate {
    nanos: f64,
    at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the value consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EndpointState {
    /// A fresh state for `endpoint`: nothing in flight, no latency sample, no report.
    pub fn new(endpoint: Endpoint, tracking: TrackingConfig) -> Self {
        Self {
            endpoint,
            tracking,
            in_flight: AtomicU32::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rtt: Mutex::new(None),
            report: Mutex::new(None),
            outlier: Mutex::new(OutlierState::default()),
        }
    }

    /// The endpoint as discovery described it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint's id.
    pub fn id(&self) -> &EndpointId {
        &self.endpoint.id
    }

    /// Requests sent and not yet ended.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Responses ended since the endpoint was added, and how many of them failed.
    pub fn outcomes(&self) -> (u64, u64) {
        (self.completed.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    /// The peak-EWMA latency at `now`, decayed towards zero since its last sample (so an idle
    /// endpoint is tried again), or `None` before the first sample.
    pub fn latency_ewma(&self, now: Instant) -> Option<Duration> {
        let rtt = *lock(&self.rtt);
        rtt.map(|r| Duration::from_nanos(self.decayed(r, now) as u64))
    }

    /// The latency estimate policies use: [`latency_ewma`](Self::latency_ewma), or the
    /// configured default RTT before the first sample. In nanoseconds.
    pub fn latency_estimate_nanos(&self, now: Instant) -> f64 {
        match *lock(&self.rtt) {
            Some(r) => self.decayed(r, now),
            None => self.tracking.default_rtt.as_nanos() as f64,
        }
    }

    /// The peak-EWMA cost of tower and linkerd: latency estimate × (in-flight + 1).
    pub fn peak_ewma_cost(&self, now: Instant) -> f64 {
        self.latency_estimate_nanos(now) * f64::from(self.in_flight() + 1)
    }

    fn decayed(&self, r: RttEstimate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(r.at).as_nanos() as f64;
        r.nanos * (-elapsed / self.decay_nanos()).exp()
    }

    fn decay_nanos(&self) -> f64 {
        (self.tracking.decay.as_nanos() as f64).max(1.0)
    }

    /// The last report, with when it arrived.
    pub fn report(&self) -> Option<(Arc<ReportedLoad>, Instant)> {
        lock(&self.report).clone()
    }

    /// The last report if it arrived no more than `max_age` before `now`.
    pub fn fresh_report(&self, now: Instant, max_age: Duration) -> Option<Arc<ReportedLoad>> {
        match &*lock(&self.report) {
            Some((r, at)) if now.saturating_duration_since(*at) <= max_age => Some(r.clone()),
            _ => None,
        }
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        lock(&self.outlier).ejected_until.is_some_and(|until| now < until)
    }

    /// The snapshot published on the [`LoadBoard`](crate::LoadBoard).
    pub fn load(&self, now: Instant) -> Load {
        let (completed, failed) = self.outcomes();
        let (report, report_at) = match self.report() {
            Some((r, at)) => (Some((*r).clone()), Some(at)),
            None => (None, None),
        };
        Load {
            in_flight: self.in_flight(),
            latency_ewma: self.latency_ewma(now),
            completed,
            failed,
            report,
            report_at,
        }
    }

    /// Counts a request as sent; the returned guard counts it as ended when dropped.
    pub(crate) fn start(self: &Arc<Self>, now: Instant) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { state: self.clone(), sent_at: now, sampled: false, ended: false }
    }

    fn record_rtt(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let mut guard = lock(&self.rtt);
        let next = match *guard {
            // Peak: a slower sample replaces the estimate at once.
            Some(r) if self.decayed(r, now) >= sample => {
                let elapsed = now.saturating_duration_since(r.at).as_nanos() as f64;
                let w = (-elapsed / self.decay_nanos()).exp();
                r.nanos * w + sample * (1.0 - w)
            }
            _ => sample,
        };
        *guard = Some(RttEstimate { nanos: next, at: now });
    }

    pub(crate) fn record_report(&self, report: ReportedLoad, now: Instant) {
        *lock(&self.report) = Some((Arc::new(report), now));
    }

    fn finish(&self, failed: bool, outlier: &OutlierConfig, now: Instant) -> Verdict {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.completed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.outlier).record(failed, outlier, now)
    }
}

/// One request in flight on an endpoint. Dropping it ends the request: the in-flight count goes
/// down, and unless a latency sample was taken earlier (see [`first_byte`](Self::first_byte)),
/// the time since sending becomes one.
#[derive(Debug)]
pub(crate) struct InFlight {
    state: Arc<EndpointState>,
    sent_at: Instant,
    sampled: bool,
    ended: bool,
}

impl InFlight {
    pub(crate) fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// Takes the latency sample now, if none was taken yet.
    pub(crate) fn first_byte(&mut self) {
        if !self.sampled {
            self.sampled = true;
            let now = Instant::now();
            self.state.record_rtt(now.saturating_duration_since(self.sent_at), now);
        }
    }

    /// Ends the request with its outcome; returns what the outlier detector decided.
    pub(crate) fn end(mut self, failed: bool, outlier: &OutlierConfig) -> Verdict {
        self.first_byte();
        self.ended = true;
        self.state.finish(failed, outlier, Instant::now())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            // Ended without an outcome (the caller dropped the response): neither success nor
            // failure for the outlier detector.
            self.first_byte();
            self.state.finish(false, &OutlierConfig::disabled(), Instant::now());
        }
    }
}
