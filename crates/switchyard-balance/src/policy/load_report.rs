//! Load-report aware choice: the balancer's own view of each replica, completed by what the
//! replica says about itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use super::{Endpoints, Policy, RequestInfo};
use crate::EndpointState;

/// The endpoint expected to send the first byte soonest, counting the load its replica reports
/// (ORCA: queue, running, capacity) that the balancer did not send itself.
///
/// # Cost model
///
/// [`LeastResponseTime`](super::LeastResponseTime) (LRT) estimates a request's time to first
/// byte from the balancer's own bookkeeping: the work it sent that still waits for a first byte
/// (`pending_work`), the request's own `work`, and the endpoint's time per unit of work
/// (`unit_time`, learned from its answers), braked by its share of requests in flight. Everything
/// it counts is exact and current, but only for this balancer's requests: requests other
/// clients (another gateway, a batch job) send to the same replica are invisible to it. The
/// replica's report sees all of them, but it is stale: it describes the replica when the report
/// left, and only the balancer knows what it has sent and what has answered since. So this
/// policy starts from the balancer's own counts and adds only the part of the report that they
/// do not already contain:
///
/// ```text
/// foreign_waiting = max(0, queue_depth − own_awaiting_at_report)
/// foreign_running = max(0, queue_depth + running − own_in_flight_at_report)
/// foreign_work    = max(0, foreign_waiting × work − age_of_report ÷ unit_time)
/// occupancy       = in_flight + foreign_running
/// at_once         = max(1, min(slots, own_awaiting + foreign_waiting + 1))
/// cost            = (pending_work + foreign_work + work) × unit_time ÷ at_once
///                   × √((occupancy + 1) / (mean_occupancy + 1))
/// ```
///
/// `slots` is what the balancer learnt of the replica's parallelism (see [`crate::capacity`]),
/// as least response time uses it.
///
/// - `own_awaiting_at_report` and `own_in_flight_at_report` are what this balancer had on the
///   endpoint when the report arrived ([`EndpointState::fresh_report_with_own`]): the report
///   counts those requests, and the live counters `pending_work` and `in_flight` count them
///   too (and everything sent or answered since), so subtracting them is what keeps the load
///   from being counted twice. A queue the balancer's own requests explain adds nothing.
/// - Foreign requests waiting for admission are taken to be as large as this one (the best
///   guess of their size the balancer has), and are worked off at the endpoint's speed while
///   the report ages: after `foreign_waiting × work × unit_time` the replica has prefilled them.
/// - The brake is LRT's, over the replica's whole occupancy (own and foreign requests in flight)
///   instead of the balancer's share alone: running decodes slow every step and fill batch slots.
/// - **Batch room** comes first: an endpoint whose occupancy has reached the `capacity` it
///   reports (its maximum batch) makes a new request wait for a running one to end, a wait of
///   whole generations where a prefill backlog costs milliseconds; so any endpoint with room
///   beats every one without, and the cost orders each group. A capacity of 0 means unknown.
/// - Without a report younger than `max_age` (1 s by default), the foreign terms are zero and
///   the cost is LRT's.
///
/// The reported KV-cache use is not part of the cost. What a full cache does to a new request,
/// it waits for admission, shows in the reported queue; and the figure counts prefix-cache
/// blocks the replica would evict to admit a request (the sim reports it so), so a replica full
/// of reusable prefixes would look unable to admit. The earlier version of this policy scored
/// `(awaiting + queue + 1) × (1 + 4 × kv_use)` over two random replicas: it ignored speed and
/// request size, and in lab `hetero` its p99 TTFT was 3.8 × LRT's on the Azure trace and
/// 4.6 × on the Mooncake trace.
///
/// # Figures
///
/// In lab `hetero` every request goes through one balancer, so the foreign terms are zero and
/// the picks are LRT's: the p99 TTFT of `load-report` equals least response time's on both
/// bundled traces (`reports/lab/hetero.json`, Azure: 190 ms each;
/// `reports/lab/hetero-mooncake.json`, Mooncake: 7,702 ms each). Where a replica also serves
/// other clients, the reports move the picks away from it, which LRT cannot see.
///
/// Up to [`EXACT_LIMIT`](Self::EXACT_LIMIT) endpoints it compares every one; ties go to the
/// endpoint after the previous pick. Beyond that it compares [`SAMPLE`](Self::SAMPLE) endpoints
/// drawn at random from `seed`. An endpoint without a speed sample borrows the fastest measured
/// one among those compared, as LRT does.
#[derive(Debug)]
pub struct LoadReport {
    start: AtomicUsize,
    rng: Mutex<Xoshiro256PlusPlus>,
    max_age: Duration,
}

impl LoadReport {
    /// Pools up to this size are scanned whole.
    pub const EXACT_LIMIT: usize = 32;
    /// Endpoints compared per request in larger pools.
    pub const SAMPLE: usize = 16;

    /// The policy with default settings; large pools are sampled with draws from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            start: AtomicUsize::new(0),
            rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)),
            max_age: Duration::from_secs(1),
        }
    }

    /// The same policy, treating reports older than `max_age` as absent.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The endpoint's load as this policy estimates it at `now`: the balancer's own counts
    /// plus what its last fresh report adds (see the type's docs), for a request of `work`
    /// units on an endpoint taking `unit_time` nanoseconds per unit.
    pub fn estimate(
        &self,
        endpoint: &EndpointState,
        now: Instant,
        work: f64,
        unit_time: f64,
    ) -> LoadEstimate {
        let slots = endpoint.slots();
        let mut estimate = LoadEstimate {
            ahead: endpoint.pending_work() as f64,
            occupancy: f64::from(endpoint.in_flight()),
            at_once: slots.min(endpoint.awaiting_first_byte().saturating_add(1)).max(1),
            room: true,
        };
        let Some(snapshot) = endpoint.fresh_report_with_own(now, self.max_age) else {
            return estimate;
        };
        let report = &snapshot.report;
        // The request whose response carried the report still counts in the balancer's own
        // in-flight baseline, while the replica, done with it, no longer does: a foreign load of
        // one request can go unseen. Erring low keeps a report of the balancer's own requests
        // from ever adding load.
        let foreign_waiting = report.queue_depth.saturating_sub(snapshot.own.awaiting_first_byte);
        let foreign_running =
            report.queue_depth.saturating_add(report.running).saturating_sub(snapshot.own.in_flight);
        let age = now.saturating_duration_since(snapshot.at).as_secs_f64() * 1e9;
        let drained = if unit_time > 0.0 { age / unit_time } else { 0.0 };
        estimate.ahead += (f64::from(foreign_waiting) * work - drained).max(0.0);
        estimate.occupancy += f64::from(foreign_running);
        let waiting = endpoint.awaiting_first_byte().saturating_add(foreign_waiting).saturating_add(1);
        estimate.at_once = slots.min(waiting).max(1);
        estimate.room = report.capacity == 0 || estimate.occupancy < f64::from(report.capacity);
        estimate
    }

    /// The cheapest candidate (the first one on a tie): with batch room first, then by cost.
    fn cheapest(
        &self,
        candidates: impl Iterator<Item = usize> + Clone,
        endpoints: &[Arc<EndpointState>],
        request: &RequestInfo<'_>,
    ) -> usize {
        let work = request.work as f64;
        let fastest =
            candidates.clone().filter_map(|i| endpoints[i].unit_time_nanos()).fold(f64::INFINITY, f64::min);
        // Before any sample, all endpoints are equal: the work ahead decides.
        let unknown = if fastest.is_finite() { fastest } else { 1.0 };
        let estimates: Vec<(usize, f64, LoadEstimate)> = candidates
            .map(|i| {
                let unit = endpoints[i].unit_time_nanos().unwrap_or(unknown);
                (i, unit, self.estimate(&endpoints[i], request.now, work, unit))
            })
            .collect();
        let mean = estimates.iter().map(|(_, _, e)| e.occupancy).sum::<f64>() / estimates.len().max(1) as f64;
        let mut best: Option<(usize, bool, f64)> = None;
        for (i, unit, e) in estimates {
            let cost = e.cost(work, unit, mean);
            let better = match best {
                None => true,
                Some((_, room, best_cost)) => (e.room && !room) || (e.room == room && cost < best_cost),
            };
            if better {
                best = Some((i, e.room, cost));
            }
        }
        best.map_or(0, |(i, _, _)| i)
    }
}

/// One endpoint's load as [`LoadReport`] estimates it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LoadEstimate {
    /// Work waiting for a first byte ahead of a new request: the balancer's own pending work
    /// plus the foreign requests the report shows waiting, less what the replica has worked off
    /// since.
    pub ahead: f64,
    /// Requests on the replica: the balancer's own in flight plus the foreign ones reported.
    pub occupancy: f64,
    /// Requests the replica works off at once: its learnt slots (see [`crate::capacity`]),
    /// never more than the requests waiting there plus this one; as least response time
    /// divides the work ahead.
    pub at_once: u32,
    /// Whether the replica has a free batch slot (its occupancy is below its reported
    /// capacity, or the capacity is unknown).
    pub room: bool,
}

impl LoadEstimate {
    /// The expected time to first byte, in nanoseconds, of `work` more units on an endpoint
    /// taking `unit_time` per unit, braked by its occupancy against the `mean_occupancy` of
    /// the endpoints compared; the work ahead is worked off `at_once` requests at a time.
    pub fn cost(&self, work: f64, unit_time: f64, mean_occupancy: f64) -> f64 {
        let share = (self.occupancy + 1.0) / (mean_occupancy + 1.0);
        (self.ahead + work) * unit_time / f64::from(self.at_once.max(1)) * share.sqrt()
    }
}

impl Policy for LoadReport {
    fn name(&self) -> &'static str {
        "load-report"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let endpoints = endpoints.eligible();
        let n = endpoints.len();
        if n > Self::EXACT_LIMIT {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            let mut sample = [0usize; Self::SAMPLE];
            sample.iter_mut().for_each(|i| *i = rng.random_range(0..n));
            drop(rng);
            return Some(self.cheapest(sample.into_iter(), endpoints, request));
        }
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n.max(1);
        Some(self.cheapest((0..n).map(|offset| (start + offset) % n), endpoints, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::{Endpoint, ReportedLoad};
    use tokio::time::advance;

    fn endpoint(name: &str) -> Arc<EndpointState> {
        Arc::new(EndpointState::new(Endpoint::new(name, "http://e:9001"), Default::default()))
    }

    fn report(queue_depth: u32, running: u32, capacity: u32) -> ReportedLoad {
        ReportedLoad { queue_depth, running, capacity, ..Default::default() }
    }

    /// Sends `work` units to `e`, waits `ttft`, and takes the first byte: one speed sample.
    async fn answer(e: &Arc<EndpointState>, work: u64, ttft: Duration) {
        let mut f = e.start(Instant::now(), work);
        advance(ttft).await;
        f.first_byte();
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_of_the_balancers_own_requests_adds_nothing() {
        let policy = LoadReport::with_seed(0);
        let e = endpoint("e");
        answer(&e, 1000, Duration::from_millis(1)).await;
        let unit = e.unit_time_nanos().unwrap();
        // Three of ours wait for a first byte, two more decode.
        let _waiting: Vec<_> = (0..3).map(|_| e.start(Instant::now(), 1000)).collect();
        let _decoding: Vec<_> = (0..2)
            .map(|_| {
                let mut f = e.start(Instant::now(), 1000);
                f.first_byte();
                f
            })
            .collect();
        let before = policy.estimate(&e, Instant::now(), 1000.0, unit);
        assert_eq!(before, LoadEstimate { ahead: 3000.0, occupancy: 5.0, at_once: 1, room: true });
        // The replica reports exactly those five: two queued, three running (one of ours is
        // admitted and still prefilling).
        e.record_report(report(2, 3, 8), Instant::now());
        assert_eq!(policy.estimate(&e, Instant::now(), 1000.0, unit), before, "no load counted twice");
    }

    #[tokio::test(start_paused = true)]
    async fn foreign_queued_work_counts_and_drains_at_the_endpoints_speed() {
        let policy = LoadReport::with_seed(0);
        let e = endpoint("e");
        answer(&e, 1000, Duration::from_millis(1)).await;
        let unit = e.unit_time_nanos().unwrap();
        assert_eq!(unit, 1000.0, "1 µs a unit");
        let _ours = e.start(Instant::now(), 500);
        // Another client's four requests wait on the replica beside our one; six run there.
        e.record_report(report(5, 6, 64), Instant::now());
        let fresh = policy.estimate(&e, Instant::now(), 1000.0, unit);
        assert_eq!(
            fresh,
            LoadEstimate { ahead: 500.0 + 4000.0, occupancy: 1.0 + 10.0, at_once: 1, room: true }
        );
        // 1.5 ms later the replica has prefilled 1,500 units of the foreign queue.
        advance(Duration::from_micros(1500)).await;
        let later = policy.estimate(&e, Instant::now(), 1000.0, unit);
        assert_eq!(later.ahead, 500.0 + 2500.0);
        assert_eq!(later.occupancy, 11.0, "requests in flight stay until the next report");
        // After 4 ms all of it; our own pending work stays until its first byte.
        advance(Duration::from_micros(2500)).await;
        assert_eq!(policy.estimate(&e, Instant::now(), 1000.0, unit).ahead, 500.0);
        // Past the 1 s max age the report counts as absent: the balancer's own counts alone.
        advance(Duration::from_secs(1)).await;
        let stale = policy.estimate(&e, Instant::now(), 1000.0, unit);
        assert_eq!(stale, LoadEstimate { ahead: 500.0, occupancy: 1.0, at_once: 1, room: true });
        let patient = LoadReport::with_seed(0).with_max_age(Duration::from_secs(5));
        assert_eq!(patient.estimate(&e, Instant::now(), 1000.0, unit).occupancy, 11.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreign_backlog_moves_the_pick_that_least_response_time_would_make() {
        let eps = [endpoint("a"), endpoint("b")];
        answer(&eps[0], 1000, Duration::from_millis(1)).await;
        answer(&eps[1], 1000, Duration::from_millis(4)).await;
        let policy = LoadReport::with_seed(0);
        let mut ext = http::Extensions::new();
        ext.insert(switchyard_core::RequestSize::new(1000, 1));
        let pick = |policy: &LoadReport| {
            policy.pick(&RequestInfo::new(Some(&ext), Instant::now()), &Endpoints::all_eligible(&eps, 0))
        };
        assert_eq!(pick(&policy), Some(0), "the faster one");
        let lrt = super::super::LeastResponseTime::new();
        assert_eq!(
            lrt.pick(&RequestInfo::new(Some(&ext), Instant::now()), &Endpoints::all_eligible(&eps, 0)),
            Some(0)
        );
        // a reports three requests waiting that the balancer did not send: 4,000 units at 1 µs,
        // braked by √((3 + 1) / (1.5 + 1)), 5.1 ms, against b's 1,000 at 4 µs × √(1 / 2.5), 2.5 ms.
        eps[0].record_report(report(3, 0, 64), Instant::now());
        assert_eq!(pick(&policy), Some(1), "b answers sooner");
        assert_eq!(
            lrt.pick(&RequestInfo::new(Some(&ext), Instant::now()), &Endpoints::all_eligible(&eps, 0)),
            Some(0),
            "least response time cannot see them"
        );
        // 3 ms later a has worked them off: 1,000 units at 1 µs (× 1.26) beat 2.5 ms.
        advance(Duration::from_millis(3)).await;
        assert_eq!(pick(&policy), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_loses_to_any_endpoint_with_room() {
        let eps = [endpoint("full"), endpoint("slow")];
        answer(&eps[0], 1, Duration::from_millis(1)).await;
        answer(&eps[1], 1, Duration::from_millis(50)).await;
        let policy = LoadReport::with_seed(0);
        let info = RequestInfo::new(None, Instant::now());
        assert_eq!(policy.pick(&info, &Endpoints::all_eligible(&eps, 0)), Some(0));
        // Others fill its eight slots: it is 50 times faster, but a request would wait for a slot.
        eps[0].record_report(report(0, 8, 8), Instant::now());
        assert!(!policy.estimate(&eps[0], Instant::now(), 1.0, 1e6).room);
        assert_eq!(policy.pick(&info, &Endpoints::all_eligible(&eps, 0)), Some(1));
        // With no capacity reported there is no slot count to fill.
        eps[0].record_report(report(0, 8, 0), Instant::now());
        assert_eq!(policy.pick(&info, &Endpoints::all_eligible(&eps, 0)), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn large_pools_are_sampled_with_the_seed() {
        let eps: Vec<_> = (0..100).map(|i| endpoint(&format!("e{i}"))).collect();
        let _queued: Vec<_> = eps.iter().step_by(2).map(|e| e.start(Instant::now(), 100_000)).collect();
        let req = RequestInfo::new(None, Instant::now());
        let picks = |seed| {
            let policy = LoadReport::with_seed(seed);
            (0..100).filter_map(|_| policy.pick(&req, &Endpoints::all_eligible(&eps, 0))).collect::<Vec<_>>()
        };
        let first = picks(3);
        assert!(first.iter().all(|i| i % 2 == 1), "one of 16 draws is almost surely idle: {first:?}");
        assert_eq!(first, picks(3), "the same seed, the same picks");
        assert_ne!(first, picks(4));
    }
}
