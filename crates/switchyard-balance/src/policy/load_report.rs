//! Load-report aware choice: the balancer's own view of each replica, completed by what the
//! replica says about itself.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use smallvec::SmallVec;
use tokio::time::Instant;

use super::{Backlog, Endpoints, Policy, RequestInfo, ResponseTimeEstimate};
use crate::EndpointState;
use crate::rng::NearTie;
use switchyard_core::orca::PREFILL_BACKLOG_TOKENS;

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
///                 | least foreign_running of the endpoints compared that have a fresh report
///                   (an endpoint without one, among endpoints with one)
/// foreign_work    = max(0, foreign_backlog − age_of_report ÷ unit_time)
/// foreign_backlog = reported_prefill_tokens − own_pending_work_at_report   (the replica reports it)
///                 | foreign_waiting × work                                  (otherwise)
/// occupancy       = in_flight + foreign_running
/// at_once         = max(1, min(slots, own_awaiting + foreign_waiting + 1))
/// brake           = √((occupancy + 1) / (mean_occupancy + 1))
/// backlog_cost    = (pending_work + foreign_work + work) × unit_time × brake ÷ at_once
/// beyond          = occupancy + 1 − capacity           (requests beyond the batch, this one included)
/// hold            = after_first_byte + work × unit_time (how long a request keeps its slot)
/// slot_wait       = beyond × hold ÷ capacity            (0 when beyond ≤ 0 or capacity unknown)
/// cost            = max(backlog_cost, (slot_wait + work × unit_time) × brake,
///                       work × no_load_unit_time) + overdue
/// ```
///
/// `overdue` is least response time's ([`ResponseTimeEstimate::overdue_nanos`]), for requests
/// that carry their size; so is the floor `work × no_load_unit_time`
/// ([`EndpointState::no_load_time_nanos`], see least response time's docs).
///
/// `slots` is what the balancer learnt of the replica's parallelism (see [`crate::capacity`]),
/// as least response time uses it, and `backlog_cost` is least response time's arithmetic
/// ([`ResponseTimeEstimate::backlog_cost_nanos`]) over the larger backlog, not a copy of it.
///
/// - `own_awaiting_at_report` and `own_in_flight_at_report` are what this balancer had on the
///   endpoint when the report arrived ([`EndpointState::fresh_report_with_own`]): the report
///   counts those requests, and the live counters `pending_work` and `in_flight` count them
///   too (and everything sent or answered since), so subtracting them is what keeps the load
///   from being counted twice. A queue the balancer's own requests explain adds nothing.
/// - The foreign work ahead is what the replica has still to prefill less what the balancer
///   itself had waiting for a first byte there when the report arrived, where the replica
///   reports its prefill backlog (the named metric
///   [`PREFILL_BACKLOG_TOKENS`](switchyard_core::orca::PREFILL_BACKLOG_TOKENS), which
///   Switchyard's workers send) and the endpoint counts work in tokens. An LLM engine admits
///   prompts into its running batch at once and prefills them there, so its queue is mostly
///   empty while the prompts ahead of a new one are many. Without that metric, foreign requests
///   waiting for admission are taken to be as large as this one (the best guess of their size
///   the balancer has). Either is worked off at the endpoint's speed while the report ages:
///   after `foreign_backlog × unit_time` the replica has prefilled it.
/// - The brake is LRT's, over the replica's whole occupancy (own and foreign requests in flight)
///   instead of the balancer's share alone: running decodes slow every step and fill batch slots.
/// - **The wait for a slot**: on a replica whose occupancy has reached the `capacity` it
///   reports (its maximum batch; 0 means unknown), a new request waits until as many running
///   requests have ended as there are requests beyond the batch, itself included. Running
///   requests end at a rate of `capacity ÷ hold` (their remaining times spread evenly over a
///   hold), so the wait is `beyond × hold ÷ capacity`. A request holds its slot for its own
///   prefill (`work × unit_time`) and then for as long as a response runs on after its first
///   byte ([`EndpointState::after_first_byte_nanos`], learnt from the balancer's own requests;
///   0 before the first): an LLM stream's whole generation, seconds, where a prefill backlog
///   costs milliseconds; about nothing after the single reply of a classic server, whose slot
///   frees after one service time. The cost is the later of the two waits, not their sum: a
///   request queued for a slot is in the backlog as well, and adding the two would count it
///   twice.
/// - Without a report younger than `max_age` (1 s by default), the foreign terms are zero and
///   the cost is LRT's, but for one: an endpoint without a fresh report, among others that
///   have one, is taken to run as many foreign requests (`foreign_running`) as the least of
///   those, in its occupancy and so in the brake. Counted as running none, it looked the least
///   occupied of all for want of news, and took the requests away from a replica whose report
///   had just shown it the least loaded: with reports in trailers alone, each of K balancers
///   hears a replica only when one of its own responses from it ends, so at K = 8 most of its
///   endpoints have no fresh report at any time. In lab `herd` (Azure, trailers alone, seeds
///   1-3) this took `load-report`'s p99 TTFT at K = 8 from 466-565 ms to 341-351 (even
///   split), at K = 32 from 597-704 to 447-525; the skewed splits moved from 336-540 to
///   301-325 and from 380-411 to 370-394. The mean of those with a report did better in the
///   lab (288-318 at K = 8) but starved replicas that had not been tried: one replica
///   reporting another client's queue made every silent one look half as busy, and a
///   balancer kept to the single quiet replica that had reported. With reports from every
///   replica every 10 or 20 ms every endpoint has one and nothing changes; with one balancer
///   no report shows a foreign request and nothing changes either (`reports/lab/herd.md`).
///
/// An earlier version ranked every replica with a free batch slot before every full one. On
/// classic servers that is wrong: in lab `hetero-parallel` (8 slots at 10 ms, one replica four
/// times slower) a full fast server frees a slot in about 1.25 ms, yet the rule sent requests
/// to the idle slow one's 40 ms, and its p99 was 3.33 × the ideal's; with the wait costed it is
/// the ideal's (`reports/lab/hetero-parallel.md`).
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
/// bundled traces (`reports/lab/hetero.json`, Azure: 180 ms each, ideal 179 ms;
/// `reports/lab/hetero-mooncake.json`, Mooncake: 7,696 ms each, ideal 7,482 ms). In lab
/// `hetero-parallel`, where the fast servers' 8 slots do fill, its p99 is the ideal's 12 ms (
/// `reports/lab/hetero-parallel.md`). Where a replica also serves other
/// clients, the reports move the picks away from it, which LRT cannot see.
///
/// Reports come with this balancer's own responses: in their trailers, and, for a stream, in
/// its headers too, where the replica sends one when it admits the request (Switchyard's
/// worker does on `ModelStreamInfer`; [`HttpCompletion`](crate::HttpCompletion) records both).
/// With K balancers over one fleet each hears 1/K of them, and between reports it sees only
/// what it sent. A subscriber to the replicas' out-of-band stream (ORCA's `OpenRcaService`, the
/// `switchyard` crate's `oob_reports`) records a report from every replica at a set interval
/// through [`EndpointState::record_report`], and this policy reads those alike. In lab `herd`
/// (eight balancers, Azure trace, even split) its p99 TTFT is 322 ms with the reports of its
/// own responses alone (341 ms when they came in the trailers only; least response time's:
/// 333 ms), 255 ms with reports every 20 ms and 220 ms every 10 ms, where one balancer's is
/// 180 ms
/// (`reports/lab/herd.md`).
///
/// Up to [`EXACT_LIMIT`](Self::EXACT_LIMIT) endpoints it compares every one; the pick is drawn
/// at random among those within [`NEAR_TIE`](crate::policy::NEAR_TIE) of the least cost, as
/// least response time's is (so that balancers that read the same reports do not move in
/// step). Beyond that it compares [`SAMPLE`](Self::SAMPLE) endpoints drawn at random from `seed`. An endpoint without a speed sample borrows the fastest measured
/// one among those compared, as LRT does.
#[derive(Debug)]
pub struct LoadReport {
    rng: Mutex<Xoshiro256PlusPlus>,
    max_age: Duration,
    ties: NearTie,
}

impl LoadReport {
    /// Pools up to this size are scanned whole.
    pub const EXACT_LIMIT: usize = 32;
    /// Endpoints compared per request in larger pools.
    pub const SAMPLE: usize = 16;

    /// The policy with default settings; large pools are sampled with draws from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)),
            max_age: Duration::from_secs(1),
            ties: NearTie::new(seed),
        }
    }

    /// The same policy, treating reports older than `max_age` as absent.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The endpoint's load as this policy estimates it at `now`: the balancer's own counts
    /// plus what its last fresh report adds (see the type's docs), for a request of `work`
    /// units (as the endpoint counts it, [`EndpointState::request_work`]) on an endpoint taking
    /// `unit_time` nanoseconds per unit.
    pub fn estimate(
        &self,
        endpoint: &EndpointState,
        now: Instant,
        work: f64,
        unit_time: f64,
    ) -> LoadEstimate {
        self.estimate_from(Backlog::of(endpoint), endpoint, now, work, unit_time).load
    }

    /// [`estimate`](Self::estimate) from `backlog`, the balancer's own view of `endpoint`.
    fn estimate_from(
        &self,
        backlog: Backlog,
        endpoint: &EndpointState,
        now: Instant,
        work: f64,
        unit_time: f64,
    ) -> Estimated {
        let mut estimate = LoadEstimate { backlog, slot_wait_nanos: 0.0 };
        let Some(snapshot) = endpoint.fresh_report_with_own(now, self.max_age) else {
            return Estimated { load: estimate, foreign_at_stall: 0.0, foreign_running: None };
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
        let backlog = &mut estimate.backlog;
        // The replica's own count of the prompt tokens it has still to prefill, where it sends
        // one and the endpoint counts work in tokens; else the foreign queue, each request as
        // large as this one.
        let reported_backlog = report.named.get(PREFILL_BACKLOG_TOKENS).copied().filter(|t| t.is_finite());
        let foreign_work = match reported_backlog {
            Some(tokens) if work < crate::capacity::PER_REQUEST_WORK => {
                tokens - snapshot.own.pending_work as f64
            }
            _ => f64::from(foreign_waiting) * work,
        };
        backlog.ahead += (foreign_work - drained).max(0.0);
        // The foreign work ahead when the stall began: as reported, less what the replica
        // worked off between the report and the stall's start when the report is older (a
        // report that arrived during the stall is taken as it was).
        let foreign_at_stall = match endpoint.stalled_for(now) {
            Some(stall) if unit_time > 0.0 => {
                let report_to_stall = stall_start_after(now, stall, snapshot.at);
                (foreign_work - report_to_stall / unit_time).max(0.0)
            }
            _ => 0.0,
        };
        backlog.in_flight += f64::from(foreign_running);
        let waiting = endpoint.awaiting_first_byte().saturating_add(foreign_waiting).saturating_add(1);
        backlog.at_once = endpoint.slots().min(waiting).max(1);
        if report.capacity > 0 {
            let capacity = f64::from(report.capacity);
            // Requests beyond the batch, this one included: each waits for a running one to end.
            let beyond = backlog.in_flight + 1.0 - capacity;
            if beyond > 0.0 {
                let hold = endpoint.after_first_byte_nanos().unwrap_or(0.0) + work * unit_time;
                estimate.slot_wait_nanos = beyond * hold / capacity;
            }
        }
        Estimated { load: estimate, foreign_at_stall, foreign_running: Some(f64::from(foreign_running)) }
    }

    /// The cheapest candidate, drawn at random among those within
    /// [`NEAR_TIE`](crate::policy::NEAR_TIE) of it.
    fn cheapest(
        &self,
        candidates: impl Iterator<Item = usize> + Clone,
        endpoints: &[Arc<EndpointState>],
        request: &RequestInfo<'_>,
    ) -> usize {
        let work = request.work as f64;
        let shared = ResponseTimeEstimate::over(candidates.clone().map(|i| &*endpoints[i])).at(request.now);
        // On the stack for pools of up to `INLINE` endpoints: one allocation less per pick.
        let mut estimates: SmallVec<[(usize, f64, f64, Estimated); INLINE]> = candidates
            .map(|i| {
                let e = &*endpoints[i];
                let unit = shared.unit_time_nanos(e);
                let work = shared.request_work(e, work);
                (i, unit, work, self.estimate_from(shared.backlog(e), e, request.now, work, unit))
            })
            .collect();
        // An endpoint without a fresh report is taken to run as many foreign requests as the
        // least of those with one (see the type's docs).
        let (seen, least) = estimates
            .iter()
            .filter_map(|(_, _, _, e)| e.foreign_running)
            .fold((0usize, f64::INFINITY), |(n, least), f| (n + 1, least.min(f)));
        if seen > 0 && seen < estimates.len() {
            for (_, _, _, e) in estimates.iter_mut().filter(|(_, _, _, e)| e.foreign_running.is_none()) {
                e.load.backlog.in_flight += least;
            }
        }
        let mean = estimates.iter().map(|(_, _, _, e)| e.load.backlog.in_flight).sum::<f64>()
            / estimates.len().max(1) as f64;
        let shared = shared.with_mean_in_flight(mean);
        // As least response time: a sized request counts how far a backlog is overdue, here
        // behind the foreign work the report showed as well.
        let sized = work > 1.0;
        self.ties
            .pick(estimates.iter().map(
                |&(i, unit, work, Estimated { load: e, foreign_at_stall: foreign, .. })| {
                    let (cost, overdue) = if sized {
                        // Never below the request's own no-load time there, as least response time.
                        let floor = endpoints[i].no_load_time_nanos(request.work as f64).unwrap_or(0.0);
                        (
                            e.cost(&shared, work, unit).max(floor),
                            shared.overdue_nanos_behind(&endpoints[i], foreign),
                        )
                    } else {
                        (e.cost(&shared, work, unit), 0.0)
                    };
                    (i, cost + overdue)
                },
            ))
            .unwrap_or(0)
    }
}

/// Endpoints whose estimates a pick keeps on the stack (more spill to the heap).
const INLINE: usize = 8;

/// How long after a report that arrived at `report_at` the stall of `stall` up to `now`
/// began, in nanoseconds (0 when the report arrived during the stall).
fn stall_start_after(now: Instant, stall: Duration, report_at: Instant) -> f64 {
    let started = now.checked_sub(stall).unwrap_or(report_at);
    started.saturating_duration_since(report_at).as_secs_f64() * 1e9
}

/// What [`LoadReport::estimate_from`] finds on one endpoint.
#[derive(Debug, Clone, Copy)]
struct Estimated {
    load: LoadEstimate,
    /// The foreign work the report showed ahead when the endpoint's current stall began (for
    /// [`ResponseTimeEstimate::overdue_nanos_behind`]; 0 without a stall or a fresh report).
    foreign_at_stall: f64,
    /// The foreign requests the fresh report showed running or queued there; `None` without
    /// a fresh report.
    foreign_running: Option<f64>,
}

/// One endpoint's load as [`LoadReport`] estimates it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LoadEstimate {
    /// What waits ahead of a new request: the balancer's own pending work plus the foreign
    /// requests the report shows waiting, less what the replica has worked off since; its own
    /// requests in flight plus the foreign ones reported; worked off its learnt slots at once.
    pub backlog: Backlog,
    /// The wait for a batch slot, in nanoseconds: 0 while the replica's occupancy is below
    /// the capacity it reports (or the capacity is unknown); otherwise the requests beyond the
    /// batch, this one included, times the time a request holds a slot, over the capacity.
    pub slot_wait_nanos: f64,
}

impl LoadEstimate {
    /// The expected time to first byte, in nanoseconds, of `work` more units on an endpoint
    /// taking `unit_time` per unit: the later of least response time's backlog cost
    /// ([`ResponseTimeEstimate::backlog_cost_nanos`]) and the wait for a slot followed by the
    /// request's own work, braked alike.
    pub fn cost(&self, estimate: &ResponseTimeEstimate, work: f64, unit_time: f64) -> f64 {
        let backlog = estimate.backlog_cost_nanos(&self.backlog, work, unit_time);
        if self.slot_wait_nanos > 0.0 {
            let slot = (self.slot_wait_nanos + work * unit_time) * estimate.brake(self.backlog.in_flight);
            backlog.max(slot)
        } else {
            backlog
        }
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
        Some(self.cheapest(0..n, endpoints, request))
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
        e.teach_time_grows_with_work(Duration::from_micros(1)).await;
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
        assert_eq!(before, LoadEstimate { backlog: Backlog::new(3000.0, 5.0, 1), slot_wait_nanos: 0.0 });
        // The replica reports exactly those five: two queued, three running (one of ours is
        // admitted and still prefilling).
        e.record_report(report(2, 3, 8), Instant::now());
        assert_eq!(policy.estimate(&e, Instant::now(), 1000.0, unit), before, "no load counted twice");
    }

    #[tokio::test(start_paused = true)]
    async fn foreign_queued_work_counts_and_drains_at_the_endpoints_speed() {
        let policy = LoadReport::with_seed(0);
        let e = endpoint("e");
        e.teach_time_grows_with_work(Duration::from_micros(1)).await;
        answer(&e, 1000, Duration::from_millis(1)).await;
        let unit = e.unit_time_nanos().unwrap();
        assert_eq!(unit, 1000.0, "1 µs a unit");
        // A short prompt as fast per unit: the endpoint's time grows with the work from 100
        // units at least, so our 500 count as 500.
        answer(&e, 100, Duration::from_micros(100)).await;
        assert_eq!(e.min_request_work(), 100.0);
        let _ours = e.start(Instant::now(), 500);
        // Another client's four requests wait on the replica beside our one; six run there.
        e.record_report(report(5, 6, 64), Instant::now());
        let fresh = policy.estimate(&e, Instant::now(), 1000.0, unit);
        assert_eq!(
            fresh,
            LoadEstimate { backlog: Backlog::new(500.0 + 4000.0, 1.0 + 10.0, 1), slot_wait_nanos: 0.0 }
        );
        // 1.5 ms later the replica has prefilled 1,500 units of the foreign queue.
        advance(Duration::from_micros(1500)).await;
        let later = policy.estimate(&e, Instant::now(), 1000.0, unit);
        assert_eq!(later.backlog.ahead, 500.0 + 2500.0);
        assert_eq!(later.backlog.in_flight, 11.0, "requests in flight stay until the next report");
        // After 4 ms all of it; our own pending work stays until its first byte.
        advance(Duration::from_micros(2500)).await;
        assert_eq!(policy.estimate(&e, Instant::now(), 1000.0, unit).backlog.ahead, 500.0);
        // Past the 1 s max age the report counts as absent: the balancer's own counts alone.
        advance(Duration::from_secs(1)).await;
        let stale = policy.estimate(&e, Instant::now(), 1000.0, unit);
        assert_eq!(stale, LoadEstimate { backlog: Backlog::new(500.0, 1.0, 1), slot_wait_nanos: 0.0 });
        let patient = LoadReport::with_seed(0).with_max_age(Duration::from_secs(5));
        assert_eq!(patient.estimate(&e, Instant::now(), 1000.0, unit).backlog.in_flight, 11.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_without_a_fresh_report_is_not_taken_for_one_without_foreign_load() {
        let eps = [endpoint("a"), endpoint("b"), endpoint("c")];
        for e in &eps {
            answer(e, 1000, Duration::from_millis(1)).await;
        }
        // Other clients run eight requests on a and two on b; c has not reported (lately).
        eps[0].record_report(report(0, 8, 64), Instant::now());
        eps[1].record_report(report(0, 2, 64), Instant::now());
        // One request of ours awaits its first byte on each.
        let _ours: Vec<_> = eps.iter().map(|e| e.start(Instant::now(), 1000)).collect();
        let policy = LoadReport::with_seed(0);
        let mut ext = http::Extensions::new();
        ext.insert(switchyard_core::RequestSize::new(1000, 1));
        // Counting nothing foreign on c (2 ms × √(2 / 5.3), 1.2 ms, against b's 2 ms ×
        // √(4 / 5.3), 1.7 ms) sent every request there. Taken to run as many as the least
        // loaded of those that reported, b's two, c ties with b (2 ms × √(4 / 6)): the picks
        // are shared between them, and a, known to be busier, gets none.
        let mut picks = [0u32; 3];
        for _ in 0..60 {
            let pick =
                policy.pick(&RequestInfo::new(Some(&ext), Instant::now()), &Endpoints::all_eligible(&eps, 0));
            picks[pick.unwrap()] += 1;
        }
        assert_eq!(picks[0], 0, "{picks:?}");
        assert!(picks[1] >= 15 && picks[2] >= 15, "{picks:?}");
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
    async fn a_reported_prefill_backlog_moves_the_pick_while_the_queue_is_empty() {
        // An LLM engine admits prompts into its batch at once: its queue is empty, the prompts
        // it has still to prefill are not. a is four times faster than b.
        let eps = [endpoint("a"), endpoint("b")];
        for (e, micros) in [(&eps[0], 1), (&eps[1], 4)] {
            e.teach_time_grows_with_work(Duration::from_micros(micros)).await;
            answer(e, 1000, Duration::from_millis(micros)).await;
        }
        let policy = LoadReport::with_seed(0);
        let mut ext = http::Extensions::new();
        ext.insert(switchyard_core::RequestSize::new(1000, 1));
        let pick =
            || policy.pick(&RequestInfo::new(Some(&ext), Instant::now()), &Endpoints::all_eligible(&eps, 0));
        // One of ours awaits its first byte on a (500 tokens).
        let _ours = eps[0].start(Instant::now(), 500);
        let with_backlog = |tokens: f64| {
            // Running: our one request (no foreign one, so the brake is ours alone).
            let mut r = report(0, 1, 256);
            r.named.insert(PREFILL_BACKLOG_TOKENS.to_string(), tokens);
            eps[0].record_report(r, Instant::now());
        };
        // A backlog our own request explains adds nothing: (500 + 1,000) × 1 µs, braked, beats
        // b's 4 ms.
        with_backlog(500.0);
        assert_eq!(pick(), Some(0));
        // 6,000 tokens more than ours: (6,500 + 1,000) × 1 µs against b's 4 ms.
        with_backlog(6500.0);
        let snapshot = eps[0].fresh_report_with_own(Instant::now(), Duration::from_secs(1)).unwrap();
        assert_eq!(snapshot.own.pending_work, 500, "our own work when the report arrived");
        assert_eq!(pick(), Some(1), "a has other balancers' prompts to prefill first");
        // 5.5 ms on, a has prefilled 5,500 of them: (500 + 500 + 1,000) × 1 µs × √(2 / 1.5)
        // (2.3 ms) beats b's 4 ms × √(1 / 1.5) (3.3 ms). a has sent no first byte for 5.5 ms,
        // within the 6.5 ms its backlog (our 500 tokens and the 6,000 foreign ones reported
        // when the stall began) should take: it is not overdue.
        advance(Duration::from_micros(5500)).await;
        assert_eq!(pick(), Some(0));
        // At 9.5 ms it is 3 ms past them: (500 + 1,000) × 1 µs braked, plus 3 ms, against b's
        // 3.3 ms.
        advance(Duration::from_millis(4)).await;
        assert_eq!(pick(), Some(1), "a is overdue behind the foreign work too");
    }

    #[tokio::test(start_paused = true)]
    async fn balancers_fed_the_same_reports_with_different_seeds_do_not_pick_in_lockstep() {
        // A property over random fleets: 2 to 8 replicas of one speed, each with a random
        // report (some share one, so that they tie); two balancers in the same state with
        // different seeds. Each picks among the cheapest, and they agree about as often as
        // independent draws among the tied do, not every time.
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(11);
        let mut tied_cases = 0;
        for case in 0..40 {
            let n = rng.random_range(2..=8usize);
            let eps: Vec<_> = (0..n).map(|i| endpoint(&format!("e{i}"))).collect();
            for e in &eps {
                e.teach_time_grows_with_work(Duration::from_micros(1)).await;
                answer(e, 1000, Duration::from_millis(1)).await;
            }
            // Two report levels: `low` ones tie at the least cost.
            let low = rng.random_range(1..=n);
            for (i, e) in eps.iter().enumerate() {
                let backlog = if i < low { 0 } else { rng.random_range(1..4u32) };
                e.record_report(report(backlog, 0, 256), Instant::now());
            }
            let (a, b) = (LoadReport::with_seed(case), LoadReport::with_seed(case + 1000));
            let mut ext = http::Extensions::new();
            ext.insert(switchyard_core::RequestSize::new(1000, 1));
            let req = RequestInfo::new(Some(&ext), Instant::now());
            let all = Endpoints::all_eligible(&eps, 0);
            let (mut same, picks) = (0, 400);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..picks {
                let (x, y) = (a.pick(&req, &all).unwrap(), b.pick(&req, &all).unwrap());
                assert!(x < low && y < low, "case {case}: a pick outside the cheapest {low}: {x}, {y}");
                same += usize::from(x == y);
                seen.insert(x);
            }
            if low >= 2 {
                tied_cases += 1;
                assert_eq!(seen.len(), low, "case {case}: every tied replica is drawn");
                // Independent uniform draws among `low` agree 1 / low of the time.
                let expected = picks as f64 / low as f64;
                assert!(
                    (same as f64) < expected * 1.35 + 20.0,
                    "case {case}: {same} of {picks} alike, low {low}"
                );
            } else {
                assert_eq!(same, picks, "one cheapest: both take it");
            }
        }
        assert!(tied_cases >= 20, "the property was exercised: {tied_cases}");
    }

    /// Sends one request of `work` units to `e`: its first byte after `ttft`, its end `after`
    /// that, a success.
    async fn serve(e: &Arc<EndpointState>, work: u64, ttft: Duration, after: Duration) {
        let mut f = e.start(Instant::now(), work);
        advance(ttft).await;
        f.first_byte();
        advance(after).await;
        f.end(switchyard_core::Outcome::Ok, &crate::OutlierConfig::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_full_of_long_generations_makes_a_request_wait_for_a_slot() {
        let eps = [endpoint("full"), endpoint("slow")];
        // "full" answers its first token in 1 ms and generates for 2 s; "slow" takes 50 ms.
        serve(&eps[0], 1, Duration::from_millis(1), Duration::from_secs(2)).await;
        serve(&eps[1], 1, Duration::from_millis(50), Duration::ZERO).await;
        assert_eq!(eps[0].after_first_byte_nanos(), Some(2e9));
        let policy = LoadReport::with_seed(0);
        let info = RequestInfo::new(None, Instant::now());
        assert_eq!(policy.pick(&info, &Endpoints::all_eligible(&eps, 0)), Some(0));
        // Others fill its eight slots: a new request waits for one of eight 2 s generations to
        // end, (2 s + 1 ms) ÷ 8 ≈ 250 ms, braked by √(9 / 5), against slow's 50 ms × √(1 / 5).
        eps[0].record_report(report(0, 8, 8), Instant::now());
        let full = policy.estimate(&eps[0], Instant::now(), 1.0, 1e6);
        assert_eq!(full.slot_wait_nanos, 2.001e9 / 8.0);
        assert_eq!(policy.pick(&info, &Endpoints::all_eligible(&eps, 0)), Some(1));
        // With no capacity reported there is no slot to wait for: 1 ms × √(9 / 5) wins.
        eps[0].record_report(report(0, 8, 0), Instant::now());
        assert_eq!(policy.estimate(&eps[0], Instant::now(), 1.0, 1e6).slot_wait_nanos, 0.0);
        assert_eq!(policy.pick(&info, &Endpoints::all_eligible(&eps, 0)), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_parallel_server_whose_slots_free_soon_beats_an_idle_slow_one() {
        // Classic servers of 8 slots: "fast" serves a request in 10 ms, "slow" in 80 ms.
        let eps = [endpoint("fast"), endpoint("slow")];
        serve(&eps[0], 1, Duration::from_millis(10), Duration::ZERO).await;
        serve(&eps[1], 1, Duration::from_millis(80), Duration::ZERO).await;
        let policy = LoadReport::with_seed(0);
        let info = RequestInfo::new(None, Instant::now());
        let pick = || policy.pick(&info, &Endpoints::all_eligible(&eps, 0));
        // Eight of ours fill fast's slots, and it reports them so. A ninth waits for the first
        // of eight 10 ms services to end, about 1.25 ms, then its own 10 ms; but with one slot
        // learnt so far the backlog cost, nine requests one at a time, is the later:
        // 90 ms × √(9 / 5) ≈ 121 ms against slow's 80 ms × √(1 / 5) ≈ 36 ms.
        let ours: Vec<_> = (0..8).map(|_| eps[0].start(Instant::now(), 1)).collect();
        eps[0].record_report(report(0, 8, 8), Instant::now());
        let full = policy.estimate(&eps[0], Instant::now(), 1.0, 10e6);
        assert_eq!(full.slot_wait_nanos, 10e6 / 8.0);
        assert_eq!(pick(), Some(1));
        drop(ours);
        for _ in 0..300 {
            let mut batch: Vec<_> = (0..8).map(|_| eps[0].start(Instant::now(), 1)).collect();
            advance(Duration::from_millis(10)).await;
            batch.iter_mut().for_each(|f| f.first_byte());
        }
        assert_eq!(eps[0].slots(), 8, "flat at 8 at once");
        // Known to serve 8 at once, the full fast server costs 9 ÷ 8 × 10 ms × √(9 / 5) ≈ 15 ms:
        // a full batch whose slots free soon beats an idle slow server.
        let _ours: Vec<_> = (0..8).map(|_| eps[0].start(Instant::now(), 1)).collect();
        eps[0].record_report(report(0, 8, 8), Instant::now());
        assert!(policy.estimate(&eps[0], Instant::now(), 1.0, 10e6).slot_wait_nanos > 0.0);
        assert_eq!(pick(), Some(0));
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
