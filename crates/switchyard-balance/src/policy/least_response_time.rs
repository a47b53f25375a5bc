//! Least response time: the endpoint expected to answer first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::{Endpoints, Policy, RequestInfo};
use crate::EndpointState;

/// The endpoint expected to send the first byte of its response soonest, over all endpoints:
///
/// ```text
/// cost = (pending_work + work) × unit_time / at_once × √((in_flight + 1) / (mean_in_flight + 1))
/// at_once = min(slots, awaiting_first_byte + 1)
/// ```
///
/// - `work` is the request's size: its prompt tokens when it carries a
///   [`RequestSize`](switchyard_core::RequestSize) extension, otherwise 1 ([`RequestInfo::work`]);
/// - `pending_work` is the work of the requests already sent to the endpoint that have not had
///   their first byte (for an LLM replica: prompts still waiting to be prefilled);
/// - `unit_time` is the endpoint's measured time per unit of work before a first byte
///   ([`EndpointState::unit_time_nanos`]): its speed, learned from its own answers. An endpoint
///   without a sample yet borrows the fastest measured one among those compared, so new endpoints
///   are tried at once;
/// - `slots` is how many requests the endpoint serves at once before a new one has to wait
///   ([`EndpointState::slots`]), learnt from its answers (the concurrency where its latency starts
///   to grow, see [`capacity`](crate::capacity)): 1 for an LLM engine, which prefills prompts one
///   after another, `k` for a classic server of `k` parallel slots. The backlog is worked off
///   `at_once` requests at a time, so a parallel server costs its no-load latency until its
///   slots are full and grows by a service time per `k` queued after that (and `unit_time`, which
///   is measured with the same `at_once`, is that no-load latency). With one slot the cost is the
///   serial queue's, as before the slots were learnt;
/// - the last factor is a soft brake on an endpoint that holds more than its share of requests
///   in flight (`mean_in_flight` is over the endpoints compared). An LLM replica's running
///   decodes slow every step, the ones that prefill new prompts included, and fill its batch
///   slots, and its time to first token shows this late, at the cliff where new requests must
///   wait for a slot. Without the factor the policy piles requests on whichever replica measured
///   fastest: in the example cluster (four replicas, 70 % load) one of three equal replicas took
///   41 % of the requests and its queue ran away; with it the shares follow the speeds (28, 31, 32
///   and 9 % for speeds 1, 1, 1 and 1/3 in the committed `reports/cluster/cluster.json`, a run of
///   2026-11-25, before issue 16's stack; 30, 30, 30 and 10 % would be exact). In the lab the square root costs little TTFT (its p99 is
///   1.03-1.12 × the ideal's across the `hetero` variants), where the plain ratio cost more.
///
/// The slots are what let the policy route classic servers well: in the lab's `hetero-parallel`
/// scenario (four servers of 8 slots at 10 ms, one four times slower, 65 % load) a serial-queue
/// cost sees a fast server with 8 requests in flight as 9 service times away and sends the idle
/// slow one 3.5 % of the requests (p99 40 ms, 3.33 × the ideal's); with the slots learnt it sends
/// it 0.1 % and its p99 is the ideal's 12 ms. The LLM replicas of lab `hetero` mostly keep one
/// slot: their p99 TTFT is unchanged on the bundled Azure trace (1.06 × the ideal's) and 1.04 ×
/// on the Mooncake one; at 80 % load on the Azure trace 1.12 × (1.32 × while the no-load time was
/// an EWMA rather than the windowed minimum of [`capacity`](crate::capacity): an engine's chunked
/// prefill serves several short prompts in one step, as fast as one, and some replicas then
/// learnt two slots for a while; `reports/lab/hetero-parallel.md`).
///
/// "Response time" is the time to the first byte of the response: the whole answer of a unary
/// call, the time to first token (TTFT) of a stream. For LLM serving this is the cost that
/// matters: a replica's TTFT is set by the prefill work queued ahead of a request and by its
/// speed, while its in-flight count is dominated by long-lived decoding requests that barely
/// delay a new prompt. The policy lab's `hetero` scenario (replicas of unequal speed) shows the
/// difference: in-flight-based policies send the slow replica more than it can take.
///
/// Up to [`EXACT_LIMIT`](Self::EXACT_LIMIT) endpoints it compares every one, so it is exact;
/// ties go to the endpoint after the previous pick. Beyond that it compares
/// [`SAMPLE`](Self::SAMPLE) endpoints drawn at random (the power of d choices), which keeps the
/// cost per request flat however large the pool. It needs nothing from the replicas but their
/// answers, so it balances any gRPC server.
#[derive(Debug)]
pub struct LeastResponseTime {
    start: AtomicUsize,
    rng: Mutex<Xoshiro256PlusPlus>,
}

impl Default for LeastResponseTime {
    fn default() -> Self {
        Self::with_seed(0)
    }
}

impl LeastResponseTime {
    /// Pools up to this size are scanned whole.
    pub const EXACT_LIMIT: usize = 32;
    /// Endpoints compared per request in larger pools.
    pub const SAMPLE: usize = 16;

    /// Least response time (sampling large pools with seed 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Least response time, sampling large pools with draws from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self { start: AtomicUsize::new(0), rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)) }
    }
}

impl Policy for LeastResponseTime {
    fn name(&self) -> &'static str {
        "least-response-time"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let endpoints = endpoints.eligible();
        let n = endpoints.len();
        let work = request.work as f64;
        if n > Self::EXACT_LIMIT {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            let mut sample = [0usize; Self::SAMPLE];
            sample.iter_mut().for_each(|i| *i = rng.random_range(0..n));
            drop(rng);
            return Some(cheapest(sample.into_iter(), endpoints, work));
        }
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        Some(cheapest((0..n).map(|offset| (start + offset) % n), endpoints, work))
    }
}

/// The candidate with the lowest expected time to first byte for `work` more units (the first
/// one on a tie).
fn cheapest(
    candidates: impl Iterator<Item = usize> + Clone,
    endpoints: &[Arc<EndpointState>],
    work: f64,
) -> usize {
    let estimate = ResponseTimeEstimate::over(candidates.clone().map(|i| &*endpoints[i]));
    let mut best = None;
    let mut best_cost = f64::INFINITY;
    for i in candidates {
        let e = &*endpoints[i];
        let cost = estimate.backlog_cost_nanos(&Backlog::of(e), work, estimate.unit_time_nanos(e));
        if best.is_none() || cost < best_cost {
            best = Some(i);
            best_cost = cost;
        }
    }
    best.unwrap_or(0)
}

/// What waits ahead of a new request on one endpoint, as the response-time cost counts it: the
/// work awaiting a first byte, the requests in flight (for the brake) and how many requests the
/// endpoint works off at once. [`Backlog::of`] is the balancer's own view;
/// [`LoadReport`](super::LoadReport) adds what replicas report.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backlog {
    /// Work awaiting a first byte ahead of the request, in the balancer's units.
    pub ahead: f64,
    /// Requests on the endpoint (sent and not ended).
    pub in_flight: f64,
    /// Requests the endpoint works off at once (≥ 1): its learnt slots, never more than the
    /// requests awaiting a first byte there plus this one.
    pub at_once: u32,
}

impl Backlog {
    /// A backlog of `ahead` units of work, `in_flight` requests, worked off `at_once` at a time.
    pub fn new(ahead: f64, in_flight: f64, at_once: u32) -> Self {
        Self { ahead, in_flight, at_once }
    }

    /// What this balancer has on `e`: its pending work, its requests in flight and
    /// [`ResponseTimeEstimate::at_once`].
    pub fn of(e: &EndpointState) -> Self {
        Self::new(e.pending_work() as f64, f64::from(e.in_flight()), ResponseTimeEstimate::at_once(e))
    }
}

/// [`LeastResponseTime`]'s estimate of each endpoint's time to first byte, for policies that
/// weigh it against something else (the prefix-aware policy weighs it against the prefill a
/// cached prefix saves; [`LoadReport`](super::LoadReport) adds the load replicas report) rather
/// than counting load a second way.
///
/// Built over the endpoints compared (one pass: the fastest measured speed, which endpoints
/// without a sample borrow, and the mean in-flight count); then
/// [`backlog_cost_nanos`](Self::backlog_cost_nanos) is the policy's cost for one of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseTimeEstimate {
    unknown_unit_nanos: f64,
    mean_in_flight: f64,
}

impl ResponseTimeEstimate {
    /// The estimate over `endpoints` (the ones compared).
    pub fn over<'a>(endpoints: impl Iterator<Item = &'a EndpointState>) -> Self {
        let (mut fastest, mut total, mut count) = (f64::INFINITY, 0u64, 0u64);
        for e in endpoints {
            if let Some(unit) = e.unit_time_nanos() {
                fastest = fastest.min(unit);
            }
            total += u64::from(e.in_flight());
            count += 1;
        }
        // Before any sample, all endpoints are equal: the pending work decides.
        let unknown_unit_nanos = if fastest.is_finite() { fastest } else { 1.0 };
        Self { unknown_unit_nanos, mean_in_flight: total as f64 / count.max(1) as f64 }
    }

    /// `e`'s time per unit of work, or the fastest measured one when `e` has no sample yet.
    pub fn unit_time_nanos(&self, e: &EndpointState) -> f64 {
        e.unit_time_nanos().unwrap_or(self.unknown_unit_nanos)
    }

    /// The mean in-flight count over the endpoints compared.
    pub fn mean_in_flight(&self) -> f64 {
        self.mean_in_flight
    }

    /// The same estimate with another mean in-flight count (a policy that sees more requests
    /// than the balancer sent, such as the ones a replica reports, brakes against their mean).
    pub fn with_mean_in_flight(mut self, mean_in_flight: f64) -> Self {
        self.mean_in_flight = mean_in_flight;
        self
    }

    /// The soft brake on an endpoint holding `in_flight` requests:
    /// `√((in_flight + 1) / (mean_in_flight + 1))`.
    pub fn brake(&self, in_flight: f64) -> f64 {
        ((in_flight + 1.0) / (self.mean_in_flight + 1.0)).sqrt()
    }

    /// The expected time to first byte, in nanoseconds, of a request of `work` units behind
    /// `backlog` on an endpoint taking `unit_time` nanoseconds per unit:
    /// `(ahead + work) × unit_time × brake(in_flight) ÷ at_once`, [`LeastResponseTime`]'s cost.
    pub fn backlog_cost_nanos(&self, backlog: &Backlog, work: f64, unit_time: f64) -> f64 {
        (backlog.ahead + work) * unit_time * self.brake(backlog.in_flight) / f64::from(backlog.at_once.max(1))
    }

    /// The expected time to first byte at `e` for a request of `work` units, as if the endpoint
    /// served one request at a time:
    /// `(pending_work + work) × unit_time × √((in_flight + 1) / (mean_in_flight + 1))`.
    /// [`LeastResponseTime`] divides it by [`at_once`](Self::at_once)
    /// ([`backlog_cost_nanos`](Self::backlog_cost_nanos) over [`Backlog::of`]); the prefix-aware
    /// policy uses it as it is (its defaults were tuned in the lab against this cost).
    pub fn cost_nanos(&self, e: &EndpointState, work: f64) -> f64 {
        let serial = Backlog { at_once: 1, ..Backlog::of(e) };
        self.backlog_cost_nanos(&serial, work, self.unit_time_nanos(e))
    }

    /// How many requests `e` works off at once: its learnt slots (see [`crate::capacity`]),
    /// never more than the requests awaiting their first byte there plus this one, at least 1.
    pub fn at_once(e: &EndpointState) -> u32 {
        e.slots().min(e.awaiting_first_byte().saturating_add(1)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use switchyard_core::{Endpoint, RequestSize};
    use tokio::time::{Instant, advance};

    fn endpoints(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| {
                Arc::new(EndpointState::new(Endpoint::new(format!("e{i}"), "http://e"), Default::default()))
            })
            .collect()
    }

    fn sized(prompt_tokens: u32) -> http::Extensions {
        let mut e = http::Extensions::new();
        e.insert(RequestSize::new(prompt_tokens, 1));
        e
    }

    /// Sends `work` units to `e`, waits `ttft`, and takes the first byte: one speed sample.
    async fn answer(e: &Arc<EndpointState>, work: u64, ttft: Duration) {
        let mut f = e.start(Instant::now(), work);
        advance(ttft).await;
        f.first_byte();
    }

    #[tokio::test(start_paused = true)]
    async fn learns_speed_and_weighs_the_prefill_backlog() {
        let eps = endpoints(2);
        // e0 takes 1 µs a token, e1 4 µs: a quarter-speed replica.
        answer(&eps[0], 1000, Duration::from_millis(1)).await;
        answer(&eps[1], 1000, Duration::from_millis(4)).await;
        assert_eq!(eps[0].unit_time_nanos(), Some(1000.0));
        assert_eq!(eps[1].unit_time_nanos(), Some(4000.0));
        let policy = LeastResponseTime::new();
        let ext = sized(1000);
        let req = RequestInfo::new(Some(&ext), Instant::now());
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0), "idle: the fast one");
        // A short prefill backlog on the fast endpoint: (500 + 1000) × 1 µs × √(2 / 1.5) ≈ 1.7 ms
        // against (0 + 1000) × 4 µs × √(1 / 1.5) ≈ 3.3 ms.
        let short = eps[0].start(Instant::now(), 500);
        assert_eq!(eps[0].pending_work(), 500);
        assert_eq!(
            policy.pick(&req, &Endpoints::all_eligible(&eps, 0)),
            Some(0),
            "a short backlog on the fast one"
        );
        drop(short);
        // A long one: (3000 + 1000) × 1 µs × 1.15 ≈ 4.6 ms: the slow endpoint answers sooner.
        let _long = eps[0].start(Instant::now(), 3000);
        assert_eq!(
            policy.pick(&req, &Endpoints::all_eligible(&eps, 0)),
            Some(1),
            "a long backlog on the fast one"
        );
        // The backlog's first byte arrives: the fast one is free again.
        drop(_long);
        assert_eq!(eps[0].pending_work(), 0);
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_beyond_the_mean_weigh_against_an_endpoint() {
        let eps = endpoints(2);
        answer(&eps[0], 1, Duration::from_millis(10)).await;
        answer(&eps[1], 1, Duration::from_millis(10)).await;
        // Same speed, nothing waiting for a first byte, but e0 runs 8 decodes: √(9/5) against √(1/5).
        let decoding: Vec<_> = (0..8)
            .map(|_| {
                let mut f = eps[0].start(Instant::now(), 1);
                f.first_byte();
                f
            })
            .collect();
        assert_eq!((eps[0].pending_work(), eps[0].in_flight()), (0, 8));
        let req = RequestInfo::new(None, Instant::now());
        assert_eq!(LeastResponseTime::new().pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(1));
        drop(decoding);
    }

    #[tokio::test(start_paused = true)]
    async fn learns_a_parallel_servers_slots_and_fills_them_before_trying_a_slow_one() {
        let eps = endpoints(2);
        // e0: 4 slots at 10 ms; e1: one request answered in 40 ms.
        answer(&eps[1], 1, Duration::from_millis(40)).await;
        answer(&eps[0], 1, Duration::from_millis(10)).await;
        assert_eq!(eps[0].slots(), 1, "nothing shows more yet");
        for _ in 0..200 {
            // Four at once, each answered in 10 ms: flat up to 4.
            let mut batch: Vec<_> = (0..4).map(|_| eps[0].start(Instant::now(), 1)).collect();
            advance(Duration::from_millis(10)).await;
            batch.iter_mut().for_each(|f| f.first_byte());
        }
        // The estimate nears 4 from below; the whole part in use is 3.
        assert_eq!(eps[0].slots(), 3);
        assert_eq!(eps[0].idle_unit_time_nanos(), Some(10e6));
        let unit = eps[0].unit_time_nanos().unwrap();
        assert!((9e6..=10e6).contains(&unit), "about the no-load latency, not a quarter of it: {unit}");
        let policy = LeastResponseTime::new();
        let req = RequestInfo::new(None, Instant::now());
        // Three in flight on e0: 4 / 3 × 10 ms, braked by √(4 / 2.5), ≈ 17 ms against e1's 40 ms
        // × √(1 / 2.5) ≈ 25 ms.
        let _three: Vec<_> = (0..3).map(|_| eps[0].start(Instant::now(), 1)).collect();
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0));
        drop(_three);
        // Eleven: 12 / 3 × 10 ms × √(12 / 6.5) ≈ 54 ms against 40 ms × √(1 / 6.5) ≈ 16 ms.
        let _eleven: Vec<_> = (0..11).map(|_| eps[0].start(Instant::now(), 1)).collect();
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_borrows_the_fastest_speed_and_is_tried() {
        let eps = endpoints(3);
        answer(&eps[0], 1, Duration::from_millis(10)).await;
        answer(&eps[1], 1, Duration::from_millis(20)).await;
        let _busy = eps[0].start(Instant::now(), 1);
        let req = RequestInfo::new(None, Instant::now());
        assert_eq!(
            LeastResponseTime::new().pick(&req, &Endpoints::all_eligible(&eps, 0)),
            Some(2),
            "e2 counts e0's 10 ms and is idle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_releases_its_pending_work() {
        let eps = endpoints(1);
        let f = eps[0].start(Instant::now(), 500);
        assert_eq!((eps[0].pending_work(), eps[0].awaiting_first_byte()), (500, 1));
        drop(f);
        assert_eq!((eps[0].pending_work(), eps[0].awaiting_first_byte(), eps[0].in_flight()), (0, 0, 0));
        assert_eq!(eps[0].unit_time_nanos(), None, "a cancelled request is no speed sample");
    }

    #[tokio::test(start_paused = true)]
    async fn large_pools_are_sampled_and_still_avoid_the_backlog() {
        let eps = endpoints(200);
        // Every even endpoint has a long prefill queue.
        let _queued: Vec<_> = eps.iter().step_by(2).map(|e| e.start(Instant::now(), 100_000)).collect();
        let policy = LeastResponseTime::with_seed(3);
        let req = RequestInfo::new(None, Instant::now());
        let picks: Vec<usize> =
            (0..200).filter_map(|_| policy.pick(&req, &Endpoints::all_eligible(&eps, 0))).collect();
        assert!(picks.iter().all(|i| i % 2 == 1), "one of 16 draws is almost surely idle: {picks:?}");
        let distinct: std::collections::BTreeSet<_> = picks.iter().collect();
        assert!(distinct.len() > 50, "the picks spread over the idle half: {}", distinct.len());
        let again: Vec<usize> = {
            let policy = LeastResponseTime::with_seed(3);
            (0..200).filter_map(|_| policy.pick(&req, &Endpoints::all_eligible(&eps, 0))).collect()
        };
        assert_eq!(picks, again, "the same seed, the same picks");
    }
}
