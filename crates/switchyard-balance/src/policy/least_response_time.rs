//! Least response time: the endpoint expected to answer first.

use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use super::{Endpoints, Policy, RequestInfo};
use crate::EndpointState;
use crate::rng::NearTie;

/// The endpoint expected to send the first byte of its response soonest, over all endpoints:
///
/// ```text
/// cost = max((pending_work + work) × unit_time / at_once × √((in_flight + 1) / (mean_in_flight + 1)),
///            work × no_load_unit_time)
///        + overdue
/// at_once = min(slots, awaiting_first_byte + 1)
/// ```
///
/// - `work` is the request's size: its prompt tokens when it carries a
///   [`RequestSize`](switchyard_core::RequestSize) extension, otherwise 1 ([`RequestInfo::work`]);
/// - `pending_work` is the work of the requests already sent to the endpoint that have not had
///   their first byte (for an LLM replica: prompts still waiting to be prefilled);
/// - both count each request for at least the endpoint's least work per request
///   ([`EndpointState::min_request_work`], its fastest no-load answer over its fastest no-load
///   time per unit): `work` as `max(work, ω)`, `pending_work` as `max(pending_work,
///   awaiting_first_byte × ω)` ([`EndpointState::request_work`], [`EndpointState::work_ahead`]).
///   An LLM replica's `ω` is about its shortest prompt, so its prompts count by their size; a
///   classic server answers any request in the same time, its `ω` is the largest request it saw,
///   and every request counts alike. Counted by the sizes alone, a short request would look
///   cheap on a slow classic server: in `switchyard bench hetero-parallel`, whose calls carry
///   prompt sizes the parallel workers ignore, the slow worker took 9-11 % of the calls;
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
///   wait for a slot. On classic servers the brake evens the requests out where the learnt slots
///   are off by one: in `switchyard bench overload` (four servers of 4 slots at 100 ms, a pool
///   limit of 16, the shed queue) a server learnt at 3 slots costs more with 3 in flight than
///   one at 4 with 4, so the 16th request queued behind a busy server while a slot stood free
///   elsewhere; braking only the requests past their first byte (none, on a classic server) put
///   the goodput at 3 × load at 0.80 of capacity, braking all of them at 0.99. The price: an
///   idle slow server looks cheaper than it is (its 40 ms × √(1 / 7) at six in flight on
///   average), and in lab `hetero-parallel` with request sizes and delays it took 1 % of the
///   requests (p99 41 ms, 17 ms with the narrower brake); over real processes `switchyard bench
///   hetero-parallel` measured 28 ms with this brake and 29 ms with the narrower one. Without the factor the policy piles
///   requests on whichever LLM replica measured fastest: in the example cluster (four replicas, 70 % load) one of three equal replicas took
///   41 % of the requests and its queue ran away; with it the shares follow the speeds (28, 31, 32
///   and 9 % for speeds 1, 1, 1 and 1/3 in the example cluster's report of 2026-11-25, when its
///   default was four fixed replicas, now `switchyard cluster --fixed 4`; 30, 30, 30 and 10 %
///   would be exact). In the lab the square root costs little TTFT (its p99 is
///   1.07-1.08 × the ideal's across the `hetero` variants), where the plain ratio cost more.
///
/// - a sized request's cost is never below its own no-load time on the endpoint
///   ([`EndpointState::no_load_time_nanos`]: its work × the endpoint's fastest no-load time per
///   unit), whatever the brake and the counting say, on an endpoint whose time grows with the
///   work or has not been judged yet. Without it a long prompt could cost less on an idle slow
///   replica than its prefill there takes alone: the brake scales an endpoint with nothing in
///   flight down (a half with a few requests on each peer), and an endpoint whose answers have
///   not judged yet costs every request as its fastest answer. Where several balancers share
///   a fleet, each sends the slow replica few requests, learns it late, and sees its fast peers
///   slowed by the others' prompts: in lab `herd` (Azure trace, eight balancers, even split)
///   the p99 TTFT was 580 ms, and of the requests at or above it 60 of 81 were prompts of about
///   4,000 tokens on the replica of speed 0.25, which prefills one in 575 ms. With the floor it
///   is 349 ms (skewed split 424 → 349, 32 balancers 584 → 525 and 406 → 372; seeds 2 and 3
///   alike), and one balancer's 185 → 183 ms (`reports/lab/herd.md`);
/// - `overdue` is how long the endpoint has gone without a first byte past the time its
///   backlog should take ([`ResponseTimeEstimate::overdue_nanos`]): 0 while it keeps to its
///   estimate, the stall's excess once it stops or slows down, before any of its requests ends.
///   Counted for requests that carry their size only: without sizes a long request cannot be
///   told from a stall.
///
/// The slots are what let the policy route classic servers well: in the lab's `hetero-parallel`
/// scenario (four servers of 8 slots at 10 ms, one four times slower, 65 % load) a serial-queue
/// cost sees a fast server with 8 requests in flight as 9 service times away and sends the idle
/// slow one 3.5 % of the requests (p99 40 ms, 3.33 × the ideal's); with the slots learnt it sends
/// it 0.1 % and its p99 is the ideal's 12 ms; over real processes (`switchyard bench
/// hetero-parallel`, 20 ms calls) 28 ms, where HAProxy's and nginx's least connections are at
/// 82 ms. The LLM replicas of lab `hetero` mostly keep one slot: their p99 TTFT is 1.02 × the
/// ideal's on the bundled Azure trace (180 ms against 179, p90 119 against 117; 183 and 122
/// before the replicas' reports came in a stream's headers as well as its trailers, so that
/// the first told the balancer to count by size a generation earlier; 131 before a
/// report naming the prefill backlog in tokens counted the work by size, 185 and 133
/// before the floor below; 1.04 ×, 187
/// ms, before the `overdue` term; counted without request sizes too, it cost that variant
/// 1.60 × against 1.17 ×; 184 ms and a p90 of 144 before a first byte more than 10 times
/// slower than the learnt speed set a floor under it,
/// [`EndpointState::unit_time_nanos_at`]), 1.03 × on the Mooncake one (7,696 ms; 7,701
/// before the reports in the headers; 7,858
/// before the reports counted by size, 7,700 before the floor, whose p50 fell from 490 to
/// 467 ms) and
/// 1.06 × at 80 % load on the Azure trace (214 ms against 202; 1.32 ×
/// at 80 % while the no-load time was an EWMA rather than the windowed minimum of
/// [`capacity`](crate::capacity): an engine's chunked prefill serves several short prompts in
/// one step, as fast as one, and some replicas then learnt two slots for a while;
/// `reports/lab/hetero-parallel.md`).
///
/// "Response time" is the time to the first byte of the response: the whole answer of a unary
/// call, the time to first token (TTFT) of a stream. For LLM serving this is the cost that
/// matters: a replica's TTFT is set by the prefill work queued ahead of a request and by its
/// speed, while its in-flight count is dominated by long-lived decoding requests that barely
/// delay a new prompt. The policy lab's `hetero` scenario (replicas of unequal speed) shows the
/// difference: in-flight-based policies send the slow replica more than it can take.
///
/// Up to [`EXACT_LIMIT`](Self::EXACT_LIMIT) endpoints it compares every one. Beyond that it compares
/// [`SAMPLE`](Self::SAMPLE) endpoints drawn at random (the power of d choices), which keeps the
/// cost per request flat however large the pool. It needs nothing from the replicas but their
/// answers, so it balances any gRPC server.
///
/// # Ties, and many balancers
///
/// The pick is drawn at random, from the policy's seed, among the candidates whose cost is
/// within [`NEAR_TIE`](crate::policy::NEAR_TIE) (0.5 %) of the least: exact ties, common while a
/// balancer has nothing in flight on replicas of one speed, and costs equal but for rounding.
/// Until 2026-12-01 a tie went to the endpoint after the previous pick, a rotation; with several
/// balancers over one fleet (gateway replicas, or one balancer in every client process), each
/// of which sees only its own requests in flight, the rotations do not know of each other and
/// several balancers land on one replica. Drawn at random, balancers seeded differently pick
/// independently. In lab `herd` (`reports/lab/herd.md`) the p99 TTFT at 32 balancers, arrivals
/// split evenly, fell from 743 to 541 ms on the Azure trace and from 22,883 to 15,941 ms on the
/// Mooncake one; one balancer's moved from 189 to 187 ms and from 8,101 to 7,736 ms. Independent
/// balancers still see only their own requests: what another balancer sends is not in this cost
/// (the [`LoadReport`](super::LoadReport) policy adds what the replicas report).
#[derive(Debug)]
pub struct LeastResponseTime {
    rng: Mutex<Xoshiro256PlusPlus>,
    ties: NearTie,
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

    /// Least response time, breaking near-ties and sampling large pools with draws from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self { rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)), ties: NearTie::new(seed) }
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
            return self.cheapest(sample.into_iter(), endpoints, work, request.now);
        }
        self.cheapest(0..n, endpoints, work, request.now)
    }
}

impl LeastResponseTime {
    /// The candidate with the lowest expected time to first byte for `work` more units, drawn
    /// at random among those within [`NEAR_TIE`](crate::policy::NEAR_TIE) of it.
    fn cheapest(
        &self,
        candidates: impl Iterator<Item = usize> + Clone,
        endpoints: &[Arc<EndpointState>],
        work: f64,
        now: Instant,
    ) -> Option<usize> {
        let estimate = ResponseTimeEstimate::over(candidates.clone().map(|i| &*endpoints[i])).at(now);
        // Only sized requests count overdue backlogs: without sizes (work 1) a long request
        // cannot be told from a stall (in lab `hetero` without request sizes, counting them cost
        // least response time's p99 TTFT 1.60 × the ideal's against 1.17 ×).
        let sized = work > 1.0;
        self.ties.pick(candidates.map(|i| {
            let e = &*endpoints[i];
            let mut cost = estimate.backlog_cost_nanos(
                &estimate.backlog(e),
                estimate.request_work(e, work),
                estimate.unit_time_nanos(e),
            );
            if sized {
                cost = cost.max(e.no_load_time_nanos(work).unwrap_or(0.0)) + estimate.overdue_nanos(e);
            }
            (i, cost)
        }))
    }
}

/// What waits ahead of a new request on one endpoint, as the response-time cost counts it: the
/// work awaiting a first byte, the requests in flight, those past their first byte (for the
/// brake) and how many requests the endpoint works off at once. [`Backlog::of`] is the balancer's own view;
/// [`LoadReport`](super::LoadReport) adds what replicas report.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backlog {
    /// Work awaiting a first byte ahead of the request, in the balancer's units.
    pub ahead: f64,
    /// Requests on the endpoint (sent and not ended): what the brake weighs.
    pub in_flight: f64,
    /// Requests the endpoint works off at once (≥ 1): its learnt slots, never more than the
    /// requests awaiting a first byte there plus this one.
    pub at_once: u32,
}

impl Backlog {
    /// A backlog of `ahead` units of work and `in_flight` requests, worked off `at_once` at a
    /// time.
    pub fn new(ahead: f64, in_flight: f64, at_once: u32) -> Self {
        Self { ahead, in_flight, at_once }
    }

    /// What this balancer has on `e`: its pending work (each request counted for at least the
    /// endpoint's [`min_request_work`](EndpointState::min_request_work),
    /// [`EndpointState::work_ahead`]), its requests in flight and
    /// [`ResponseTimeEstimate::at_once`].
    pub fn of(e: &EndpointState) -> Self {
        Self::new(e.work_ahead(), f64::from(e.in_flight()), ResponseTimeEstimate::at_once(e))
    }
}

/// [`LeastResponseTime`]'s estimate of each endpoint's time to first byte, for policies that
/// weigh it against something else (the prefix-aware policy weighs it against the prefill a
/// cached prefix saves; [`LoadReport`](super::LoadReport) adds the load replicas report) rather
/// than counting load a second way.
///
/// Built over the endpoints compared (one pass: the fastest measured speed, which endpoints
/// without a sample borrow, and the mean count of requests in flight); then
/// [`backlog_cost_nanos`](Self::backlog_cost_nanos) is the policy's cost for one of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseTimeEstimate {
    unknown_unit_nanos: f64,
    unknown_min_request_work: f64,
    mean_in_flight: f64,
    /// The time of the pick, when stalls count (see [`at`](Self::at)).
    now: Option<Instant>,
}

impl ResponseTimeEstimate {
    /// The estimate over `endpoints` (the ones compared).
    pub fn over<'a>(endpoints: impl Iterator<Item = &'a EndpointState>) -> Self {
        let (mut in_flight, mut count) = (0u64, 0u64);
        // The fastest measured endpoint by its time for the least request (`unit × ω`, its
        // no-load answer to the shortest request whether it counts tokens or requests), and how
        // it counts the work: an endpoint without a sample is costed as a copy of it.
        let (mut fastest, mut unknown_unit_nanos, mut unknown_min_request_work) = (f64::INFINITY, 1.0, 1.0);
        for e in endpoints {
            if let Some(unit) = e.unit_time_nanos() {
                let omega = e.min_request_work();
                if unit * omega < fastest {
                    (fastest, unknown_unit_nanos, unknown_min_request_work) = (unit * omega, unit, omega);
                }
            }
            in_flight += u64::from(e.in_flight());
            count += 1;
        }
        // Before any sample, all endpoints are equal: the pending work decides.
        let count = count.max(1) as f64;
        Self {
            unknown_unit_nanos,
            unknown_min_request_work,
            mean_in_flight: in_flight as f64 / count,
            now: None,
        }
    }

    /// The same estimate at `now`, so that it can tell how far an endpoint's backlog is overdue
    /// ([`overdue_nanos`](Self::overdue_nanos)) and count what a recent stall showed of its
    /// speed ([`unit_time_nanos`](Self::unit_time_nanos)).
    pub fn at(mut self, now: Instant) -> Self {
        self.now = Some(now);
        self
    }

    /// `e`'s time per unit of work, or the fastest measured one's when `e` has no sample yet.
    /// At a time ([`at`](Self::at)), the floor a recent stall set under it counts
    /// ([`EndpointState::unit_time_nanos_at`]).
    pub fn unit_time_nanos(&self, e: &EndpointState) -> f64 {
        match self.now {
            Some(now) => e.unit_time_nanos_at(now),
            None => e.unit_time_nanos(),
        }
        .unwrap_or(self.unknown_unit_nanos)
    }

    /// How far `e`'s backlog is overdue, in nanoseconds, at the time of the estimate
    /// ([`at`](Self::at); 0 without one): how long it has [stalled](EndpointState::stalled_for)
    /// past the time its work awaiting a first byte should take (`work_ahead × unit_time ÷
    /// at_once`), 0 while it keeps within it. [`LeastResponseTime`] adds it to the endpoint's
    /// cost: a request whose first byte is that late will, by the usual rule for a wait that has
    /// already run long (a heavy-tailed service time's expected remaining life grows with the time
    /// spent), take at least as long again, and everything behind it waits for it.
    ///
    /// A healthy endpoint's stalls stay near its estimate and add little; one that stops or
    /// slows down is overdue as soon as its backlog is, and its cost then grows with the stall,
    /// without waiting for a request to end there. In `switchyard bench faults`, a replica
    /// stopped with SIGSTOP kept getting new calls for a few tens of milliseconds after the
    /// fault, all of which failed at their deadline, and one slowed 20 times kept a trickle of
    /// them to the end of the run.
    pub fn overdue_nanos(&self, e: &EndpointState) -> f64 {
        self.overdue_nanos_behind(e, 0.0)
    }

    /// [`overdue_nanos`](Self::overdue_nanos) on an endpoint that had `foreign` units of other
    /// clients' work ahead of the balancer's when its stall began (what a load report showed,
    /// [`LoadReport`](super::LoadReport)): the backlog is due only once that work is done as
    /// well. Counting the balancer's own work alone, a replica busy prefilling other balancers'
    /// prompts looked stalled, and a sized request left it while it kept to its pace.
    pub fn overdue_nanos_behind(&self, e: &EndpointState, foreign: f64) -> f64 {
        let Some(stall) = self.now.and_then(|now| e.stalled_for(now)) else { return 0.0 };
        let ahead = crate::capacity::work_ahead(
            e.pending_work() as f64,
            f64::from(e.awaiting_first_byte()),
            self.min_request_work(e),
        ) + foreign.max(0.0);
        let at_once = e.slots().min(e.awaiting_first_byte()).max(1);
        let due = ahead * self.unit_time_nanos(e) / f64::from(at_once);
        (stall.as_secs_f64() * 1e9 - due).max(0.0)
    }

    /// The least work a request counts for on `e` ([`EndpointState::min_request_work`]), or
    /// the fastest measured endpoint's when `e` has no sample yet: the units of
    /// [`unit_time_nanos`](Self::unit_time_nanos). Borrowing the time per unit alone would
    /// mix units: a token's time borrowed from a classic server that counts every request
    /// as [`PER_REQUEST_WORK`](crate::capacity::PER_REQUEST_WORK) units made a new endpoint
    /// look a million times cheaper than its peers.
    pub fn min_request_work(&self, e: &EndpointState) -> f64 {
        if e.unit_time_nanos().is_some() { e.min_request_work() } else { self.unknown_min_request_work }
    }

    /// The work a request of `work` units counts for on `e`: `max(work, ω)` with `ω` from
    /// [`min_request_work`](Self::min_request_work).
    pub fn request_work(&self, e: &EndpointState, work: f64) -> f64 {
        crate::capacity::request_work(work, self.min_request_work(e))
    }

    /// What waits ahead of a new request on `e` ([`Backlog::of`]), its work counted as
    /// [`min_request_work`](Self::min_request_work) says.
    pub fn backlog(&self, e: &EndpointState) -> Backlog {
        let ahead = crate::capacity::work_ahead(
            e.pending_work() as f64,
            f64::from(e.awaiting_first_byte()),
            self.min_request_work(e),
        );
        Backlog::new(ahead, f64::from(e.in_flight()), Self::at_once(e))
    }

    /// The mean count of requests in flight over the endpoints compared.
    pub fn mean_in_flight(&self) -> f64 {
        self.mean_in_flight
    }

    /// The same estimate with another mean count of requests in flight (a policy that sees
    /// more requests than the balancer sent, such as the ones a replica reports, brakes against
    /// their mean).
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
    /// `(pending_work + work) × unit_time × √((in_flight + 1) / (mean_in_flight + 1))`, with
    /// the work in tokens (on an endpoint that counts every request alike, see
    /// [`crate::capacity`], its requests counted as it counts them). The prefix-aware policy
    /// weighs it against the prefill a cached prefix saves; its defaults were tuned in the lab
    /// against this cost, the one [`LeastResponseTime`] used before it learnt slots and counted a
    /// least work per request (with those, lab `prefix`'s approximate hit rate fell to 0.295,
    /// under 90 % of the upper bound's 0.331).
    pub fn cost_nanos(&self, e: &EndpointState, work: f64) -> f64 {
        let b = self.backlog(e);
        let brake = self.brake(b.in_flight);
        let (ahead, work) = if self.min_request_work(e) >= crate::capacity::PER_REQUEST_WORK {
            (b.ahead, self.request_work(e, work))
        } else {
            (e.pending_work() as f64, work)
        };
        (ahead + work) * self.unit_time_nanos(e) * brake
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
    async fn a_classic_servers_requests_cost_alike_whatever_their_size() {
        // Two servers that answer any request in the same time: e0 in 20 ms, e1 in 80 ms. The
        // requests carry sizes (100 to 2,000 units) that neither server's time depends on.
        let eps = endpoints(2);
        for (e, ms) in [(&eps[0], 20), (&eps[1], 80)] {
            for work in [2000, 100, 700, 1500, 300, 1200, 500, 900, 1800] {
                answer(e, work, Duration::from_millis(ms)).await;
            }
        }
        let per_request = crate::capacity::PER_REQUEST_WORK;
        assert_eq!((eps[0].min_request_work(), eps[1].min_request_work()), (per_request, per_request));
        // Judged so by their nine answers, a request larger than any seen is no slower there:
        // no floor by its size.
        assert_eq!(eps[0].counting_verdict(), Some(true));
        assert_eq!(eps[0].no_load_time_nanos(1e6), None);
        let policy = LeastResponseTime::new();
        // e0 works on a large request. A small one would wait 20 ms behind it there (at most
        // 40 ms), 80 ms on e1: counted by its size, it would look 20 times cheaper on e1
        // (100 units at e1's time per unit against 2,100 at e0's).
        let _busy = eps[0].start(Instant::now(), 2000);
        assert_eq!(eps[0].work_ahead(), per_request);
        let ext = sized(100);
        let req = RequestInfo::new(Some(&ext), Instant::now());
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0));
        // Four ahead on e0 (its 80 ms and more) do not.
        let _more: Vec<_> = (0..3).map(|_| eps[0].start(Instant::now(), 100)).collect();
        assert_eq!(eps[0].work_ahead(), 4.0 * per_request, "each request counts alike");
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_without_a_sample_is_costed_as_the_fastest_in_its_units() {
        // e0 answered once in 10 ms and counts every request alike (its first answers cannot
        // show that time grows with size); e1 has no answer yet and three requests of 100 units
        // awaiting their first byte.
        let eps = endpoints(2);
        answer(&eps[0], 100, Duration::from_millis(10)).await;
        assert!(eps[0].min_request_work() >= crate::capacity::PER_REQUEST_WORK);
        let _waiting: Vec<_> = (0..3).map(|_| eps[1].start(Instant::now(), 100)).collect();
        let estimate = ResponseTimeEstimate::over(eps.iter().map(|e| &**e));
        assert_eq!(estimate.min_request_work(&eps[1]), eps[0].min_request_work(), "borrowed with the time");
        // Costed as a copy of e0, e1 is four requests away (40 ms) and e0 one (10 ms). With e0's
        // time per unit alone and its own count of 400 units, e1 looked ten million times cheaper (4 ns).
        let ext = sized(100);
        let req = RequestInfo::new(Some(&ext), Instant::now());
        for _ in 0..2 {
            assert_eq!(LeastResponseTime::new().pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0));
        }
        let e1 = estimate.backlog_cost_nanos(
            &estimate.backlog(&eps[1]),
            estimate.request_work(&eps[1], 100.0),
            estimate.unit_time_nanos(&eps[1]),
        );
        // Braked by its requests in flight: 3 against a mean of 1.5.
        let braked = 40e6 * (4.0f64 / 2.5).sqrt();
        assert!((e1 - braked).abs() < 1.0, "{e1}");
        assert!((estimate.cost_nanos(&eps[1], 100.0) - braked).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_prompt_never_costs_less_than_its_own_prefill_on_an_idle_slow_replica() {
        // e0 takes 1 µs a token, e1 4 µs. e0 streams six responses past their first byte and
        // prefills a prompt of 3,000 tokens; nothing runs on e1.
        let eps = endpoints(2);
        eps[0].teach_time_grows_with_work(Duration::from_micros(1)).await;
        eps[1].teach_time_grows_with_work(Duration::from_micros(4)).await;
        answer(&eps[0], 1000, Duration::from_millis(1)).await;
        answer(&eps[1], 1000, Duration::from_millis(4)).await;
        let mut streams = Vec::new();
        for _ in 0..6 {
            let mut f = eps[0].start(Instant::now(), 100);
            f.first_byte();
            streams.push(f);
        }
        let _prefill = eps[0].start(Instant::now(), 3000);
        assert_eq!(eps[1].no_load_time_nanos(4000.0), Some(16e6));
        // A prompt of 4,000 tokens: 7 ms on e0 (braked by its 7 requests in flight against a
        // mean of 3.5: 9.3 ms), 16 ms on e1 whatever runs elsewhere. Braked, e1's cost was
        // 16 ms × √(1 ÷ 4.5) = 7.5 ms, and the prompt went there.
        let estimate = ResponseTimeEstimate::over(eps.iter().map(|e| &**e)).at(Instant::now());
        let braked = estimate.backlog_cost_nanos(
            &estimate.backlog(&eps[1]),
            estimate.request_work(&eps[1], 4000.0),
            estimate.unit_time_nanos(&eps[1]),
        );
        assert!((braked - 16e6 * (1.0f64 / 4.5).sqrt()).abs() < 1e3, "{braked}");
        let ext = sized(4000);
        let req = RequestInfo::new(Some(&ext), Instant::now());
        assert_eq!(LeastResponseTime::new().pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0));
        // A short prompt still goes to the idle slow replica: 1.6 ms there against 3.4 ms behind
        // e0's prefill (4.5 ms braked).
        let ext = sized(400);
        let req = RequestInfo::new(Some(&ext), Instant::now());
        assert_eq!(LeastResponseTime::new().pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn learns_speed_and_weighs_the_prefill_backlog() {
        let eps = endpoints(2);
        // e0 takes 1 µs a token, e1 4 µs: a quarter-speed replica.
        eps[0].teach_time_grows_with_work(Duration::from_micros(1)).await;
        eps[1].teach_time_grows_with_work(Duration::from_micros(4)).await;
        answer(&eps[0], 1000, Duration::from_millis(1)).await;
        answer(&eps[1], 1000, Duration::from_millis(4)).await;
        assert_eq!(eps[0].unit_time_nanos(), Some(1000.0));
        assert_eq!(eps[1].unit_time_nanos(), Some(4000.0));
        let policy = LeastResponseTime::new();
        let ext = sized(1000);
        let req = RequestInfo::new(Some(&ext), Instant::now());
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0), "idle: the fast one");
        // A short prefill backlog on the fast endpoint: (500 + 1000) × 1 µs = 1.5 ms against
        // (0 + 1000) × 4 µs = 4 ms (nothing streams on either: no brake).
        let short = eps[0].start(Instant::now(), 500);
        assert_eq!(eps[0].pending_work(), 500);
        assert_eq!(
            policy.pick(&req, &Endpoints::all_eligible(&eps, 0)),
            Some(0),
            "a short backlog on the fast one"
        );
        drop(short);
        // A long one: (3500 + 1000) × 1 µs = 4.5 ms: the slow endpoint answers sooner.
        let _long = eps[0].start(Instant::now(), 3500);
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
        // Flat at 4 at once: the whole part of the estimate reaches 4.
        assert_eq!(eps[0].slots(), 4);
        assert_eq!(eps[0].idle_unit_time_nanos(), Some(10e6));
        let unit = eps[0].unit_time_nanos().unwrap() * eps[0].request_work(1.0);
        assert!((9e6..=10e6).contains(&unit), "about the no-load latency, not a quarter of it: {unit}");
        let policy = LeastResponseTime::new();
        let req = RequestInfo::new(None, Instant::now());
        // Three in flight on e0: 4 / 4 × 10 ms, braked by √(4 / 2.5), ≈ 13 ms against e1's
        // 40 ms × √(1 / 2.5) ≈ 25 ms. (Costed as one slot, e0 would be at 40 ms × √(4 / 2.5).)
        let _three: Vec<_> = (0..3).map(|_| eps[0].start(Instant::now(), 1)).collect();
        assert_eq!(policy.pick(&req, &Endpoints::all_eligible(&eps, 0)), Some(0));
        drop(_three);
        // Eleven: 12 / 4 × 10 ms × √(12 / 6.5) ≈ 41 ms against 40 ms × √(1 / 6.5) ≈ 16 ms: the
        // brake over every request in flight sends the idle slow one this request (see the
        // type's docs for what that costs and what it buys).
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
    async fn an_endpoint_that_stalls_past_its_backlog_costs_more_as_the_stall_grows_and_is_tried_again_after()
    {
        // Two endpoints of one speed, 1 ms per unit (prompts of 500 units and more count by size).
        let eps = endpoints(2);
        for e in &eps {
            e.teach_time_grows_with_work(Duration::from_millis(1)).await;
        }
        let policy = LeastResponseTime::new();
        let ext = sized(1000);
        // e0 takes 1,000 units (due in about a second), e1 3,000.
        let stuck = eps[0].start(Instant::now(), 1000);
        let _busy = eps[1].start(Instant::now(), 3000);
        let pick = |policy: &LeastResponseTime| {
            policy.pick(&RequestInfo::new(Some(&ext), Instant::now()), &Endpoints::all_eligible(&eps, 0))
        };
        assert_eq!(pick(&policy), Some(0), "the shorter backlog");
        advance(Duration::from_millis(500)).await;
        assert_eq!(pick(&policy), Some(0), "a stall within its backlog's time says nothing");
        assert_eq!(eps[0].stalled_for(Instant::now()), Some(Duration::from_millis(500)));
        // e1 answers; e0 does not: 8 s on 1,000 units, 7 s past their time.
        let mut next = eps[1].start(Instant::now(), 3000);
        advance(Duration::from_millis(7500)).await;
        next.first_byte();
        assert_eq!(eps[1].stalled_for(Instant::now()), Some(Duration::ZERO), "e1 made progress");
        let estimate = ResponseTimeEstimate::over(eps.iter().map(|e| &**e)).at(Instant::now());
        let overdue = estimate.overdue_nanos(&eps[0]);
        assert!((overdue - 7e9).abs() < 1e6, "8 s for 1 s of work: {overdue}");
        assert_eq!(estimate.overdue_nanos(&eps[1]), 0.0);
        assert_eq!(
            ResponseTimeEstimate::over(eps.iter().map(|e| &**e)).overdue_nanos(&eps[0]),
            0.0,
            "no time"
        );
        assert_eq!(pick(&policy), Some(1), "e0 is overdue: its stall counts");
        drop(stuck);
        assert_eq!(eps[0].stalled_for(Instant::now()), None, "nothing awaits a first byte there");
        // Given up on after 8 s: e0 takes at least 8 ms a unit, a floor under its speed
        // (8 s for a new prompt, against 4 s behind e1's backlog) that fades with
        // `TrackingConfig::stall_decay` (1 s): a second later it is 2.9 s and e0 is tried again.
        assert_eq!(pick(&policy), Some(1), "the stall's floor");
        advance(Duration::from_secs(1)).await;
        assert_eq!(pick(&policy), Some(0), "the floor has faded");
        assert_eq!(eps[0].unit_time_nanos(), Some(1e6), "its speed itself was never lowered");
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
