//! Signals: what the recommenders size the pool from, read in process from the balancer's
//! [`LoadBoard`].
//!
//! One [`Signals`] value is a snapshot of the pool at one instant: per ready replica its requests
//! in flight, the requests and work (prompt tokens) still waiting for a first byte, its learnt
//! capacity ([`EndpointState::slots`] and [`EndpointState::idle_unit_time_nanos`], see
//! [`switchyard_balance::capacity`]), and its last ORCA report (queue depth, KV-cache use) when
//! that report is fresh; for the pool, the arrival rate, derived from the change of the board's
//! request counters between two samples. Nothing is counted a second time: every figure is read
//! off the board the balancer keeps.
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
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    /// When it was taken.
    pub at: Instant,
    /// The ready replicas: on the board and not draining (an ejected one counts). Ordered by id.
    pub replicas: Vec<ReplicaSignals>,
    /// Requests started per second across the pool since the previous sample; `None` on the first.
    pub arrival_rate: Option<f64>,
    /// Requests waiting in front of the pool for a replica (the gateway's queue), when the caller
    /// knows it: what wakes a pool scaled to zero.
    pub held: Option<u64>,
}

impl Signals {
    /// An empty snapshot at `at`: no replica, no rate.
    pub fn empty(at: Instant) -> Self {
        Self { at, replicas: Vec::new(), arrival_rate: None, held: None }
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

/// Signals read in process from a balancer's [`LoadBoard`].
#[derive(Debug, Clone)]
pub struct BoardSignals {
    board: LoadBoard,
    max_report_age: Duration,
    previous: Option<(Instant, BTreeMap<EndpointId, u64>)>,
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
            started.insert(id.clone(), starts);
            // An ejected replica still exists and carries load (it is overloaded or failing, not
            // gone): it counts. A draining one is leaving.
            if entry.draining {
                continue;
            }
            let Some(state) = self.board.state(&id) else { continue };
            replicas.push(ReplicaSignals {
                id,
                in_flight: load.in_flight,
                awaiting_first_byte: state.awaiting_first_byte(),
                pending_work: state.pending_work(),
                capacity_per_sec: capacity_per_sec(&state),
                report: load.fresh_report(now, self.max_report_age).cloned(),
            });
        }
        let arrival_rate = self.previous.as_ref().and_then(|(at, before)| {
            let dt = now.saturating_duration_since(*at).as_secs_f64();
            (dt > 0.0).then(|| {
                let new: u64 = started
                    .iter()
                    .map(|(id, &n)| n.saturating_sub(before.get(id).copied().unwrap_or(0)))
                    .sum();
                new as f64 / dt
            })
        });
        self.previous = Some((now, started));
        Signals { at: now, replicas, arrival_rate, held: None }
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
}
