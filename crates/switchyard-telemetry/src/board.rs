//! Per-endpoint series read from a balancer's [`LoadBoard`] at scrape time.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use metrics::{Key, Label, Recorder};
use switchyard_balance::{LoadBoard, PolicyHandle};

use crate::names;
use crate::registry::{METADATA, ScrapeSource};

/// A [`ScrapeSource`] that publishes a pool's endpoints as the balancer tracks them: picks,
/// outcomes, the work started (prompt tokens), in flight, peak-EWMA latency, the capacity learnt (slots and no-load time per unit
/// of work), the replica's last ORCA report (queue, running, KV-cache
/// use), ejection (now, and how many times), draining; and the pool's policy in force.
///
/// Everything is read from the [`LoadBoard`] when the registry is scraped: no request pays for
/// these series, and nothing counts a request a second time. A pick is a request the balancer
/// sent: those ended (ok, failed, overloaded, cancelled) plus those in flight.
///
/// An endpoint removed from the pool keeps its series while it drains (`draining` 1, its last
/// requests counted); once it has left the board its series leave `/metrics` at the next scrape,
/// the observer's histograms of it ([`EndpointObserver`](crate::EndpointObserver)) included
/// (see [`ScrapeSource::retired`]).
#[derive(Debug)]
pub struct BoardMetrics {
    pool: String,
    board: LoadBoard,
    policy: Option<PolicyHandle>,
    /// The policy published last, set to 0 when another takes over.
    last_policy: Mutex<Option<&'static str>>,
    /// The endpoints published last, and those gone since, not yet retired.
    endpoints: Mutex<(BTreeSet<String>, Vec<String>)>,
}

impl BoardMetrics {
    /// The endpoints of `board`, labelled `pool`; with the policy `policy` holds, if given.
    pub fn new(pool: impl Into<String>, board: LoadBoard, policy: Option<PolicyHandle>) -> Self {
        Self { pool: pool.into(), board, policy, last_policy: Mutex::new(None), endpoints: Mutex::default() }
    }
}

impl ScrapeSource for BoardMetrics {
    fn publish(&self, recorder: &dyn Recorder) {
        let pool = Label::new(names::POOL, self.pool.clone());
        let gauge = |name: &'static str, labels: &[Label], value: f64| {
            recorder.register_gauge(&Key::from_parts(name, labels.to_vec()), &METADATA).set(value);
        };
        let counter = |name: &'static str, labels: &[Label], value: u64| {
            recorder.register_counter(&Key::from_parts(name, labels.to_vec()), &METADATA).absolute(value);
        };
        if let Some(policy) = &self.policy {
            let now = policy.name();
            let mut last = self.last_policy.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(before) = last.filter(|before| *before != now) {
                gauge(names::POOL_POLICY, &[pool.clone(), Label::new("policy", before)], 0.0);
            }
            gauge(names::POOL_POLICY, &[pool.clone(), Label::new("policy", now)], 1.0);
            *last = Some(now);
        }
        let snapshot = self.board.snapshot();
        gauge(names::POOL_ENDPOINTS, std::slice::from_ref(&pool), snapshot.len() as f64);
        {
            let now: BTreeSet<String> = snapshot.iter().map(|e| e.endpoint.id.to_string()).collect();
            let mut endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
            let (last, gone) = &mut *endpoints;
            gone.extend(last.difference(&now).cloned());
            *last = now;
        }
        for entry in snapshot {
            let labels = [pool.clone(), Label::new(names::ENDPOINT, entry.endpoint.id.to_string())];
            let load = &entry.load;
            let ended = load.completed + load.failed + load.overloaded + load.cancelled;
            counter(names::ENDPOINT_PICKS, &labels, ended + u64::from(load.in_flight));
            for (outcome, n) in [
                ("ok", load.completed),
                ("failed", load.failed),
                ("overloaded", load.overloaded),
                ("cancelled", load.cancelled),
            ] {
                let mut with_outcome = labels.to_vec();
                with_outcome.push(Label::new("outcome", outcome));
                counter(names::ENDPOINT_REQUESTS, &with_outcome, n);
            }
            gauge(names::ENDPOINT_IN_FLIGHT, &labels, f64::from(load.in_flight));
            if let Some(limit) = load.limit {
                gauge(names::ENDPOINT_LIMIT, &labels, f64::from(limit));
            }
            gauge(names::ENDPOINT_SLOTS, &labels, f64::from(load.slots));
            if let Some(unit) = load.idle_unit_time {
                gauge(names::ENDPOINT_IDLE_UNIT_TIME, &labels, unit.as_secs_f64());
            }
            if let Some(ewma) = load.latency_ewma {
                gauge(names::ENDPOINT_LATENCY_EWMA, &labels, ewma.as_secs_f64());
            }
            if let Some(report) = &load.report {
                gauge(names::ENDPOINT_QUEUE, &labels, f64::from(report.queue_depth));
                gauge(names::ENDPOINT_RUNNING, &labels, f64::from(report.running));
                gauge(names::ENDPOINT_KV_CACHE, &labels, report.kv_cache_utilization);
            }
            gauge(names::ENDPOINT_EJECTED, &labels, if entry.ejected { 1.0 } else { 0.0 });
            gauge(names::ENDPOINT_DRAINING, &labels, if entry.draining { 1.0 } else { 0.0 });
            if let Some(state) = self.board.state(&entry.endpoint.id) {
                counter(names::ENDPOINT_EJECTIONS, &labels, u64::from(state.ejections()));
                counter(names::ENDPOINT_STARTED_WORK, &labels, state.started_work());
                gauge(names::ENDPOINT_AWAITING_FIRST_BYTE, &labels, f64::from(state.awaiting_first_byte()));
                gauge(names::ENDPOINT_PENDING_WORK, &labels, state.pending_work() as f64);
                let now = tokio::time::Instant::now();
                if let Some(last) = state.fresh_report_with_own(now, std::time::Duration::MAX) {
                    let age = now.saturating_duration_since(last.at);
                    gauge(names::ENDPOINT_REPORT_AGE, &labels, age.as_secs_f64());
                }
            }
        }
    }

    fn retired(&self) -> Vec<Vec<Label>> {
        let gone = std::mem::take(&mut self.endpoints.lock().unwrap_or_else(PoisonError::into_inner).1);
        gone.into_iter()
            .map(|id| vec![Label::new(names::POOL, self.pool.clone()), Label::new(names::ENDPOINT, id)])
            .collect()
    }
}
