//! Signals: what the recommenders size the pool from, read in process from the balancer's
//! [`LoadBoard`].
//!
//! One [`Signals`] value is a snapshot of the pool at one instant: per ready replica its requests
//! in flight, the requests and work (prompt tokens) still waiting for a first byte, its learnt
//! capacity ([`EndpointState::slots`] and [`EndpointState::idle_unit_time_nanos`], see
//! [`switchyard_balance::capacity`]), and its last ORCA report (queue depth, KV-cache use) when
//! that report is fresh; for the pool, the arrival rate and the work rate, derived from the change
//! of the board's counters (requests started, and [work started](EndpointState::started_work))
//! between two samples. Nothing is counted a second time: every figure is read off the board the
//! balancer keeps.
//!
//! The work rate is what the pool is asked to do, in units of work (prompt tokens) a second. It
//! comes from cumulative counters, not from a snapshot of what is waiting, so it does not depend
//! on how many replicas share the load: a snapshot of the work still awaiting a first byte shrinks
//! as the pool grows (each of many lightly loaded replicas holds less, and for less time), a
//! counter of work started does not.
//!
//! # Missing and stale signals
//!
//! A report older than [`BoardSignals::with_max_report_age`] (10 s by default) is treated as
//! missing, not as zero: [`ReplicaSignals::report`] is `None`. The arrival rate is `None` on the
//! first sample. A source that cannot answer (a Prometheus server down) yields no `Signals` at
//! all, and the [`Autoscaler`](crate::Autoscaler) then calls its recommender with `None`. Every
//! recommender in this crate treats a missing signal conservatively, as the Kubernetes HPA does: it
//! may keep or raise the replica count, never lower it.
//!
//! # Other sources
//!
//! [`SignalSource`] is the hook for a fleet of gateways: [`crate::prometheus`] asks a Prometheus
//! server's query API for the same figures (summed over the gateways' exported board metrics) and
//! returns the same [`Signals`].

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_balance::{EndpointState, LoadBoard};
use switchyard_core::{EndpointId, ReportedLoad};
use tokio::time::Instant;

/// How old an ORCA report may be before it counts as missing, by default.
pub const DEFAULT_MAX_REPORT_AGE: Duration = Duration::from_secs(10);

/// One ready replica's signals.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSignals {
    /// The replica.
    pub id: EndpointId,
    /// Requests sent and not yet ended.
    pub in_flight: u32,
    /// Requests in flight still waiting for their first byte.
    pub awaiting_first_byte: u32,
    /// The work (prompt tokens, or one per request without sizes) of those requests.
    pub pending_work: u64,
    /// The learnt capacity in units of work per second: `slots × 10⁹ / no-load nanoseconds per
    /// unit`. `None` until the balancer has seen an answer sent with nothing ahead.
    pub capacity_per_sec: Option<f64>,
    /// The replica's last ORCA report, if it is fresh.
    pub report: Option<ReportedLoad>,
}

/// A snapshot of the pool's load, as the recommenders read it.
///
/// Built with [`Signals::new`] and the `with_*` methods (it may gain fields: a new signal is not
/// a breaking change); read through its fields.
///
/// ```
/// use switchyard_autoscale::Signals;
/// use tokio::time::Instant;
///
/// let signals = Signals::new(Instant::now(), Vec::new()).with_arrival_rate(2.0).with_work_rate(None);
/// assert_eq!((signals.arrival_rate, signals.work_rate, signals.held), (Some(2.0), None, None));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Signals {
    /// When it was taken.
    pub at: Instant,
    /// The ready replicas: on the board and not draining (an ejected one counts). Ordered by id.
    pub replicas: Vec<ReplicaSignals>,
    /// Requests started per second across the pool since the previous sample; `None` on the first.
    pub arrival_rate: Option<f64>,
    /// Work (prompt tokens, or one per request without sizes) started per second across the pool
    /// since the previous sample ([`EndpointState::started_work`]); `None` on the first, and from a
    /// source that cannot tell.
    pub work_rate: Option<f64>,
    /// Requests waiting in front of the pool for a replica (the gateway's queue), when the caller
    /// knows it: what wakes a pool scaled to zero.
    pub held: Option<u64>,
}

impl Signals {
    /// A snapshot at `at` of `replicas`, with no rate and nothing held known (each missing until
    /// set with the `with_*` methods).
    pub fn new(at: Instant, replicas: Vec<ReplicaSignals>) -> Self {
        Self { at, replicas, arrival_rate: None, work_rate: None, held: None }
    }

    /// An empty snapshot at `at`: no replica, no rate.
    pub fn empty(at: Instant) -> Self {
        Self::new(at, Vec::new())
    }

    /// With the arrival rate [`Signals::arrival_rate`] (`None`: missing).
    pub fn with_arrival_rate(mut self, rate: impl Into<Option<f64>>) -> Self {
        self.arrival_rate = rate.into();
        self
    }

    /// With the work rate [`Signals::work_rate`] (`None`: missing).
    pub fn with_work_rate(mut self, rate: impl Into<Option<f64>>) -> Self {
        self.work_rate = rate.into();
        self
    }

    /// With the requests held in front of the pool, [`Signals::held`] (`None`: unknown).
    pub fn with_held(mut self, held: impl Into<Option<u64>>) -> Self {
        self.held = held.into();
        self
    }

    /// Requests in flight across the ready replicas.
    pub fn in_flight(&self) -> u64 {
        self.replicas.iter().map(|r| u64::from(r.in_flight)).sum()
    }

    /// Work waiting for a first byte across the ready replicas.
    pub fn pending_work(&self) -> u64 {
        self.replicas.iter().map(|r| r.pending_work).sum()
    }

    /// Requests waiting for a first byte across the ready replicas.
    pub fn awaiting_first_byte(&self) -> u64 {
        self.replicas.iter().map(|r| u64::from(r.awaiting_first_byte)).sum()
    }

    /// Whether every ready replica has a fresh report (and there is at least one replica).
    pub fn reports_complete(&self) -> bool {
        !self.replicas.is_empty() && self.replicas.iter().all(|r| r.report.is_some())
    }

    /// The median learnt capacity per replica (units of work a second), over the replicas that
    /// have learnt one.
    pub fn capacity_per_replica(&self) -> Option<f64> {
        let mut caps: Vec<f64> = self.replicas.iter().filter_map(|r| r.capacity_per_sec).collect();
        if caps.is_empty() {
            return None;
        }
        caps.sort_by(f64::total_cmp);
        Some(caps[caps.len() / 2])
    }
}

/// Where an [`Autoscaler`](crate::Autoscaler) reads its signals.
pub trait SignalSource: Send {
    /// A snapshot now, or `None` when the source cannot tell (treated as a missing signal).
    fn sample(&mut self) -> Option<Signals>;
}

/// Per endpoint, the requests and the work started on it so far.
type Started = BTreeMap<EndpointId, (u64, u64)>;

/// Signals read in process from a balancer's [`LoadBoard`].
#[derive(Debug, Clone)]
pub struct BoardSignals {
    board: LoadBoard,
    max_report_age: Duration,
    /// The previous sample's time and, per endpoint, its requests and work started.
    previous: Option<(Instant, Started)>,
}

impl BoardSignals {
    /// Reads `board`.
    pub fn new(board: LoadBoard) -> Self {
        Self { board, max_report_age: DEFAULT_MAX_REPORT_AGE, previous: None }
    }

    /// Reports older than `age` count as missing (default [`DEFAULT_MAX_REPORT_AGE`]).
    pub fn with_max_report_age(mut self, age: Duration) -> Self {
        self.max_report_age = age;
        self
    }

    /// A snapshot at `now`.
    pub fn sample_at(&mut self, now: Instant) -> Signals {
        let mut replicas = Vec::new();
        let mut started = BTreeMap::new();
        for entry in self.board.snapshot() {
            let id = entry.endpoint.id.clone();
            let load = &entry.load;
            // Every request the balancer started on the endpoint: ended (any way) or in flight.
            let starts =
                load.completed + load.failed + load.overloaded + load.cancelled + u64::from(load.in_flight);
            let Some(state) = self.board.state(&id) else { continue };
            started.insert(id.clone(), (starts, state.started_work()));
            // An ejected replica still exists and carries load (it is overloaded or failing, not
            // gone): it counts. A draining one is leaving.
            if entry.draining {
                continue;
            }
            replicas.push(ReplicaSignals {
                id,
                in_flight: load.in_flight,
                awaiting_first_byte: state.awaiting_first_byte(),
                pending_work: state.pending_work(),
                capacity_per_sec: capacity_per_sec(&state),
                report: load.fresh_report(now, self.max_report_age).cloned(),
            });
        }
        // Per endpoint, what started since the previous sample (all of it for an endpoint that
        // joined since: its counters start at zero), over the time between the samples.
        let rates = self.previous.as_ref().and_then(|(at, before)| {
            let dt = now.saturating_duration_since(*at).as_secs_f64();
            (dt > 0.0).then(|| {
                let (requests, work) =
                    started.iter().fold((0u64, 0u64), |(requests, work), (id, &(n, w))| {
                        let (n0, w0) = before.get(id).copied().unwrap_or((0, 0));
                        // A counter below its last reading is a new endpoint under the same id.
                        let new_work = if w >= w0 { w - w0 } else { w };
                        (requests + n.saturating_sub(n0), work + new_work)
                    });
                (requests as f64 / dt, work as f64 / dt)
            })
        });
        self.previous = Some((now, started));
        Signals::new(now, replicas).with_arrival_rate(rates.map(|r| r.0)).with_work_rate(rates.map(|r| r.1))
    }
}

impl SignalSource for BoardSignals {
    fn sample(&mut self) -> Option<Signals> {
        Some(self.sample_at(Instant::now()))
    }
}

fn capacity_per_sec(state: &EndpointState) -> Option<f64> {
    let unit = state.idle_unit_time_nanos()?;
    (unit.is_finite() && unit > 0.0).then(|| f64::from(state.slots().max(1)) * 1e9 / unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_balance::{Backend, Balance};
    use switchyard_core::Endpoint;

    #[tokio::test(start_paused = true)]
    async fn an_idle_board_has_its_replicas_and_no_rate_at_first() {
        let backends = ["a", "b"].map(|n| Backend::new(Endpoint::new(n, format!("sim://{n}")), ()));
        let balancer: Balance<(), ()> = Balance::from_backends(backends);
        let mut signals = BoardSignals::new(balancer.board());
        let first = signals.sample_at(Instant::now());
        assert_eq!(first.replicas.len(), 2);
        assert_eq!(first.arrival_rate, None, "no rate before two samples");
        assert_eq!(first.capacity_per_replica(), None, "nothing learnt yet");
        assert!(!first.reports_complete(), "no report is a missing signal");
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = signals.sample_at(Instant::now());
        assert_eq!(second.arrival_rate, Some(0.0));
        assert_eq!((second.in_flight(), second.pending_work()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_work_rate_is_the_work_started_between_two_samples() {
        use switchyard_balance::CompleteOnResponse;
        use switchyard_core::RequestSize;
        use tower::{Service, ServiceExt};

        let backends = ["a", "b"].map(|n| {
            let service =
                tower::service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) });
            Backend::new(Endpoint::new(n, format!("sim://{n}")), service)
        });
        let mut balancer = Balance::new(switchyard_balance::discover::from_backends(backends))
            .with_completion(CompleteOnResponse);
        let mut signals = BoardSignals::new(balancer.board());
        assert_eq!(signals.sample_at(Instant::now()).work_rate, None, "no rate before two samples");
        // Three requests of 100, 200 and 300 prompt tokens over 2 s: 300 tokens a second, 1.5
        // requests, however the balancer spread them.
        for prompt in [100, 200, 300] {
            let mut request = http::Request::new(());
            request.extensions_mut().insert(RequestSize::new(prompt, 10));
            balancer.ready().await.unwrap().call(request).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let sample = signals.sample_at(Instant::now());
        assert_eq!((sample.arrival_rate, sample.work_rate), (Some(1.5), Some(300.0)));
        // Nothing more started: the counters stay, the rates fall to zero.
        tokio::time::advance(Duration::from_secs(1)).await;
        let sample = signals.sample_at(Instant::now());
        assert_eq!((sample.arrival_rate, sample.work_rate), (Some(0.0), Some(0.0)));
    }
}
