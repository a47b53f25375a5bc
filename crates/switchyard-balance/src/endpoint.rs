//! The live state of one endpoint: what the balancer tracks and what policies read.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use switchyard_core::{Endpoint, EndpointId, Load, Outcome, ReportedLoad, orca};
use switchyard_limit::{LimitAlgorithm, Sample, Signal};
use tokio::time::Instant;

use crate::board::LoadBoard;
use crate::capacity::{CapacityEstimate, FirstByte};
use crate::method_speed::{MethodSpeeds, NO_METHOD};
use crate::outlier::{OutlierConfig, OutlierState, Verdict};

/// How load is tracked: the time constants of the latency and speed estimates, and the latency
/// assumed before the first answer.
///
/// The latency defaults are linkerd's and tower's: a 10 s decay and a 30 ms prior RTT.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TrackingConfig {
    /// Time constant of the peak-EWMA latency: a sample's weight falls to 1/e after this long.
    pub decay: Duration,
    /// The latency assumed for an endpoint that has not answered yet.
    pub default_rtt: Duration,
    /// Time constant of the time-per-unit-of-work EWMA ([`EndpointState::unit_time_nanos`]).
    /// Longer than `decay` because it estimates a replica's speed, which changes slowly, from
    /// samples that vary with the batch each request happened to share. Default 30 s, the most
    /// robust setting across the policy lab's `hetero` variants (loads 0.6 to 0.8, both traces).
    pub speed_decay: Duration,
    /// Time constant over which what a stall showed is forgotten: a request given up on without
    /// a first byte sets a floor under the endpoint's time per unit of work (a lower bound: it
    /// took at least that long, [`EndpointState::unit_time_nanos_at`]), and the floor decays
    /// with this time constant, so an endpoint that stopped and came back is tried again within
    /// a few of them instead of being avoided for as long as its speed is remembered. Default
    /// 1 s.
    pub stall_decay: Duration,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            speed_decay: Duration::from_secs(30),
            stall_decay: Duration::from_secs(1),
        }
    }
}

impl TrackingConfig {
    /// The same settings with this peak-EWMA latency time constant.
    pub fn with_decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// The same settings with this latency assumed before the first answer.
    pub fn with_default_rtt(mut self, default_rtt: Duration) -> Self {
        self.default_rtt = default_rtt;
        self
    }

    /// The same settings with this time constant for the time-per-unit-of-work EWMA.
    pub fn with_speed_decay(mut self, speed_decay: Duration) -> Self {
        self.speed_decay = speed_decay;
        self
    }

    /// The same settings with this time constant for forgetting what a stall showed.
    pub fn with_stall_decay(mut self, stall_decay: Duration) -> Self {
        self.stall_decay = stall_decay;
        self
    }
}

/// One endpoint's live load: in-flight requests (and how many of them, with how much work, still
/// wait for their first byte), the peak-EWMA latency, the time it takes per unit of work, the last
/// load report its replica sent, its outcome counters and its ejection state.
///
/// The balancer owns one per endpoint and shares it (behind an `Arc`) with policies, with the
/// futures of the requests in flight, and with the [`LoadBoard`](crate::LoadBoard). Reads are
/// cheap: atomics, and short uncontended locks for the latency and the report.
#[derive(Debug)]
pub struct EndpointState {
    id: EndpointId,
    /// The endpoint as discovery last described it (a re-insert with the same address may
    /// change its weight and labels, in place).
    endpoint: ArcSwap<Endpoint>,
    weight: AtomicU32,
    /// The [`TrackingConfig`], as nanoseconds, so that a balancer's `with_tracking` reaches
    /// endpoints already inserted.
    decay_nanos: AtomicU64,
    default_rtt_nanos: AtomicU64,
    speed_decay_nanos: AtomicU64,
    stall_decay_nanos: AtomicU64,
    in_flight: AtomicU32,
    awaiting_first_byte: AtomicU32,
    /// Whether a request that carried its size was ever sent here (see
    /// [`EndpointState::sizes_requests`]).
    sized_requests: AtomicBool,
    /// When the endpoint last made progress (see [`EndpointState::stalled_for`]), in
    /// nanoseconds after `epoch`.
    progress_nanos: AtomicU64,
    epoch: Instant,
    pending_work: AtomicU64,
    /// Work of every request started since the endpoint was added (see
    /// [`EndpointState::started_work`]).
    started_work: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    overloaded: AtomicU64,
    cancelled: AtomicU64,
    /// Removed by discovery while requests were in flight: kept on the board until they end.
    draining: AtomicBool,
    /// The board to leave once drained.
    drain_board: Mutex<Option<LoadBoard>>,
    rtt: Mutex<Option<RttEstimate>>,
    unit_time: Mutex<Option<RttEstimate>>,
    /// The current unit time as `f64` bits (NaN before the first sample), for lock-free reads by
    /// policies that scan every endpoint.
    unit_time_bits: AtomicU64,
    /// First bytes the time per unit has learnt from since it last started over: below
    /// [`SPEED_SAMPLES_TO_JUDGE`], no first byte or given-up call is judged a slowdown against it.
    speed_samples: AtomicU32,
    /// The time per unit of each method sent here: the reference a first byte is read against
    /// to tell a slowdown (see [`crate::method_speed`]).
    method_speeds: Mutex<MethodSpeeds>,
    /// The floor a stall set under the time per unit (see
    /// [`EndpointState::unit_time_nanos_at`]), as `f64` bits (NaN for none), and when it was set,
    /// in nanoseconds after `epoch`.
    stall_floor_bits: AtomicU64,
    stall_floor_at: AtomicU64,
    /// Floors set again, each after the one before had faded, with no first byte under the
    /// floor in between (see [`EndpointState::unit_time_nanos_at`]): each doubles the floor's
    /// time constant.
    stall_strikes: AtomicU32,
    /// Whether the standing floor was [`SLOW_SAMPLE`] times the speed learnt or more when it was
    /// set (see [`EndpointState::on_probation`]).
    stall_severe: AtomicBool,
    /// When the last first byte [`SLOW_SAMPLE`] times slower than the speed came, in
    /// nanoseconds after `epoch` (0 for none; see [`EndpointState::slow_first_byte`]).
    last_slow_first_byte: AtomicU64,
    /// When the last call given up on without a first byte said the endpoint was
    /// [`SLOW_SAMPLE`] times slower than its speed or more, in nanoseconds after `epoch` (0 for
    /// none; see [`EndpointState::severe_give_up`]).
    last_severe_give_up: AtomicU64,
    /// How long a response runs on after its first byte (a stream's generation): an EWMA over
    /// the requests that succeeded, with the speed's time constant.
    after_first_byte: Mutex<Option<RttEstimate>>,
    /// The same as `f64` bits (NaN before the first sample).
    after_first_byte_bits: AtomicU64,
    /// What the endpoint takes at once, learnt from its first bytes.
    capacity: Mutex<CapacityEstimate>,
    /// [`CapacityEstimate::slots`], read without the lock.
    slots: AtomicU32,
    /// [`CapacityEstimate::idle_unit_nanos`] as `f64` bits (NaN before the first sample).
    idle_unit_bits: AtomicU64,
    /// [`CapacityEstimate::min_request_work`] as `f64` bits.
    min_request_work_bits: AtomicU64,
    /// Whether the endpoint's own no-load answers judged that every request counts alike
    /// ([`CapacityEstimate::counting_verdict`] is `Some(true)`).
    judged_per_request: AtomicBool,
    /// Whether a load report has said that the replica counts its backlog in prompt tokens
    /// (see `learn_counting_from`).
    counts_tokens_reported: AtomicBool,
    /// Encoded reports decoded on arrival to look for that (at most [`COUNTING_CHECKS`]).
    counting_checks: AtomicU32,
    report: Mutex<ReportSlot>,
    pub(crate) outlier: Mutex<OutlierState>,
    /// When the endpoint's current failure streak last grew, in nanoseconds since `epoch` (0:
    /// no streak): read by [`is_suspect`](Self::is_suspect) without the outlier detector's lock.
    failing_at: AtomicU64,
    /// When a stall or slowdown of [`SLOW_SAMPLE`] times the speed last set the floor, in
    /// nanoseconds since `epoch` (0: none since the floor was last cleared): see
    /// [`is_suspect`](Self::is_suspect).
    severe_stall_at: AtomicU64,
    /// The endpoint's concurrency-limit algorithm, when the balancer limits each endpoint.
    limit: Mutex<Option<Box<dyn LimitAlgorithm>>>,
    /// The limit in force (`u32::MAX`: none), read without the lock.
    limit_value: AtomicU32,
}

/// The replica's last load report. A report that arrives as an ORCA header stays in its wire form
/// until something reads it: decoding (base64, then protobuf) costs more than the rest of the
/// response's tracking, and most policies never read reports.
#[derive(Debug, Default)]
struct ReportSlot {
    /// The last report decoded, with when it arrived.
    decoded: Option<(Arc<ReportedLoad>, Instant)>,
    /// A report that arrived after `decoded`, not decoded yet: its base64 text, copied out of
    /// the response so that it holds no connection buffer alive.
    encoded: Option<(bytes::Bytes, Instant)>,
    /// The balancer's own load on the endpoint when the newest report (`encoded` if any, else
    /// `decoded`) arrived.
    own_at_newest: OwnLoad,
    /// The same for `decoded`.
    own_at_decoded: OwnLoad,
}

/// What the balancer itself had on an endpoint at one moment: the baseline that tells which
/// part of a replica's load report is load this balancer sent (and already counts) and which
/// part it cannot see (other clients' requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnLoad {
    /// Requests this balancer had in flight there ([`EndpointState::in_flight`]).
    pub in_flight: u32,
    /// Of those, the ones awaiting their first byte ([`EndpointState::awaiting_first_byte`]).
    pub awaiting_first_byte: u32,
    /// Their work ([`EndpointState::pending_work`]).
    pub pending_work: u64,
}

/// A replica's last load report, with when it arrived and what the balancer itself had on the
/// endpoint at that moment ([`EndpointState::fresh_report_with_own`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReportSnapshot {
    /// The report.
    pub report: Arc<ReportedLoad>,
    /// When it arrived.
    pub at: Instant,
    /// The balancer's own load on the endpoint when it arrived.
    pub own: OwnLoad,
}

impl ReportSlot {
    /// The newest report, with when it arrived. A malformed one is dropped (with a debug log),
    /// and readers keep the last one they decoded.
    fn current(&mut self, endpoint: &EndpointId) -> Option<&(Arc<ReportedLoad>, Instant)> {
        if let Some((value, at)) = self.encoded.take() {
            match orca::decode_base64(&value) {
                Ok(report) => {
                    self.decoded = Some((Arc::new(report), at));
                    self.own_at_decoded = self.own_at_newest;
                }
                Err(e) => tracing::debug!(endpoint = %endpoint, "ignoring malformed load report: {e}"),
            }
        }
        self.decoded.as_ref()
    }
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
            id: endpoint.id.clone(),
            weight: AtomicU32::new(endpoint.weight),
            endpoint: ArcSwap::from_pointee(endpoint),
            decay_nanos: AtomicU64::new(duration_nanos(tracking.decay)),
            default_rtt_nanos: AtomicU64::new(duration_nanos(tracking.default_rtt)),
            speed_decay_nanos: AtomicU64::new(duration_nanos(tracking.speed_decay)),
            stall_decay_nanos: AtomicU64::new(duration_nanos(tracking.stall_decay)),
            in_flight: AtomicU32::new(0),
            awaiting_first_byte: AtomicU32::new(0),
            sized_requests: AtomicBool::new(false),
            progress_nanos: AtomicU64::new(0),
            epoch: Instant::now(),
            pending_work: AtomicU64::new(0),
            started_work: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drain_board: Mutex::new(None),
            rtt: Mutex::new(None),
            unit_time: Mutex::new(None),
            unit_time_bits: AtomicU64::new(f64::NAN.to_bits()),
            speed_samples: AtomicU32::new(0),
            method_speeds: Mutex::new(MethodSpeeds::default()),
            stall_floor_bits: AtomicU64::new(f64::NAN.to_bits()),
            stall_floor_at: AtomicU64::new(0),
            stall_strikes: AtomicU32::new(0),
            stall_severe: AtomicBool::new(false),
            last_slow_first_byte: AtomicU64::new(0),
            last_severe_give_up: AtomicU64::new(0),
            after_first_byte: Mutex::new(None),
            after_first_byte_bits: AtomicU64::new(f64::NAN.to_bits()),
            capacity: Mutex::new(CapacityEstimate::default()),
            slots: AtomicU32::new(1),
            idle_unit_bits: AtomicU64::new(f64::NAN.to_bits()),
            min_request_work_bits: AtomicU64::new(1.0f64.to_bits()),
            judged_per_request: AtomicBool::new(false),
            counts_tokens_reported: AtomicBool::new(false),
            counting_checks: AtomicU32::new(0),
            report: Mutex::new(ReportSlot::default()),
            outlier: Mutex::new(OutlierState::default()),
            failing_at: AtomicU64::new(0),
            severe_stall_at: AtomicU64::new(0),
            limit: Mutex::new(None),
            limit_value: AtomicU32::new(NO_LIMIT),
        }
    }

    /// The endpoint's concurrency limit in force, when the balancer limits each endpoint
    /// ([`Balance::with_endpoint_limit`](crate::Balance::with_endpoint_limit)).
    pub fn limit(&self) -> Option<u32> {
        let limit = self.limit_value.load(Ordering::Relaxed);
        (limit != NO_LIMIT).then_some(limit)
    }

    /// Whether the endpoint has as many requests in flight as its limit allows (never without a
    /// limit): policies do not see it.
    pub fn is_at_limit(&self) -> bool {
        self.in_flight() >= self.limit_value.load(Ordering::Relaxed)
    }

    /// Gives the endpoint a limit algorithm (or takes it away).
    pub(crate) fn set_limit(&self, algorithm: Option<Box<dyn LimitAlgorithm>>) {
        let value = algorithm.as_ref().map_or(NO_LIMIT, |a| limit_u32(a.limit()));
        *lock(&self.limit) = algorithm;
        self.limit_value.store(value, Ordering::Relaxed);
    }

    /// Feeds the endpoint's limit with a request that ended.
    fn sample_limit(&self, outcome: Outcome, rtt: Duration, in_flight: u32, now: Instant) {
        if self.limit_value.load(Ordering::Relaxed) == NO_LIMIT {
            return;
        }
        let signal = Signal::of(&outcome);
        if signal == Signal::Ignored {
            return;
        }
        let sample = Sample { now, rtt, in_flight: in_flight as usize, dropped: signal == Signal::Dropped };
        let mut guard = lock(&self.limit);
        if let Some(algorithm) = guard.as_mut() {
            let limit = limit_u32(algorithm.update(&sample));
            self.limit_value.store(limit, Ordering::Relaxed);
        }
    }

    /// How the endpoint's load is tracked.
    pub fn tracking(&self) -> TrackingConfig {
        let d = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        TrackingConfig {
            decay: d(&self.decay_nanos),
            default_rtt: d(&self.default_rtt_nanos),
            speed_decay: d(&self.speed_decay_nanos),
            stall_decay: d(&self.stall_decay_nanos),
        }
    }

    /// Tracks the endpoint's load with `tracking` from now on (the estimates made so far stay).
    pub(crate) fn set_tracking(&self, tracking: TrackingConfig) {
        self.decay_nanos.store(duration_nanos(tracking.decay), Ordering::Relaxed);
        self.default_rtt_nanos.store(duration_nanos(tracking.default_rtt), Ordering::Relaxed);
        self.speed_decay_nanos.store(duration_nanos(tracking.speed_decay), Ordering::Relaxed);
        self.stall_decay_nanos.store(duration_nanos(tracking.stall_decay), Ordering::Relaxed);
    }

    fn decay(&self) -> Duration {
        Duration::from_nanos(self.decay_nanos.load(Ordering::Relaxed))
    }

    /// The endpoint as discovery last described it.
    pub fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.load_full()
    }

    /// The endpoint's id.
    pub fn id(&self) -> &EndpointId {
        &self.id
    }

    /// The endpoint's weight (as [`Endpoint::weight`], read without a lock).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Takes a new description of the same endpoint (same id and address): its weight and
    /// labels change, its load state stays.
    pub(crate) fn update(&self, endpoint: Endpoint) {
        self.weight.store(endpoint.weight, Ordering::Relaxed);
        self.endpoint.store(Arc::new(endpoint));
    }

    /// Whether discovery removed the endpoint while requests were in flight: it takes no new
    /// request, and leaves the board when the last one ends.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the endpoint removed: it leaves `board` now if nothing is in flight, otherwise when
    /// its last request ends. Returns whether it is still draining.
    pub(crate) fn drain(&self, board: &LoadBoard, this: &Arc<EndpointState>) -> bool {
        *lock(&self.drain_board) = Some(board.clone());
        // SeqCst here and in `leave_if_drained`, with the in-flight count's SeqCst decrement: of
        // the drain and the last request's end, whichever comes second sees the other, so one
        // of them takes the endpoint off the board (free on x86: the decrement is a locked
        // instruction either way and the loads are plain).
        self.draining.store(true, Ordering::SeqCst);
        self.leave_if_drained(this)
    }

    /// Leaves the board if draining and idle; true while still draining.
    fn leave_if_drained(&self, this: &Arc<EndpointState>) -> bool {
        if !self.draining.load(Ordering::SeqCst) {
            return false;
        }
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return true;
        }
        if let Some(board) = lock(&self.drain_board).take() {
            board.remove(&self.id, this);
        }
        false
    }

    /// Requests sent and not yet ended.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests in flight that have not received the first byte of their response: for an LLM
    /// replica, the requests whose prompts still wait to be prefilled.
    pub fn awaiting_first_byte(&self) -> u32 {
        self.awaiting_first_byte.load(Ordering::Relaxed)
    }

    /// How long the endpoint has gone without sending a first byte while requests await one:
    /// `None` when none awaits one, else the time since the later of its last first byte (or
    /// answer without one) and the moment a request found nothing awaiting there. The first
    /// byte of a sized request more than 2 × slower than a speed learnt well enough to judge
    /// (from 4 first bytes) counts as of when it was due, not when it came,
    /// and never moves the progress back: it shows that the endpoint works, not that it keeps
    /// to its speed.
    ///
    /// A healthy endpoint answers its backlog within about its [pending
    /// work](Self::pending_work) times its [time per unit](Self::unit_time_nanos); one stalled
    /// for longer is slower than its estimate says, and shows it long before any of its requests
    /// ends (a stopped process ends none until their deadlines, a slowed one its first only
    /// after its own slowed time). [`LeastResponseTime`] adds the time the backlog is overdue to
    /// the endpoint's cost
    /// ([`ResponseTimeEstimate::overdue_nanos`](crate::policy::ResponseTimeEstimate::overdue_nanos)).
    ///
    /// [`LeastResponseTime`]: crate::policy::LeastResponseTime
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        if self.awaiting_first_byte() == 0 {
            return None;
        }
        let since = self.epoch + Duration::from_nanos(self.progress_nanos.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(since))
    }

    /// Whether requests sent here carry their size ([`RequestSize`](switchyard_core::RequestSize)):
    /// true from the first that did. Where some do, the ones that do not (a model's metadata, a
    /// listing, beside the generations that carry their prompt's size) say nothing of the
    /// endpoint's speed at its work: their first bytes are not samples of it and mark no
    /// progress of its backlog (see [`stalled_for`](Self::stalled_for)). A replica slowed 20
    /// times answers a metadata read in a millisecond; taken as progress and speed, those
    /// answers kept it looking healthy while its generations timed out (`switchyard bench
    /// faults`, fault `slow`).
    pub fn sizes_requests(&self) -> bool {
        self.sized_requests.load(Ordering::Relaxed)
    }

    /// Marks progress at `now` (see [`stalled_for`](Self::stalled_for)).
    fn progressed(&self, now: Instant) {
        let nanos = duration_nanos(now.saturating_duration_since(self.epoch));
        self.progress_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Marks the progress a first byte `late` nanoseconds past its time shows (see
    /// `lateness_nanos`): as of when it was due, `now − late`, never before the
    /// progress marked already.
    ///
    /// A late first byte shows that the endpoint works, not that it keeps to its speed. Taken
    /// as progress at its arrival, it restarted the stall's clock: in `switchyard bench faults`,
    /// fault `slow`, the first streams' first bytes came 3-8 times slower than the speed learnt
    /// (under the 10 × that judges a slowdown), each reset a stall of 100-160 ms to nothing, and
    /// the replica took the next two generations, which failed at their deadline.
    ///
    /// The time it was due counts only the balancer's own work ahead of the request. Among
    /// several balancers, a first byte late behind the others' work keeps the stall running
    /// longer too (lab `herd` moved both ways, most cells by under 5 %, `reports/lab/herd.md`).
    fn progressed_late(&self, now: Instant, late: f64) {
        if late <= 0.0 {
            return self.progressed(now);
        }
        let due = now.checked_sub(Duration::from_nanos(late as u64)).unwrap_or(self.epoch);
        let nanos = duration_nanos(due.saturating_duration_since(self.epoch));
        self.progress_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The work of the requests [awaiting their first byte](Self::awaiting_first_byte), in the
    /// units the balancer counts (prompt tokens when requests carry a
    /// [`RequestSize`](switchyard_core::RequestSize), otherwise one per request).
    pub fn pending_work(&self) -> u64 {
        self.pending_work.load(Ordering::Relaxed)
    }

    /// The work of every request started on the endpoint since it was added, in the units of
    /// [`pending_work`](Self::pending_work): a counter that only grows (it wraps only after
    /// 2⁶⁴ units). Its change between two readings over the time between them is the rate at which
    /// work arrives at the endpoint, whatever the endpoint's load: what an autoscaler sizes a pool
    /// from. Counted where the request is counted as sent, with the same atomic add that counts
    /// its pending work.
    pub fn started_work(&self) -> u64 {
        self.started_work.load(Ordering::Relaxed)
    }

    /// How long the endpoint takes per unit of work before a first byte, in nanoseconds: an EWMA
    /// (time constant [`TrackingConfig::speed_decay`]) of `time to first byte × at once ÷ (work
    /// ahead of the request when it was sent + its own work)`, where `at once` is the requests the
    /// endpoint worked on together: its [slots](Self::slots), or fewer if fewer awaited a first
    /// byte (1 for a replica that works requests off one after another), and the work is counted
    /// as the costs count it ([`work_ahead`](Self::work_ahead), [`request_work`](Self::request_work):
    /// each request at least [`min_request_work`](Self::min_request_work)). `None` before the
    /// first sample. Unlike the latency it does not decay while idle: it measures the endpoint's
    /// speed, not its backlog.
    pub fn unit_time_nanos(&self) -> Option<f64> {
        let v = f64::from_bits(self.unit_time_bits.load(Ordering::Relaxed));
        (!v.is_nan()).then_some(v)
    }

    /// The learnt time per unit, once it has learnt from [`SPEED_SAMPLES_TO_JUDGE`] first bytes
    /// since it last started over: the speed a first byte or a given-up call is judged against
    /// to tell a slowdown. Before that, a few first answers (a replica's first requests, queued
    /// behind each other as a pool starts) are no usual speed: judged against them, a healthy
    /// replica of `switchyard bench faults` was taken for one slowed 10 times within its first
    /// 130 ms of load, and calls no retry can save kept off it for the 10 s of its suspicion.
    fn judged_unit_time_nanos(&self) -> Option<f64> {
        if self.speed_samples.load(Ordering::Relaxed) < SPEED_SAMPLES_TO_JUDGE {
            return None;
        }
        self.unit_time_nanos()
    }

    /// The time per unit of work the costs use at `now`: [`unit_time_nanos`](Self::unit_time_nanos),
    /// or, when higher, the floor a recent stall set under it, decayed since.
    ///
    /// A request given up on without a first byte after waiting `w` says the endpoint takes at
    /// least `w` for its backlog: a lower bound on its time per unit, set as a floor (see
    /// `record_censored`). A first byte of a sized request more than 10 times slower than the
    /// speed learnt sets it too: the endpoint slowed down, which its 30 s average would take
    /// tens of seconds to show. (At 4 ×, the noise of the batches a request shares set it too:
    /// lab `hetero`'s p99 TTFT rose from 184 to 187 ms; at 10 × it is 185, its p90 137 against
    /// 144 (133 since probation is judged when the floor is set), and `switchyard bench faults` lost 5-10 calls to a replica slowed 20 times, 14-19
    /// before. Without request sizes a long request cannot be told from a slow endpoint: at 10 ×
    /// the unsized variant's p99 went from 209 to 260 ms.) The floor decays with the time constant
    /// [`TrackingConfig::stall_decay`] rather than entering the speed's EWMA: the endpoint is
    /// avoided while the stall is recent, and tried again once the floor has fallen to its
    /// peers' costs, which its next answer confirms or corrects. An endpoint that stalls again
    /// when tried (no first byte between the floors) is tried back off: each floor set after the
    /// one before had faded doubles the time constant, up to 32 ×, as Envoy's outlier ejection
    /// lengthens with each ejection; a first byte faster than the floor clears it and the
    /// count. A floor of 10 times the speed or more stands at its full height while a request
    /// awaits its first byte there (probation): the endpoint is tried by one request at a time.
    /// Blended into the speed, a
    /// stall of a second outlived the endpoint's recovery by the speed's time constant (30 s):
    /// in `switchyard bench faults`, a replica stopped for 2 s with SIGSTOP took no call in the
    /// 5 s after SIGCONT, its time per unit learnt at 4 × its peers' from its given-up calls
    /// and never measured again at the fault's load.
    pub fn unit_time_nanos_at(&self, now: Instant) -> Option<f64> {
        let unit = self.unit_time_nanos()?;
        Some(match self.stall_floor_nanos(now) {
            Some(floor) if floor > unit => floor,
            _ => unit,
        })
    }

    /// The floor a stall set under the time per unit, decayed to `now`; at its full height while
    /// the endpoint is on probation (see [`on_probation`](Self::on_probation)).
    fn stall_floor_nanos(&self, now: Instant) -> Option<f64> {
        let floor = f64::from_bits(self.stall_floor_bits.load(Ordering::Relaxed));
        if floor.is_nan() {
            return None;
        }
        if self.on_probation() {
            return Some(floor);
        }
        let at = self.epoch + Duration::from_nanos(self.stall_floor_at.load(Ordering::Relaxed));
        Some(floor * weight_since(at, now, self.stall_tau()))
    }

    /// Whether the standing floor puts the endpoint on probation: the floor said a stall or a
    /// slowdown of [`SLOW_SAMPLE`] times the speed learnt or more when it was set (read then: a
    /// slow try's first byte also enters the speed's average, and read against the average it
    /// raised, the same floor no longer looked severe), and a request sent there awaits its
    /// first byte. Then the floor counts at its full height, undecayed:
    /// once it has faded enough for the endpoint to be tried, one request tries it (or the
    /// requests stuck there since the stall keep it avoided), and the next waits for that one's
    /// first byte, which clears the floor if it is fast, or raises it again (a strike) if not.
    /// Faded alone, the floor let every request of the next tens of milliseconds onto an
    /// endpoint still as slow, before the first of them could show it: in
    /// `switchyard bench faults`, a replica slowed 20 times failed 27 calls in three such
    /// waves, the last 5 s after the fault. Smaller floors (a call given up on under
    /// overload, the noise of batches) do not put an endpoint on probation.
    fn on_probation(&self) -> bool {
        self.awaiting_first_byte() > 0 && self.stall_severe.load(Ordering::Relaxed)
    }

    /// A first byte [`SLOW_SAMPLE`] times slower than the speed came at `now`. A second within
    /// [`TrackingConfig::stall_decay`] of the one before, or a call given up on as that slow
    /// ([`severe_give_up`](Self::severe_give_up)), confirms that the endpoint has slowed down,
    /// not hit one slow batch: the floor starts at [`CONFIRMED_STRIKES`] strikes (a time
    /// constant of 8 × `stall_decay`), as Envoy ejects for longer than a stall's second.
    ///
    /// Only on an endpoint sent two methods or more, whose first bytes are read against their
    /// methods' own speeds. With one method, 10 × first bytes come from the noise of batches
    /// too (92 in a run of lab `hetero`), in pairs under many balancers: confirmed there, lab
    /// `herd`'s p99 TTFT moved by up to 16 % (`load-report`, K = 8, skewed: 495 to 573 ms).
    fn slow_first_byte(&self, now: Instant) {
        if !lock(&self.method_speeds).mixed() {
            return;
        }
        let at = duration_nanos(now.saturating_duration_since(self.epoch)).max(1);
        let before = self.last_slow_first_byte.swap(at, Ordering::Relaxed);
        let given_up = self.last_severe_give_up.load(Ordering::Relaxed);
        if self.within_stall_decay(before, at) || self.within_stall_decay(given_up, at) {
            self.confirm_slowdown();
        }
    }

    /// A call given up on at `now` without a first byte said the endpoint takes at least
    /// [`SLOW_SAMPLE`] times its speed. Alone it confirms nothing: a stopped process (SIGSTOP,
    /// a long pause) gives up calls together and answers at its usual speed once resumed, and
    /// is tried again after its floor's second. Within [`TrackingConfig::stall_decay`] of a
    /// first byte as slow, it confirms a slowdown (see [`slow_first_byte`](Self::slow_first_byte)):
    /// a replica slowed 20 times answers the streams it had begun 10-20 times slower and lets
    /// its unary calls reach their deadlines.
    ///
    /// Confirmed only by a second slow first byte, a slowdown with a single stream in flight at
    /// its start went unconfirmed, and the replica was tried again, by a call that failed, each
    /// time its floor had faded with its 1 s time constant (`switchyard bench faults`, fault
    /// `slow`).
    fn severe_give_up(&self, now: Instant) {
        if !lock(&self.method_speeds).mixed() {
            return;
        }
        let at = duration_nanos(now.saturating_duration_since(self.epoch)).max(1);
        self.last_severe_give_up.store(at, Ordering::Relaxed);
        if self.within_stall_decay(self.last_slow_first_byte.load(Ordering::Relaxed), at) {
            self.confirm_slowdown();
        }
    }

    /// Whether `before` (nanoseconds after `epoch`, 0 for never) is within
    /// [`TrackingConfig::stall_decay`] of `at`.
    fn within_stall_decay(&self, before: u64, at: u64) -> bool {
        before != 0 && at.saturating_sub(before) <= self.stall_decay_nanos.load(Ordering::Relaxed)
    }

    /// Starts the floor's strikes at [`CONFIRMED_STRIKES`] at least.
    fn confirm_slowdown(&self) {
        let strikes = self.stall_strikes.load(Ordering::Relaxed);
        self.stall_strikes.store(strikes.max(CONFIRMED_STRIKES), Ordering::Relaxed);
    }

    /// The floor's time constant: [`TrackingConfig::stall_decay`] doubled for each strike.
    fn stall_tau(&self) -> Duration {
        let strikes = self.stall_strikes.load(Ordering::Relaxed).min(MAX_STALL_STRIKES);
        Duration::from_nanos(self.stall_decay_nanos.load(Ordering::Relaxed)).saturating_mul(1 << strikes)
    }

    /// A first byte said the endpoint takes `unit_nanos` a unit: below the stall's floor, the
    /// floor is gone, and with it the strikes. The suspicion a severe stall raised
    /// ([`is_suspect`](Self::is_suspect)) goes with a first byte within
    /// [`RECOVERED_SAMPLE`] times the speed learnt: one 8 or 9 times slow is under a floor of
    /// 10 or more, and no sign of recovery. Lifted by it, the suspicion of a replica slowed 20
    /// times was gone 20 ms after it was raised, and three generations sent there in the next
    /// 200 ms failed (`switchyard bench faults`, fault `slow`).
    fn clear_stall_floor_below(&self, unit_nanos: f64) {
        if self.severe_stall_at.load(Ordering::Relaxed) != 0
            && self.unit_time_nanos().is_some_and(|learnt| unit_nanos <= RECOVERED_SAMPLE * learnt)
        {
            self.severe_stall_at.store(0, Ordering::Relaxed);
        }
        let floor = f64::from_bits(self.stall_floor_bits.load(Ordering::Relaxed));
        if !floor.is_nan() && unit_nanos < floor {
            self.stall_severe.store(false, Ordering::Relaxed);
            self.stall_floor_bits.store(f64::NAN.to_bits(), Ordering::Relaxed);
            self.stall_strikes.store(0, Ordering::Relaxed);
        }
    }

    /// How many requests the endpoint serves at once before a new one waits (its slots), learnt
    /// from its first bytes: 1 for a replica that works requests off one after another (an LLM
    /// engine's prefill), `k` for a classic server of `k` parallel slots. See
    /// [`capacity`](crate::capacity) for how it is learnt; 1 until the endpoint shows more.
    pub fn slots(&self) -> u32 {
        self.slots.load(Ordering::Relaxed)
    }

    /// The endpoint's time per unit of work before a first byte when nothing waits ahead of a
    /// request (its no-load speed), in nanoseconds: the fastest of the answers sent while nothing
    /// awaited a first byte over the last [`TrackingConfig::speed_decay`] (a windowed minimum, as
    /// TCP Vegas's base RTT, see [`capacity`](crate::capacity)). `None` before the first such
    /// answer.
    pub fn idle_unit_time_nanos(&self) -> Option<f64> {
        let u = f64::from_bits(self.idle_unit_bits.load(Ordering::Relaxed));
        (!u.is_nan()).then_some(u)
    }

    /// The least time a request of `work` units can take to its first byte here, in
    /// nanoseconds: `work` × the [no-load time per unit](Self::idle_unit_time_nanos) (`u₀`),
    /// what it takes with nothing ahead of it. `None` before the first no-load answer, and on an
    /// endpoint whose own no-load answers judged that its time does not grow with the work (a
    /// classic server: a request larger than any seen is no slower there). An endpoint not
    /// judged yet counts: an LLM replica that a balancer sends few requests is often not.
    ///
    /// The policies' costs are never below it (see
    /// [`LeastResponseTime`](crate::policy::LeastResponseTime)): their brake on an endpoint
    /// with fewer requests in flight than its peers, and an endpoint costed per request until
    /// its answers judge, could otherwise price a long prompt on an idle slow replica below
    /// its own prefill there.
    pub fn no_load_time_nanos(&self, work: f64) -> Option<f64> {
        if self.judged_per_request.load(Ordering::Relaxed) {
            return None;
        }
        self.idle_unit_time_nanos().map(|u0| u0 * work)
    }

    /// The least work a request counts for on this endpoint, whatever its size: its fastest
    /// no-load answer over its fastest no-load time per unit of work (`ω = r₀ ÷ u₀`, see
    /// [`capacity`](crate::capacity)). Near 1 for an endpoint whose time grows with the work from
    /// the first unit (an LLM engine's prefill),
    /// [`PER_REQUEST_WORK`](crate::capacity::PER_REQUEST_WORK) for one whose time does not depend
    /// on it (a classic server answering any request in the same time) and for any endpoint until
    /// its answers judge (unless its pool set a [prior](Self::set_counting_prior)); 1 before the
    /// first no-load answer.
    pub fn min_request_work(&self) -> f64 {
        f64::from_bits(self.min_request_work_bits.load(Ordering::Relaxed))
    }

    /// How the endpoint's no-load answers judged its work counts: `Some(true)` where every
    /// request counts alike, `Some(false)` where the time grows with the work, `None` until
    /// they judge ([`CapacityEstimate::counting_verdict`]).
    pub fn counting_verdict(&self) -> Option<bool> {
        lock(&self.capacity).counting_verdict()
    }

    /// How the endpoint counts the work until its own answers judge
    /// ([`CapacityEstimate::set_counting_prior`]); the balancer sets its pool's verdict on an
    /// endpoint it adds.
    pub fn set_counting_prior(&self, per_request: bool) {
        let mut guard = lock(&self.capacity);
        let before = guard.counts_per_request();
        guard.set_counting_prior(per_request);
        self.capacity_learnt(guard, before, Instant::now());
    }

    /// Takes what a load report says of how the replica counts its work: one that reports its
    /// prefill backlog in prompt tokens ([`orca::PREFILL_BACKLOG_TOKENS`]) is an LLM engine, whose
    /// time grows with the prompt, and its requests count by their sizes until its own no-load
    /// answers judge ([`set_counting_prior`](Self::set_counting_prior)). Once, and only on an
    /// endpoint whose requests carry their sizes ([`sizes_requests`](Self::sizes_requests)):
    /// without sizes every request is one unit whatever the count. Later reports cost an atomic
    /// load.
    ///
    /// Without it, an endpoint counts every request alike until [`FIT_SAMPLES`] no-load answers
    /// (nothing of this balancer's own ahead) have judged, and a balancer among many that sends a
    /// slow replica a few requests a minute never gets them: in lab `herd` with reports every
    /// 2 ms, 32 balancers, the two slow replicas were costed per request for most of the run
    /// by most balancers, the prefill backlog their reports carried unused, and `load-report`'s
    /// p99 TTFT was 1.5 × one balancer's (`reports/lab/herd.md`).
    ///
    /// [`FIT_SAMPLES`]: crate::capacity::FIT_SAMPLES
    fn learn_counting_from(&self, report: &ReportedLoad) {
        if self.counts_tokens_reported.load(Ordering::Relaxed)
            || !self.sizes_requests()
            || !report.named.contains_key(orca::PREFILL_BACKLOG_TOKENS)
        {
            return;
        }
        if !self.counts_tokens_reported.swap(true, Ordering::Relaxed) {
            self.set_counting_prior(false);
        }
    }

    /// The work a request of `work` units counts for on this endpoint:
    /// `max(work, min_request_work)`.
    pub fn request_work(&self, work: f64) -> f64 {
        crate::capacity::request_work(work, self.min_request_work())
    }

    /// The work awaiting a first byte, as the costs count it: the [pending
    /// work](Self::pending_work), but at least [`min_request_work`](Self::min_request_work) for
    /// each request awaiting a first byte.
    pub fn work_ahead(&self) -> f64 {
        crate::capacity::work_ahead(
            self.pending_work() as f64,
            f64::from(self.awaiting_first_byte()),
            self.min_request_work(),
        )
    }

    /// How long a response runs on after its first byte, in nanoseconds: for an LLM stream its
    /// generation (the time it holds a batch slot after its prefill), for a unary call about
    /// zero. An EWMA (time constant [`TrackingConfig::speed_decay`]) over the requests that
    /// succeeded; `None` before the first.
    pub fn after_first_byte_nanos(&self) -> Option<f64> {
        let v = f64::from_bits(self.after_first_byte_bits.load(Ordering::Relaxed));
        (!v.is_nan()).then_some(v)
    }

    fn record_first_byte(&self, sample: FirstByte, now: Instant) {
        let tau = Duration::from_nanos(self.speed_decay_nanos.load(Ordering::Relaxed));
        let mut guard = lock(&self.capacity);
        let before = guard.counts_per_request();
        guard.record(sample, now, tau);
        self.capacity_learnt(guard, before, now);
    }

    /// Mirrors what `guard` now holds in the atomics the costs read; `before`: whether it
    /// counted per request before the change.
    fn capacity_learnt(&self, guard: MutexGuard<'_, CapacityEstimate>, before: bool, now: Instant) {
        if guard.counts_per_request() != before {
            // The work is counted another way (see `capacity`): the time per unit learnt so far
            // is in other units. It restarts from the no-load time in the new units, not from
            // nothing: an endpoint without a time borrows another's, which may be in other units
            // too, and would then not be picked again to learn its own.
            let restart = guard.idle_cost_unit_nanos().map(|nanos| RttEstimate { nanos, at: now });
            *lock(&self.unit_time) = restart;
            self.unit_time_bits.store(restart.map_or(f64::NAN, |r| r.nanos).to_bits(), Ordering::Relaxed);
            // A speed in the new units judges only once it has learnt from a few first bytes.
            self.speed_samples.store(0, Ordering::Relaxed);
            // Each method's speed restarts: methods' times per unit compare otherwise in the new
            // units (a request's own work against the work ahead). (Moved by the ratio of the
            // speeds over every method, a stream's speed came out 6 times too fast and a healthy
            // replica's next first bytes read as a slowdown.)
            lock(&self.method_speeds).clear();
        }
        self.slots.store(guard.slots(), Ordering::Relaxed);
        self.idle_unit_bits.store(guard.idle_unit_nanos().unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
        self.min_request_work_bits.store(guard.min_request_work().to_bits(), Ordering::Relaxed);
        self.judged_per_request.store(guard.counting_verdict() == Some(true), Ordering::Relaxed);
    }

    /// Test support: teaches the endpoint that its time grows with the work, `unit` per unit at
    /// no load (as an LLM engine's prefill does), with [`FIT_SAMPLES`](crate::capacity::FIT_SAMPLES)
    /// no-load answers of 500 to 1,500 units, so that its requests count by their size.
    #[cfg(test)]
    pub(crate) async fn teach_time_grows_with_work(self: &Arc<Self>, unit: Duration) {
        let n = crate::capacity::FIT_SAMPLES;
        for i in 0..n {
            let work = 500 + i * 1000 / n;
            let mut f = self.start(Instant::now(), u64::from(work));
            tokio::time::advance(unit * work).await;
            f.first_byte();
        }
        assert!(self.min_request_work() < crate::capacity::PER_REQUEST_WORK, "counts the work");
    }

    /// Requests ended since the endpoint was added: how many succeeded, and how many failed
    /// (any outcome but success, overload and cancellation).
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
            None => self.default_rtt_nanos.load(Ordering::Relaxed) as f64,
        }
    }

    /// The peak-EWMA cost of tower and linkerd: latency estimate × (in-flight + 1).
    pub fn peak_ewma_cost(&self, now: Instant) -> f64 {
        self.latency_estimate_nanos(now) * f64::from(self.in_flight() + 1)
    }

    fn decayed(&self, r: RttEstimate, now: Instant) -> f64 {
        r.nanos * weight_since(r.at, now, self.decay())
    }

    /// The last report, with when it arrived.
    pub fn report(&self) -> Option<(Arc<ReportedLoad>, Instant)> {
        lock(&self.report).current(self.id()).cloned()
    }

    /// The last report if it arrived no more than `max_age` before `now`.
    pub fn fresh_report(&self, now: Instant, max_age: Duration) -> Option<Arc<ReportedLoad>> {
        match lock(&self.report).current(self.id()) {
            Some((r, at)) if now.saturating_duration_since(*at) <= max_age => Some(r.clone()),
            _ => None,
        }
    }

    /// How many times outlier detection has ejected the endpoint.
    pub fn ejections(&self) -> u32 {
        lock(&self.outlier).times_ejected
    }

    /// The last report if it arrived no more than `max_age` before `now`, with when it arrived
    /// and the balancer's own load on the endpoint at that moment (the report counts the
    /// requests this balancer had in flight then; comparing the two tells how much of the
    /// replica's load came from elsewhere).
    pub fn fresh_report_with_own(&self, now: Instant, max_age: Duration) -> Option<ReportSnapshot> {
        let mut slot = lock(&self.report);
        let (report, at) = slot.current(self.id()).cloned()?;
        (now.saturating_duration_since(at) <= max_age).then(|| ReportSnapshot {
            report,
            at,
            own: slot.own_at_decoded,
        })
    }

    /// The balancer's own load on the endpoint now.
    fn own_load(&self) -> OwnLoad {
        OwnLoad {
            in_flight: self.in_flight(),
            awaiting_first_byte: self.awaiting_first_byte(),
            pending_work: self.pending_work(),
        }
    }

    /// Whether the endpoint is under suspicion at `now`, with nothing since to clear it:
    /// - its last calls failed (a failure streak of the outlier detector's, in the order the
    ///   calls were sent, not yet broken by a success), the last failure within `window`;
    /// - or a stall or slowdown of 10 times its speed (`SLOW_SAMPLE`) set the floor under its time
    ///   per unit within `window`, and no first byte since came within 2 times its speed
    ///   (`RECOVERED_SAMPLE`) (one under the floor but still 8 times slow is no recovery). A smaller
    ///   stall raising the floor since does not lift the suspicion. A stopped process and a
    ///   slowed one look alike here (calls given up on at their deadlines, no first byte; a
    ///   read's quick answer is no measure of a generation's speed): a replica slowed 20 times
    ///   that was trusted again 2 s after its stall failed the generation that tried it, so
    ///   both stay suspect for the window.
    ///
    /// The balancer keeps a [`FinalAttempt`](switchyard_core::FinalAttempt) off a suspect
    /// endpoint while another is not: the endpoint is tried again by calls a retry can save
    /// (an idempotent read that is retried or hedged elsewhere), whose outcome clears or renews
    /// the suspicion. Without this, a replica failing every call, or 20 times slower, took the
    /// calls that could not be retried in turn with the others until five failures in a row
    /// ejected it, or each time its stall's floor had faded: `switchyard bench faults` failed
    /// calls sent after the fault (`reset`), and seconds after it (`slow`).
    /// `window` (the balancer passes the outlier detector's base ejection time) bounds the
    /// suspicion when no such call comes to try the endpoint.
    pub fn is_suspect(&self, now: Instant, window: Duration) -> bool {
        let recent = |at: u64| {
            at != 0 && now.saturating_duration_since(self.epoch + Duration::from_nanos(at)) < window
        };
        if recent(self.failing_at.load(Ordering::Relaxed)) {
            return true;
        }
        recent(self.severe_stall_at.load(Ordering::Relaxed))
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
        let mut load = Load::default();
        load.in_flight = self.in_flight();
        load.limit = self.limit();
        load.slots = self.slots();
        // Nanoseconds, finite and ≥ 0; `as` saturates.
        load.idle_unit_time = self.idle_unit_time_nanos().map(|n| Duration::from_nanos(n as u64));
        let omega = self.min_request_work();
        load.counts_per_request = omega >= crate::capacity::PER_REQUEST_WORK;
        load.request_time = self.unit_time_nanos().map(|u| Duration::from_nanos((u * omega) as u64));
        load.latency_ewma = self.latency_ewma(now);
        load.completed = completed;
        load.failed = failed;
        load.overloaded = self.overloaded.load(Ordering::Relaxed);
        load.cancelled = self.cancelled.load(Ordering::Relaxed);
        load.report = report;
        load.report_at = report_at;
        load
    }

    /// Counts a request of `work` units as sent; the returned guard counts it as ended when
    /// dropped.
    pub(crate) fn start(self: &Arc<Self>, now: Instant, work: u64) -> InFlight {
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        if self.awaiting_first_byte.load(Ordering::Relaxed) == 0 {
            // A busy period starts: the endpoint has not stalled on anything before it. Before
            // the count goes up, so that no reader sees a request waiting since an old progress.
            self.progressed(now);
        }
        let requests_ahead = self.awaiting_first_byte.fetch_add(1, Ordering::Relaxed);
        if work > 1 && !self.sized_requests.load(Ordering::Relaxed) {
            self.first_sized_request();
        }
        let ahead = self.pending_work.fetch_add(work, Ordering::Relaxed);
        self.started_work.fetch_add(work, Ordering::Relaxed);
        InFlight {
            state: self.clone(),
            sent_at: now,
            work,
            ahead,
            requests_ahead,
            in_flight,
            method: NO_METHOD,
            sampled: false,
            ended: false,
            first_byte: None,
        }
    }

    /// The first request that carries its size: from now on the ones that do not are no samples
    /// of the speed (see [`sizes_requests`](Self::sizes_requests)), and the speed learnt from
    /// them so far is forgotten (a metadata read's millisecond would otherwise weigh in the
    /// speed's average for its whole time constant).
    #[cold]
    fn first_sized_request(&self) {
        if !self.sized_requests.swap(true, Ordering::Relaxed) {
            *lock(&self.unit_time) = None;
            self.unit_time_bits.store(f64::NAN.to_bits(), Ordering::Relaxed);
            self.speed_samples.store(0, Ordering::Relaxed);
            lock(&self.method_speeds).clear();
            *lock(&self.after_first_byte) = None;
            self.after_first_byte_bits.store(f64::NAN.to_bits(), Ordering::Relaxed);
        }
    }

    fn first_byte_arrived(&self, work: u64) {
        self.awaiting_first_byte.fetch_sub(1, Ordering::Relaxed);
        self.pending_work.fetch_sub(work, Ordering::Relaxed);
    }

    /// Blends a first byte's time per unit into the speed over every method and, unless it said
    /// the endpoint slowed down (`slowed`: it set a stall's floor), into its method's: a method's
    /// speed is the endpoint's usual one, which a slowed endpoint's answers are read against.
    /// (Taken in, three slow answers a few seconds apart raised it 6 times, and the next read
    /// as 3 × where it was 20 ×: `switchyard bench faults`, fault `slow`, kept sending to the
    /// slowed replica.)
    fn record_unit_time(&self, per_unit_nanos: f64, method: u64, slowed: bool, now: Instant) {
        self.record_speed_ewma(&self.unit_time, &self.unit_time_bits, per_unit_nanos, now);
        // A load and a store, not a read-modify-write on every first byte: two threads counting
        // at once lose one, which only delays judging by a first byte.
        let samples = self.speed_samples.load(Ordering::Relaxed);
        if samples < SPEED_SAMPLES_TO_JUDGE {
            self.speed_samples.store(samples + 1, Ordering::Relaxed);
        }
        if method != NO_METHOD && !slowed {
            let tau = Duration::from_nanos(self.speed_decay_nanos.load(Ordering::Relaxed));
            lock(&self.method_speeds).record(method, per_unit_nanos, now, tau);
        }
    }

    /// What a request of `method` that took `unit_nanos` a unit says of the endpoint, in the
    /// scale of the speed over every method ([`unit_time_nanos`](Self::unit_time_nanos)): its
    /// ratio to the method's own speed, times that speed (see [`crate::method_speed`]).
    /// `unit_nanos` as it is for a request that names no method, or on an endpoint that has
    /// served one method only. `None` on an endpoint that serves several while this method's
    /// speed is not learnt (after the work came to be counted in other units, or for a new
    /// method): such a first byte cannot be read.
    ///
    /// (Read against its own speed, which leaves out the answers that set a stall's floor, an
    /// endpoint's only method took an overloaded replica's queueing for slowdowns: lab
    /// `overload`, `aimd+shed`, critical success at 2 × fell from 1.0 to 0.993 and the admitted
    /// p99 ratio rose from 1.38 to 1.84. With one method there is no mix to read through. Read
    /// raw after the units changed, a unary answer read as 40 × the speed the costs restart
    /// from, a stream's first token's, and a healthy replica was put on probation.)
    fn on_common_scale(&self, method: u64, unit_nanos: f64) -> Option<f64> {
        if method == NO_METHOD {
            return Some(unit_nanos);
        }
        let own = {
            let methods = lock(&self.method_speeds);
            // One method: its speed is the speed over every request, read as before.
            if !methods.mixed() {
                return Some(unit_nanos);
            }
            methods.get(method)
        };
        match (self.unit_time_nanos(), own) {
            (Some(common), Some(own)) if own > 0.0 => Some(unit_nanos / own * common),
            _ => None,
        }
    }

    /// Blends `sample` into the EWMA in `slot` (time constant [`TrackingConfig::speed_decay`])
    /// and publishes the result as `f64` bits in `bits`.
    fn record_speed_ewma(
        &self,
        slot: &Mutex<Option<RttEstimate>>,
        bits: &AtomicU64,
        sample: f64,
        now: Instant,
    ) {
        let mut guard = lock(slot);
        let next = match *guard {
            Some(u) => {
                let w = weight_since(
                    u.at,
                    now,
                    Duration::from_nanos(self.speed_decay_nanos.load(Ordering::Relaxed)),
                );
                u.nanos * w + sample * (1.0 - w)
            }
            None => sample,
        };
        *guard = Some(RttEstimate { nanos: next, at: now });
        bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Records what a request that ended without a first byte after waiting `waited` says of
    /// the endpoint's speed: a *censored* sample. Its true time to first byte is unknown but at
    /// least `waited`, and its time per unit of work at least `unit_nanos` (the time per unit a
    /// first byte at that moment would have given). A lower bound can only raise an estimate:
    /// when `waited` exceeds the peak-EWMA latency (or the default RTT before any sample), it
    /// replaces it (as any slower sample does, and it decays as they do); when `unit_nanos`
    /// exceeds the time per unit the costs use ([`unit_time_nanos_at`](Self::unit_time_nanos_at)),
    /// it becomes the floor under it, which decays with [`TrackingConfig::stall_decay`]. Below
    /// the estimates it says nothing and they stay; an endpoint without a time per unit yet keeps
    /// borrowing its peers' (a lower bound is not a measure of it).
    ///
    /// Without this, an endpoint so slow that its callers give up before it answers (their
    /// deadline passes and the client resets the stream) never shows its slowness: each call
    /// ends as cancelled, which was no sample at all, and the endpoint keeps a trickle of calls
    /// that all time out (`switchyard bench faults`, fault `slow`: a replica 20 × slower kept
    /// failing 5-6 calls a second to the end of the run). tower's and linkerd's peak EWMA
    /// record a dropped request's time as a full sample, which a caller that gives up early
    /// would pull down; counting it as a lower bound keeps both right.
    fn record_censored(&self, waited: Duration, unit_nanos: f64, now: Instant) {
        if nanos_f64(waited) > self.latency_estimate_nanos(now) {
            self.record_rtt(waited, now);
        }
        self.raise_stall_floor(unit_nanos, now);
        if self.judged_unit_time_nanos().is_some_and(|learnt| unit_nanos >= SLOW_SAMPLE * learnt) {
            self.severe_give_up(now);
        }
    }

    /// Sets the stall's floor at `unit_nanos` when that is above the time per unit the costs
    /// use now (see [`unit_time_nanos_at`](Self::unit_time_nanos_at)).
    fn raise_stall_floor(&self, unit_nanos: f64, now: Instant) {
        if self.unit_time_nanos_at(now).is_some_and(|unit| unit_nanos > unit) {
            let floor = f64::from_bits(self.stall_floor_bits.load(Ordering::Relaxed));
            let set_at = self.epoch + Duration::from_nanos(self.stall_floor_at.load(Ordering::Relaxed));
            // A new stall once the last one's floor had faded (the endpoint was tried again and
            // stalled again): a strike. Given-up calls of one stall end together, well within it.
            if !floor.is_nan() && now.saturating_duration_since(set_at) > self.stall_tau() {
                let strikes = self.stall_strikes.load(Ordering::Relaxed);
                self.stall_strikes.store((strikes + 1).min(MAX_STALL_STRIKES), Ordering::Relaxed);
            }
            let at = duration_nanos(now.saturating_duration_since(self.epoch));
            let severe =
                self.judged_unit_time_nanos().is_some_and(|learnt| unit_nanos >= SLOW_SAMPLE * learnt);
            self.stall_severe.store(severe, Ordering::Relaxed);
            if severe {
                self.severe_stall_at.store(at.max(1), Ordering::Relaxed);
            }
            self.stall_floor_at.store(at, Ordering::Relaxed);
            self.stall_floor_bits.store(unit_nanos.to_bits(), Ordering::Relaxed);
        }
    }

    fn record_rtt(&self, rtt: Duration, now: Instant) {
        let sample = nanos_f64(rtt);
        let mut guard = lock(&self.rtt);
        let next = match *guard {
            Some(r) => {
                let w = weight_since(r.at, now, self.decay());
                let decayed = r.nanos * w;
                // Peak: a slower sample replaces the estimate at once; a faster one is blended in.
                if decayed >= sample { decayed + sample * (1.0 - w) } else { sample }
            }
            None => sample,
        };
        *guard = Some(RttEstimate { nanos: next, at: now });
    }

    /// Records `report` as the endpoint's last load report, received at `now`, with what this
    /// balancer itself has on the endpoint at that moment (the baseline
    /// [`fresh_report_with_own`](Self::fresh_report_with_own) returns). The balancer calls it
    /// for the report in each response's trailers; an out-of-band subscriber (ORCA's
    /// `OpenRcaService`) calls it for each report the replica streams.
    ///
    /// A report that names the replica's prefill backlog in prompt tokens
    /// ([`orca::PREFILL_BACKLOG_TOKENS`]) also says that the replica is an LLM engine, whose time
    /// grows with the prompt: where requests carry their sizes, they count by size on this
    /// endpoint from then on, until its own no-load answers judge (see
    /// [`capacity`](crate::capacity)).
    pub fn record_report(&self, report: ReportedLoad, now: Instant) {
        self.learn_counting_from(&report);
        let own = self.own_load();
        let mut slot = lock(&self.report);
        slot.decoded = Some((Arc::new(report), now));
        slot.encoded = None;
        slot.own_at_newest = own;
        slot.own_at_decoded = own;
    }

    /// Keeps an ORCA header value (`endpoint-load-metrics-bin`) as the last report, to be decoded
    /// when first read.
    pub(crate) fn record_encoded_report(&self, value: &http::HeaderValue, now: Instant) {
        // Decoded now while it may still say how the replica counts its work (a few times at
        // most); else when a policy reads it.
        if !self.counts_tokens_reported.load(Ordering::Relaxed)
            && self.sizes_requests()
            // A load first: past the checks, a trailer costs no read-modify-write.
            && self.counting_checks.load(Ordering::Relaxed) < COUNTING_CHECKS
            && self.counting_checks.fetch_add(1, Ordering::Relaxed) < COUNTING_CHECKS
            && let Ok(report) = orca::decode_base64(value.as_bytes())
        {
            self.learn_counting_from(&report);
        }
        let text = bytes::Bytes::copy_from_slice(value.as_bytes());
        let own = self.own_load();
        let mut slot = lock(&self.report);
        slot.encoded = Some((text, now));
        slot.own_at_newest = own;
    }

    /// Ends a request its caller gave up on: counted, but not an outcome for the outlier detector.
    fn cancel(self: &Arc<Self>) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.leave_if_drained(self);
    }

    /// Counts the request's `outcome` and gives it to the outlier detector. `answered`: a byte of
    /// the response came before the end.
    ///
    /// A deadline that passed before any byte of the answer says nothing of the endpoint's
    /// health either way: for the outlier detector it is neither a failure (a busy endpoint's
    /// queue, or a caller's tight deadline) nor a success, though it counts among the failed
    /// requests of the endpoint's [`Load`]. It leaves a failure streak as it stands: taken as a success, a
    /// call given up on while the endpoint hung broke the streak its refusals were building.
    fn finish(
        self: &Arc<Self>,
        outcome: Outcome,
        answered: bool,
        outlier: &OutlierConfig,
        sent_at: Instant,
        now: Instant,
    ) -> Verdict {
        let counter = match outcome {
            Outcome::Ok => &self.completed,
            Outcome::Cancelled => &self.cancelled,
            Outcome::Overloaded { .. } => &self.overloaded,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let verdict = match outcome {
            // The caller's choice, not the endpoint's health.
            Outcome::Cancelled => Verdict::Keep,
            Outcome::DeadlineExceeded if !answered => Verdict::Keep,
            outcome => {
                let failed = outcome.is_endpoint_failure();
                let mut state = lock(&self.outlier);
                let verdict = state.record(failed, outlier, sent_at, now);
                // With ejection off, the streak is the last outcome.
                let streak = if outlier.consecutive_failures == 0 { failed } else { state.in_streak() };
                drop(state);
                let at = if streak && failed {
                    duration_nanos(now.saturating_duration_since(self.epoch)).max(1)
                } else if streak {
                    // A success of a call sent before the streak began: the streak stands.
                    self.failing_at.load(Ordering::Relaxed)
                } else {
                    0
                };
                self.failing_at.store(at, Ordering::Relaxed);
                verdict
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.leave_if_drained(self);
        verdict
    }
}

/// How long a request took on its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// Until the first byte of the response, if one came.
    pub(crate) first_byte: Option<Duration>,
    /// Until the request ended.
    pub(crate) latency: Duration,
}

/// One request in flight on an endpoint. Dropping it ends the request: the in-flight count goes
/// down, and unless a latency sample was taken earlier (see [`first_byte`](Self::first_byte)),
/// the time since sending becomes one.
#[derive(Debug)]
pub(crate) struct InFlight {
    state: Arc<EndpointState>,
    sent_at: Instant,
    /// This request's work, and the work that waited for a first byte on the endpoint when it
    /// was sent.
    work: u64,
    ahead: u64,
    /// Requests that awaited a first byte on the endpoint when it was sent.
    requests_ahead: u32,
    /// Requests in flight on the endpoint when it was sent, itself included.
    in_flight: u32,
    /// The request's method (see [`crate::method_speed`]), or [`NO_METHOD`].
    method: u64,
    sampled: bool,
    ended: bool,
    first_byte: Option<Duration>,
}

impl InFlight {
    pub(crate) fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// The request's work, in the balancer's units.
    pub(crate) fn work(&self) -> u64 {
        self.work
    }

    /// The request is a call of the method `key` (see [`crate::method_speed`]): its first byte is
    /// read against that method's speed.
    pub(crate) fn for_method(mut self, key: u64) -> Self {
        self.method = key;
        self
    }

    /// Takes the latency sample now, if none was taken yet.
    pub(crate) fn first_byte(&mut self) {
        if !self.sampled {
            self.sample_at(Instant::now(), true);
        }
    }

    /// The first byte arrived at `now`: the request no longer waits for one. With `learn`, its
    /// time is a sample of the endpoint's speed and capacity; without, it is not (a refusal or an
    /// error, answered at once, says nothing of how long the endpoint takes to serve).
    fn sample_at(&mut self, now: Instant, learn: bool) {
        if !self.sampled {
            self.sampled = true;
            let telling = self.tells_speed();
            let elapsed = now.saturating_duration_since(self.sent_at);
            let nanos = nanos_f64(elapsed);
            // Read against the method's own speed: a unary answer takes its whole generation,
            // a stream's first token only its prefill (see `method_speed`).
            let reading = (learn && telling).then(|| {
                let unit = self.unit_time_sample(nanos);
                (unit, self.state.on_common_scale(self.method, unit))
            });
            // How many times slower than the speed learnt it came: what tells a slowdown (10 ×)
            // and a late first byte (2 ×, see `EndpointState::progressed_late`).
            let slowdown = reading.and_then(|(_, common)| self.slowdown(common?));
            if telling {
                self.state.progressed_late(now, slowdown.map_or(0.0, |ratio| lateness_nanos(nanos, ratio)));
            }
            self.state.first_byte_arrived(self.work);
            self.first_byte = Some(elapsed);
            if !learn {
                return;
            }
            self.state.record_rtt(elapsed, now);
            let Some((unit, common)) = reading else {
                return;
            };
            // A first byte many times slower than the speed learnt: the endpoint has slowed down
            // (or stalled and resumed). It counts at once, as a given-up call's lower bound does,
            // rather than only through the speed's slow average.
            let slowed = slowdown.is_some_and(|ratio| ratio > SLOW_SAMPLE);
            match common {
                // Still slow when tried: a stall again, not a recovery, though faster than the
                // floor it had set (a given-up call's lower bound, or a slower first byte).
                // Read as a recovery, it cleared the floor and its strikes, and an endpoint
                // still slowed 10 times or more was tried again a time constant of a second
                // later rather than of several.
                Some(common) if slowed => {
                    self.state.raise_stall_floor(common, now);
                    self.state.slow_first_byte(now);
                }
                Some(common) => self.state.clear_stall_floor_below(common),
                None => {}
            }
            self.state.record_unit_time(unit, self.method, slowed, now);
            self.state.record_first_byte(
                FirstByte {
                    nanos,
                    work: self.work,
                    work_ahead: self.ahead,
                    requests_ahead: self.requests_ahead,
                },
                now,
            );
        }
    }

    /// How many times slower than the speed learnt a first byte read on the common scale as
    /// `common` a unit came. `None` for a request without its size (a long request cannot be
    /// told from a slow endpoint then, as for the overdue term) and against a speed not learnt
    /// well enough to judge (see [`EndpointState::judged_unit_time_nanos`]).
    fn slowdown(&self, common: f64) -> Option<f64> {
        if self.work <= 1 {
            return None;
        }
        Some(common / self.state.judged_unit_time_nanos()?)
    }

    /// Whether the request's answer is a sample of the endpoint's speed: it carried its size, or
    /// none sent there does (see [`EndpointState::sizes_requests`]).
    fn tells_speed(&self) -> bool {
        self.work > 1 || !self.state.sizes_requests()
    }

    /// The time per unit of work that a first byte `nanos` after sending says: the work ahead
    /// of the request when it was sent and its own, worked off `slots` requests at a time (see
    /// `capacity`).
    fn unit_time_sample(&self, nanos: f64) -> f64 {
        let omega = self.state.min_request_work();
        let units = crate::capacity::work_ahead(self.ahead as f64, f64::from(self.requests_ahead), omega)
            + crate::capacity::request_work(self.work.max(1) as f64, omega);
        let at_once = self.state.slots().min(self.requests_ahead.saturating_add(1));
        nanos * f64::from(at_once) / units
    }

    /// Ends the request with its outcome; returns what the outlier detector decided, and the
    /// request's timing.
    pub(crate) fn end(&mut self, outcome: Outcome, outlier: &OutlierConfig) -> (Verdict, Timing) {
        // One clock read for the sample and the outcome: they happen at the same instant.
        let now = Instant::now();
        if outcome == Outcome::Cancelled {
            return (Verdict::Keep, self.cancel_at(now));
        }
        // Only an answer tells the endpoint's speed: a refusal or an error that comes back at
        // once would make a busy endpoint look fast. A request that held the endpoint to its
        // deadline without a first byte tells a lower bound, as one its caller gave up on does
        // (a censored sample, see `EndpointState::record_censored`); taken as a full sample, the
        // deadline entered the speed's 30 s average as if the endpoint had answered in it.
        if outcome == Outcome::DeadlineExceeded && !self.sampled {
            self.censor_at(now);
        } else {
            self.sample_at(now, outcome == Outcome::Ok);
        }
        self.ended = true;
        let rtt = self.first_byte.unwrap_or_else(|| now.saturating_duration_since(self.sent_at));
        let latency = now.saturating_duration_since(self.sent_at);
        if outcome == Outcome::Ok && self.tells_speed() {
            let after = nanos_f64(latency.saturating_sub(rtt));
            let state = &self.state;
            state.record_speed_ewma(&state.after_first_byte, &state.after_first_byte_bits, after, now);
        }
        self.state.sample_limit(outcome, rtt, self.in_flight, now);
        let verdict = self.state.finish(outcome, self.first_byte.is_some(), outlier, self.sent_at, now);
        (verdict, Timing { first_byte: self.first_byte, latency })
    }

    /// Ends the request as cancelled (the caller went away); returns its timing.
    pub(crate) fn cancel(&mut self) -> Timing {
        self.cancel_at(Instant::now())
    }

    /// The request ends at `now` without a first byte: no longer awaiting one, and a censored
    /// sample of the endpoint's speed (nothing if it had its first byte).
    fn censor_at(&mut self, now: Instant) {
        if !self.sampled {
            self.sampled = true;
            self.state.first_byte_arrived(self.work);
            let waited = now.saturating_duration_since(self.sent_at);
            let unit = self.unit_time_sample(nanos_f64(waited));
            // A lower bound: read raw where the method's speed is not learnt.
            let common = self.state.on_common_scale(self.method, unit).unwrap_or(unit);
            self.state.record_censored(waited, common, now);
        }
    }

    fn cancel_at(&mut self, now: Instant) -> Timing {
        if !self.ended {
            self.ended = true;
            // Neither success nor failure for the outlier detector. A cancelled request is no
            // latency sample (it would only measure the caller's patience), but one that waited
            // without a first byte is a censored one: see `EndpointState::record_censored`.
            self.censor_at(now);
            self.state.cancel();
        }
        Timing { first_byte: self.first_byte, latency: now.saturating_duration_since(self.sent_at) }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            self.cancel();
        }
    }
}

/// How many times slower than the learnt speed a first byte must be to set a stall's floor.
const SLOW_SAMPLE: f64 = 10.0;

/// How late a first byte `nanos` after sending came, `ratio` times slower than the speed
/// learnt ([`InFlight::slowdown`]), in nanoseconds: the part of its wait beyond what that speed
/// would have taken (`nanos × (1 − 1 ÷ ratio)`) when it is more than [`RECOVERED_SAMPLE`] times
/// it, else 0.
fn lateness_nanos(nanos: f64, ratio: f64) -> f64 {
    if ratio > RECOVERED_SAMPLE { nanos * (1.0 - ratio.recip()) } else { 0.0 }
}

/// First bytes the learnt speed takes before a first byte or a given-up call is judged a
/// slowdown against it: as many as a method's speed takes before it is a reference (see
/// [`crate::method_speed`]).
const SPEED_SAMPLES_TO_JUDGE: u32 = crate::method_speed::MIN_SAMPLES;

/// How many times the learnt speed a first byte may take, at most, to lift the suspicion a
/// severe stall raised (see [`EndpointState::clear_stall_floor_below`]).
const RECOVERED_SAMPLE: f64 = 2.0;

/// The strikes a floor starts at when a second slow first byte confirms a slowdown (see
/// [`EndpointState::slow_first_byte`]).
const CONFIRMED_STRIKES: u32 = 3;

/// The strikes after which a stall's floor stops lengthening: 2⁵ = 32 × `stall_decay`.
const MAX_STALL_STRIKES: u32 = 5;

/// `limit_value` when the endpoint has no limit.
const NO_LIMIT: u32 = u32::MAX;
/// Encoded load reports an endpoint decodes on arrival, looking for how its replica counts the
/// work ([`EndpointState::learn_counting_from`]), before it leaves them to the policies that
/// read them: a replica that does not say so in its first reports is taken not to.
const COUNTING_CHECKS: u32 = 8;

fn limit_u32(limit: usize) -> u32 {
    u32::try_from(limit.max(1)).unwrap_or(NO_LIMIT - 1)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `e^(−Δt/τ)`: what an estimate made at `at` still weighs at `now`.
pub(crate) fn weight_since(at: Instant, now: Instant, tau: Duration) -> f64 {
    (-nanos_f64(now.saturating_duration_since(at)) / nanos_f64(tau).max(1.0)).exp()
}

/// Nanoseconds as `f64` without `as_nanos`' `u128` (converted in software); exact below 2^53 ns.
fn nanos_f64(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn state() -> Arc<EndpointState> {
        Arc::new(EndpointState::new(Endpoint::new("e", "http://e:9001"), TrackingConfig::default()))
    }

    /// `n` requests of `work` units that `s` answers in `ms` milliseconds each, one after another.
    async fn answers(s: &Arc<EndpointState>, work: u64, ms: u64, n: usize) {
        for _ in 0..n {
            let mut f = s.start(Instant::now(), work);
            advance(Duration::from_millis(ms)).await;
            f.end(Outcome::Ok, &OutlierConfig::default());
        }
    }

    fn ms(nanos: f64) -> f64 {
        nanos / 1e6
    }

    /// A report naming the replica's prefill backlog in tokens.
    fn prefill_report(tokens: f64) -> ReportedLoad {
        let mut report = ReportedLoad::default();
        report.named.insert(orca::PREFILL_BACKLOG_TOKENS.to_string(), tokens);
        report
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_of_a_prefill_backlog_in_tokens_counts_the_work_by_size_before_the_answers_judge() {
        let s = state();
        // Two no-load answers, too few to judge: every request counts alike.
        answers(&s, 1000, 10, 1).await;
        answers(&s, 500, 5, 1).await;
        assert_eq!(s.counting_verdict(), None);
        assert_eq!(s.min_request_work(), crate::capacity::PER_REQUEST_WORK);
        // A report that does not name the metric says nothing of it.
        s.record_report(ReportedLoad { queue_depth: 1, ..ReportedLoad::default() }, Instant::now());
        assert_eq!(s.min_request_work(), crate::capacity::PER_REQUEST_WORK);
        // An LLM engine's report: its work counts by size from now on, and the time per unit
        // restarts from the no-load time in tokens (10 µs), not the per-request one.
        s.record_report(prefill_report(0.0), Instant::now());
        assert_eq!(s.counting_verdict(), None, "still not judged by its answers");
        assert_eq!(s.min_request_work(), 500.0, "ω = r₀ ÷ u₀ = 5 ms ÷ 10 µs");
        assert_eq!(s.unit_time_nanos(), Some(10_000.0));
        assert_eq!(s.no_load_time_nanos(4000.0), Some(40e6));

        // The same from the encoded trailer a gateway keeps, before any policy reads it.
        let encoded = state();
        answers(&encoded, 1000, 10, 1).await;
        encoded.record_encoded_report(&orca::encode_header_value(&prefill_report(2000.0)), Instant::now());
        assert_eq!(encoded.min_request_work(), 1000.0);

        // Answers that judged a classic server (its time flat in the work) stand against it.
        let classic = state();
        for work in [100, 200, 400, 800, 1600, 3200, 6400, 12800] {
            answers(&classic, work, 10, 1).await;
        }
        assert_eq!(classic.counting_verdict(), Some(true));
        classic.record_report(prefill_report(0.0), Instant::now());
        assert_eq!(classic.min_request_work(), crate::capacity::PER_REQUEST_WORK);
        assert_eq!(classic.no_load_time_nanos(4000.0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_encoded_report_is_decoded_when_read_and_a_malformed_one_keeps_the_last_good() {
        let s = state();
        let queue = |depth| ReportedLoad { queue_depth: depth, ..ReportedLoad::default() };
        let t0 = Instant::now();
        s.record_encoded_report(&orca::encode_header_value(&queue(3)), t0);
        assert_eq!(s.report().map(|(r, at)| (r.queue_depth, at)), Some((3, t0)));
        advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        s.record_encoded_report(&http::HeaderValue::from_static("!!not base64!!"), t1);
        let (report, at) = s.report().expect("the good report stays");
        assert_eq!((report.queue_depth, at), (3, t0));
        assert!(s.fresh_report(t1, Duration::from_millis(500)).is_none(), "it is a second old");

        s.record_encoded_report(&orca::encode_header_value(&queue(3)), t1);
        s.record_encoded_report(&orca::encode_header_value(&queue(9)), t1);
        assert_eq!(s.fresh_report(t1, Duration::ZERO).map(|r| r.queue_depth), Some(9), "the newest");
        s.record_encoded_report(&orca::encode_header_value(&queue(5)), t1);
        s.record_report(queue(7), t1);
        assert_eq!(
            s.load(t1).report.map(|r| r.queue_depth),
            Some(7),
            "a decoded report replaces a pending one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn started_work_counts_every_start_once_and_never_goes_down() {
        let s = state();
        let t0 = Instant::now();
        assert_eq!(s.started_work(), 0);
        let mut answered = s.start(t0, 100);
        let cancelled = s.start(t0, 30);
        assert_eq!((s.started_work(), s.pending_work()), (130, 130));
        // A first byte, an end or a cancellation takes work off what is pending, never off what
        // was started.
        answered.first_byte();
        assert_eq!((s.started_work(), s.pending_work()), (130, 30));
        drop(cancelled);
        drop(answered);
        assert_eq!((s.started_work(), s.pending_work(), s.in_flight()), (130, 0, 0));
        let _third = s.start(t0, 5);
        assert_eq!(s.started_work(), 135);
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_keeps_the_balancers_own_load_at_its_arrival_not_at_its_decoding() {
        let s = state();
        let queue = |depth| ReportedLoad { queue_depth: depth, ..ReportedLoad::default() };
        let t0 = Instant::now();
        let mut answered = s.start(t0, 10);
        answered.first_byte();
        let waiting = s.start(t0, 10);
        s.record_encoded_report(&orca::encode_header_value(&queue(4)), t0);
        // More requests go out before anything reads the report: they are not in it.
        let later: Vec<_> = (0..3).map(|_| s.start(t0, 10)).collect();
        let snapshot = s.fresh_report_with_own(t0, Duration::from_secs(1)).expect("fresh");
        assert_eq!((snapshot.report.queue_depth, snapshot.at), (4, t0));
        assert_eq!(snapshot.own, OwnLoad { in_flight: 2, awaiting_first_byte: 1, pending_work: 10 });

        // A malformed report keeps the last good one with its own baseline.
        s.record_encoded_report(&http::HeaderValue::from_static("!!not base64!!"), t0);
        assert_eq!(s.fresh_report_with_own(t0, Duration::from_secs(1)).map(|r| r.own), Some(snapshot.own));
        s.record_report(queue(1), t0);
        assert_eq!(
            s.fresh_report_with_own(t0, Duration::from_secs(1)).map(|r| r.own),
            Some(OwnLoad { in_flight: 5, awaiting_first_byte: 4, pending_work: 40 })
        );
        advance(Duration::from_secs(2)).await;
        assert!(s.fresh_report_with_own(Instant::now(), Duration::from_secs(1)).is_none(), "stale");
        drop((answered, waiting, later));
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_to_slow_samples_blends_fast_ones_and_decays_when_idle() {
        let s = state();
        let t0 = Instant::now();
        assert_eq!(s.latency_ewma(t0), None);
        assert_eq!(s.latency_estimate_nanos(t0), 30e6, "the default RTT before any sample");

        s.record_rtt(Duration::from_millis(10), t0);
        assert_eq!(s.latency_ewma(t0), Some(Duration::from_millis(10)));
        s.record_rtt(Duration::from_millis(100), t0);
        assert_eq!(s.latency_ewma(t0), Some(Duration::from_millis(100)), "a slower sample replaces at once");

        // One second (a tenth of the decay) later, a fast sample gets weight 1 - e^-0.1.
        advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        s.record_rtt(Duration::from_millis(10), t1);
        let w = (-0.1f64).exp();
        let expected = 100.0 * w + 10.0 * (1.0 - w);
        assert!(
            (ms(s.latency_estimate_nanos(t1)) - expected).abs() < 1e-6,
            "{}",
            ms(s.latency_estimate_nanos(t1))
        );

        // Idle for one decay time: the estimate falls by e, so a slow endpoint is tried again.
        advance(Duration::from_secs(10)).await;
        let idle = ms(s.latency_estimate_nanos(Instant::now()));
        assert!((idle - expected / std::f64::consts::E).abs() < 1e-6, "{idle}");
    }

    #[tokio::test(start_paused = true)]
    async fn cost_grows_with_requests_in_flight_and_a_guard_ends_its_request_once() {
        let s = state();
        let t0 = Instant::now();
        assert_eq!(s.peak_ewma_cost(t0), 30e6);
        let mut first = s.start(t0, 1);
        let second = s.start(t0, 1);
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.peak_ewma_cost(t0), 90e6, "default RTT × (2 + 1)");

        advance(Duration::from_millis(40)).await;
        assert_eq!(first.end(Outcome::Unavailable, &OutlierConfig::default()).0, Verdict::Keep);
        assert_eq!((s.in_flight(), s.outcomes()), (1, (0, 1)));
        assert_eq!(s.latency_ewma(Instant::now()), None, "a failure is no sample of the speed");

        drop(second);
        assert_eq!(
            (s.in_flight(), s.outcomes(), s.load(Instant::now()).cancelled),
            (0, (0, 1), 1),
            "a dropped guard ends its request as cancelled, not as a failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_given_up_without_a_first_byte_raises_the_estimates_and_never_lowers_them() {
        let s = state();
        // Answers in 10 ms, one unit each: 10 ms a unit.
        answers(&s, 1, 10, 3).await;
        let unit = s.unit_time_nanos().expect("learnt");
        // Its caller gives up after 1 ms: no lower bound above the estimates, nothing changes.
        let early = s.start(Instant::now(), 1);
        advance(Duration::from_millis(1)).await;
        drop(early);
        assert_eq!(s.unit_time_nanos(), Some(unit));
        assert!(s.latency_ewma(Instant::now()) <= Some(Duration::from_millis(10)));
        // A call that waited 1 s for nothing: the endpoint takes at least that.
        let late = s.start(Instant::now(), 1);
        advance(Duration::from_secs(1)).await;
        drop(late);
        assert_eq!(s.latency_ewma(Instant::now()), Some(Duration::from_secs(1)), "peak: replaced");
        assert_eq!(s.unit_time_nanos(), Some(unit), "the speed itself is measured by answers only");
        let raised = s.unit_time_nanos_at(Instant::now()).expect("learnt");
        assert!(raised > 50.0 * unit, "the stall sets a floor under the time per unit: {raised}");
        assert_eq!(s.load(Instant::now()).cancelled, 2, "still counted as cancelled");
        // The floor fades with the stall's time constant (1 s): after 3 s a 20th of it is left,
        // after 10 s the endpoint costs its own speed again.
        advance(Duration::from_secs(3)).await;
        let faded = s.unit_time_nanos_at(Instant::now()).expect("learnt");
        assert!(faded < raised / 19.0 && faded > raised / 21.0, "{faded} against {raised}");
        advance(Duration::from_secs(7)).await;
        assert_eq!(s.unit_time_nanos_at(Instant::now()), Some(unit));
        // A call its endpoint answered is no censored sample, whenever it ends.
        let mut answered = s.start(Instant::now(), 1);
        advance(Duration::from_millis(10)).await;
        answered.first_byte();
        let after_answer = s.unit_time_nanos();
        advance(Duration::from_secs(5)).await;
        answered.end(Outcome::Cancelled, &OutlierConfig::default());
        assert_eq!(s.unit_time_nanos(), after_answer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_held_to_its_deadline_without_a_first_byte_is_a_lower_bound() {
        let s = state();
        answers(&s, 1, 10, 3).await;
        let unit = s.unit_time_nanos().expect("learnt");
        // The replica answers DEADLINE_EXCEEDED at the caller's 1 s deadline, having sent nothing.
        let mut f = s.start(Instant::now(), 1);
        advance(Duration::from_secs(1)).await;
        f.end(Outcome::DeadlineExceeded, &OutlierConfig::default());
        assert_eq!(s.unit_time_nanos(), Some(unit), "not a sample of its speed");
        let floor = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!(floor > 50.0 * unit, "a floor under it: {floor}");
        assert_eq!((s.awaiting_first_byte(), s.pending_work()), (0, 0));
        assert_eq!(s.load(Instant::now()).failed, 1, "and a failure, as before");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_without_an_answer_neither_breaks_nor_extends_a_failure_streak() {
        let s = state();
        let outlier = OutlierConfig::default();
        let window = outlier.base_ejection;
        let fail = |s: &Arc<EndpointState>| s.start(Instant::now(), 1).end(Outcome::Unavailable, &outlier).0;
        for _ in 0..4 {
            assert_eq!(fail(&s), Verdict::Keep);
            advance(Duration::from_millis(1)).await;
        }
        // A call held to its deadline, nothing answered: no success, no fifth failure.
        let mut held = s.start(Instant::now(), 1);
        advance(Duration::from_secs(1)).await;
        assert_eq!(held.end(Outcome::DeadlineExceeded, &outlier).0, Verdict::Keep);
        assert!(s.is_suspect(Instant::now(), window), "the streak stands");
        assert_eq!(fail(&s), Verdict::Eject, "the fifth failure in a row");

        // Once answered, a deadline is a sign of life, as before: it breaks a streak.
        let s = state();
        for _ in 0..4 {
            fail(&s);
        }
        let mut answered = s.start(Instant::now(), 1);
        advance(Duration::from_millis(10)).await;
        answered.first_byte();
        advance(Duration::from_secs(1)).await;
        answered.end(Outcome::DeadlineExceeded, &outlier);
        assert!(!s.is_suspect(Instant::now(), window));
        assert_eq!(fail(&s), Verdict::Keep, "a new streak of one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_byte_many_times_slower_than_the_speed_counts_at_once() {
        let s = state();
        answers(&s, 1000, 10, 5).await;
        let unit = s.unit_time_nanos().expect("learnt");
        // Three times slower: within the noise a batch makes, the average takes it.
        answers(&s, 1000, 30, 1).await;
        assert_eq!(s.unit_time_nanos_at(Instant::now()), s.unit_time_nanos());
        assert!(s.unit_time_nanos().unwrap() < 1.1 * unit);
        // Twenty times slower, unsized: a long request or a slow endpoint, it cannot tell.
        answers(&s, 1, 200, 1).await;
        assert_eq!(s.unit_time_nanos_at(Instant::now()), s.unit_time_nanos());
        // Twenty times slower, sized: the endpoint slowed down, and costs it at once.
        answers(&s, 1000, 200, 1).await;
        let now = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!((now / unit - 20.0).abs() < 0.2, "{}", now / unit);
        assert!(s.unit_time_nanos().unwrap() < 1.5 * unit, "the average moves slowly");
    }

    /// `n` calls of `method` of `work` units that `s` answers in `ms` milliseconds each, one after
    /// another.
    async fn method_answers(s: &Arc<EndpointState>, method: u64, work: u64, ms: u64, n: usize) {
        for _ in 0..n {
            let mut f = s.start(Instant::now(), work).for_method(method);
            advance(Duration::from_millis(ms)).await;
            f.first_byte();
            f.end(Outcome::Ok, &OutlierConfig::default());
            advance(Duration::from_millis(100)).await;
        }
    }

    /// The methods of [`learnt_two_methods`].
    const UNARY: u64 = 7;
    const STREAM: u64 = 8;

    /// An endpoint that has answered five unary calls of 1,000 units in 60 ms each (their
    /// whole generation) and five streams of as many in 6 ms (their first token), in turn.
    async fn learnt_two_methods() -> Arc<EndpointState> {
        let s = state();
        for _ in 0..5 {
            method_answers(&s, UNARY, 1000, 60, 1).await;
            method_answers(&s, STREAM, 1000, 6, 1).await;
        }
        s
    }

    #[tokio::test(start_paused = true)]
    async fn a_speed_learnt_from_a_few_first_bytes_judges_no_slowdown() {
        const WINDOW: Duration = Duration::from_secs(10);
        let s = state();
        // Two first answers are no usual speed yet: a third 20 × slower than them is taken in,
        // neither a floor nor a suspicion.
        method_answers(&s, STREAM, 1000, 6, 2).await;
        method_answers(&s, STREAM, 1000, 120, 1).await;
        assert!(!s.is_suspect(Instant::now(), WINDOW), "judged against two answers");
        assert_eq!(s.unit_time_nanos_at(Instant::now()), s.unit_time_nanos(), "no floor");
        // Learnt from more, the speed judges: a first byte 20 × slower is a slowdown.
        method_answers(&s, STREAM, 1000, 6, 10).await;
        method_answers(&s, STREAM, 1000, 120, 1).await;
        assert!(s.is_suspect(Instant::now(), WINDOW), "judged against four");
        assert!(s.unit_time_nanos_at(Instant::now()) > s.unit_time_nanos(), "a floor");
    }

    #[tokio::test(start_paused = true)]
    async fn a_severe_stall_makes_the_endpoint_suspect_until_a_fast_first_byte_or_the_window() {
        const WINDOW: Duration = Duration::from_secs(10);
        let s = learnt_two_methods().await;
        assert!(!s.is_suspect(Instant::now(), WINDOW));
        // A stream's first token 20 × slow: a severe floor. Its floor fades within seconds, the
        // suspicion lasts the window.
        method_answers(&s, STREAM, 1000, 120, 1).await;
        assert!(s.is_suspect(Instant::now(), WINDOW));
        advance(Duration::from_millis(3000)).await;
        // A call given up on at 5 × its time raises the floor it has decayed to, no severe stall
        // itself: the suspicion stands.
        let floor = |s: &EndpointState| f64::from_bits(s.stall_floor_bits.load(Ordering::Relaxed));
        let before = floor(&s);
        let mut given_up = s.start(Instant::now(), 1000).for_method(UNARY);
        advance(Duration::from_millis(300)).await;
        given_up.end(Outcome::Cancelled, &OutlierConfig::default());
        assert!(floor(&s) != before, "the smaller stall set the floor: {before} {}", floor(&s));
        assert!(!s.stall_severe.load(Ordering::Relaxed), "and is no severe one");
        advance(Duration::from_millis(6500)).await;
        assert!(s.is_suspect(Instant::now(), WINDOW));
        advance(Duration::from_millis(300)).await;
        assert!(!s.is_suspect(Instant::now(), WINDOW), "the window is over");
        // Slow again, then a first byte at the method's usual speed clears it.
        method_answers(&s, STREAM, 1000, 120, 1).await;
        assert!(s.is_suspect(Instant::now(), WINDOW));
        // 8 × slow: under the floor, which goes, but no recovery: the suspicion stands.
        method_answers(&s, STREAM, 1000, 48, 1).await;
        assert!(floor(&s).is_nan(), "the floor is gone");
        assert!(s.is_suspect(Instant::now(), WINDOW), "an 8 × first byte lifts no suspicion");
        method_answers(&s, STREAM, 1000, 6, 1).await;
        assert!(!s.is_suspect(Instant::now(), WINDOW), "a fast first byte clears it");
        // A first byte a little slow (3 ×) is no severe stall.
        method_answers(&s, STREAM, 1000, 18, 1).await;
        assert!(!s.is_suspect(Instant::now(), WINDOW));
    }

    #[tokio::test(start_paused = true)]
    async fn each_method_s_first_bytes_are_read_against_its_own_speed() {
        let (unary, stream) = (UNARY, STREAM);
        // Unary answers take their whole generation (60 ms), streams their first token (6 ms):
        // the speed over both sits between.
        let s = learnt_two_methods().await;
        let common = s.unit_time_nanos().expect("learnt");
        let stream_unit = lock(&s.method_speeds).get(stream).expect("learnt");
        assert!(common > 4.0 * stream_unit, "{common} {stream_unit}");
        // The endpoint slows 20 times: a stream's first token in 120 ms is under 10 × the speed
        // over both methods, and 20 × its own.
        method_answers(&s, stream, 1000, 120, 1).await;
        let now = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!(now / common > 15.0, "counted at once, on the common scale: {}", now / common);
        assert!(s.stall_severe.load(Ordering::Relaxed), "as severe as it is: probation when tried");
        assert_eq!(lock(&s.method_speeds).get(stream), Some(stream_unit), "the method's usual speed stays");
        // A second within a second confirms the slowdown: the floor's time constant starts long.
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 0);
        method_answers(&s, stream, 1000, 120, 1).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), CONFIRMED_STRIKES);
        let now = s.unit_time_nanos_at(Instant::now()).unwrap();
        // A unary answer at its usual speed is fast for the floor's scale: it clears it, where
        // read raw (60 ms, 10 × a stream's) it would not have.
        let floor_set = now;
        method_answers(&s, unary, 1000, 60, 1).await;
        let after = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!(after < floor_set / 5.0, "{after} {floor_set}");
        // The same first bytes from requests that name no method, or all one method, are read
        // raw: under 10 × the common speed, the slow one sets no floor.
        for method in [NO_METHOD, unary] {
            let raw = state();
            for _ in 0..5 {
                method_answers(&raw, method, 1000, 60, 1).await;
                method_answers(&raw, method, 1000, 6, 1).await;
            }
            method_answers(&raw, method, 1000, 120, 1).await;
            assert_eq!(raw.unit_time_nanos_at(Instant::now()), raw.unit_time_nanos());
            // Slow enough to set a floor twice in a row, within a second of each other: not
            // confirmed (the second floor, set once the first had faded, is one strike).
            method_answers(&raw, method, 1000, 600, 2).await;
            assert!(raw.unit_time_nanos_at(Instant::now()) > raw.unit_time_nanos(), "a floor");
            assert!(raw.stall_strikes.load(Ordering::Relaxed) < CONFIRMED_STRIKES);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_stalls_again_when_tried_keeps_its_floor_longer_until_it_answers() {
        let s = state();
        answers(&s, 1, 10, 3).await;
        let unit = s.unit_time_nanos().expect("learnt");
        let give_up_after = |wait: Duration| {
            let s = &s;
            async move {
                let call = s.start(Instant::now(), 1);
                advance(wait).await;
                drop(call);
            }
        };
        let floor = |s: &EndpointState| s.unit_time_nanos_at(Instant::now()).unwrap() / unit;
        // A first stall: a floor of 100 × its speed, a 1 s time constant.
        give_up_after(Duration::from_secs(1)).await;
        advance(Duration::from_secs(2)).await;
        let once = floor(&s);
        assert!((once - 100.0 * (-2.0f64).exp()).abs() < 0.5, "{once}");
        // Faded, it is tried again (6 s on) and stalls again: a strike, the time constant 2 s.
        advance(Duration::from_secs(4)).await;
        give_up_after(Duration::from_secs(1)).await;
        advance(Duration::from_secs(2)).await;
        let twice = floor(&s);
        assert!((twice - 100.0 * (-1.0f64).exp()).abs() < 0.5, "{twice}");
        // Calls of one stall that end together are one strike.
        let calls: Vec<_> = (0..3).map(|_| s.start(Instant::now(), 1)).collect();
        advance(Duration::from_secs(20)).await;
        drop(calls);
        advance(Duration::from_secs(2)).await;
        let piled = floor(&s);
        assert!(piled > 100.0 * (-0.5f64).exp(), "a third strike: 4 s: {piled}");
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 2);
        // An answer faster than the floor clears it, and the strikes.
        let mut f = s.start(Instant::now(), 1);
        advance(Duration::from_millis(10)).await;
        f.first_byte();
        assert_eq!(s.unit_time_nanos_at(Instant::now()), s.unit_time_nanos());
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_still_many_times_slow_keeps_the_strikes_though_faster_than_the_floor() {
        let stream = STREAM;
        let s = learnt_two_methods().await;
        let common = s.unit_time_nanos().expect("learnt");
        // Slowed 20 times, confirmed by a second slow first token within a second.
        method_answers(&s, stream, 1000, 120, 2).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), CONFIRMED_STRIKES);
        // Faded (8 s time constant), it is tried: its first token comes 16 × slow, under the
        // floor's 20 × but still a stall. A strike more, not a recovery.
        advance(Duration::from_secs(20)).await;
        let faded = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!(faded < 3.0 * common, "{}", faded / common);
        method_answers(&s, stream, 1000, 96, 1).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), CONFIRMED_STRIKES + 1);
        // Three seconds on, it still costs more than 10 × its speed: not tried again so soon.
        advance(Duration::from_secs(3)).await;
        let later = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!(later > 10.0 * common, "{}", later / common);
        // A first token at its usual speed clears the floor and the strikes.
        method_answers(&s, stream, 1000, 6, 1).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 0);
        assert_eq!(s.unit_time_nanos_at(Instant::now()), s.unit_time_nanos());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_byte_and_a_call_given_up_as_slow_confirm_a_slowdown_but_give_ups_alone_do_not() {
        let (unary, stream) = (UNARY, STREAM);
        let learnt = learnt_two_methods;
        let give_up = |s: &Arc<EndpointState>, after: Duration| {
            let call = s.start(Instant::now(), 1000).for_method(unary);
            async move {
                advance(after).await;
                drop(call);
            }
        };
        // Slowed 20 times: the one stream in flight has its first token 20 × late, and a unary
        // call reaches its deadline (1 s, 16 × its generation) within the second.
        let s = learnt().await;
        let unary_call = s.start(Instant::now(), 1000).for_method(unary);
        // Behind the unary call's work: 20 × its speed is twice 120 ms.
        method_answers(&s, stream, 1000, 240, 1).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 0);
        assert!(s.stall_severe.load(Ordering::Relaxed));
        advance(Duration::from_millis(660)).await;
        drop(unary_call);
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), CONFIRMED_STRIKES);
        // A call given up on after 7 × its generation is no such sign.
        let s = learnt().await;
        method_answers(&s, stream, 1000, 120, 1).await;
        give_up(&s, Duration::from_millis(400)).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 0);
        // The other way round: the given-up call first, the slow first token after it.
        let s = learnt().await;
        give_up(&s, Duration::from_secs(1)).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 0);
        method_answers(&s, stream, 1000, 120, 1).await;
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), CONFIRMED_STRIKES);
        // A stopped process: calls given up on together, no first byte. Not confirmed: the
        // floor keeps its 1 s time constant, and the endpoint is tried again soon after.
        let s = learnt().await;
        let calls: Vec<_> = (0..3).map(|_| s.start(Instant::now(), 1000).for_method(unary)).collect();
        advance(Duration::from_secs(1)).await;
        drop(calls);
        assert_eq!(s.stall_strikes.load(Ordering::Relaxed), 0);
        // A slow first token more than a second later: a floor, not a confirmation.
        advance(Duration::from_millis(1500)).await;
        method_answers(&s, stream, 1000, 120, 1).await;
        assert!(s.stall_strikes.load(Ordering::Relaxed) < CONFIRMED_STRIKES);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_tried_after_a_big_stall_takes_one_request_at_a_time_until_it_answers() {
        let s = state();
        answers(&s, 1, 10, 5).await;
        let unit = s.unit_time_nanos().expect("learnt");
        let floor = |s: &EndpointState| s.unit_time_nanos_at(Instant::now()).unwrap() / unit;
        // A stall: a call given up on after 1 s sets a floor of 100 × its speed.
        let call = s.start(Instant::now(), 1);
        advance(Duration::from_secs(1)).await;
        drop(call);
        // Faded 4 s on: the endpoint may be tried.
        advance(Duration::from_secs(4)).await;
        let faded = floor(&s);
        assert!(faded < 2.0, "{faded}");
        // A request out there: the floor stands at its full height until that one's first byte.
        let mut probe = s.start(Instant::now(), 1);
        let on_probation = floor(&s);
        assert!((on_probation - 100.0).abs() < 0.5, "{on_probation}");
        advance(Duration::from_millis(10)).await;
        probe.first_byte();
        assert_eq!(s.unit_time_nanos_at(Instant::now()), s.unit_time_nanos(), "a fast answer clears it");
        // A floor under 10 × the speed (a call given up on after 5 × its time): no probation.
        let call = s.start(Instant::now(), 1);
        advance(Duration::from_millis(50)).await;
        drop(call);
        advance(Duration::from_millis(500)).await;
        let small = floor(&s);
        assert!(small > 2.0 && small < 4.0, "{small}");
        let _other = s.start(Instant::now(), 1);
        assert_eq!(floor(&s), small);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_try_puts_the_endpoint_on_probation_though_it_raises_the_speed() {
        let s = state();
        answers(&s, 10, 10, 5).await;
        let unit = s.unit_time_nanos().expect("learnt");
        // A stall (a call given up on after 1 s: 100 × its speed), faded 4 s on.
        let call = s.start(Instant::now(), 10);
        advance(Duration::from_secs(1)).await;
        drop(call);
        advance(Duration::from_secs(4)).await;
        // Tried: its first byte comes 20 × slower than its speed: a floor of its own.
        let mut probe = s.start(Instant::now(), 10);
        advance(Duration::from_millis(200)).await;
        probe.first_byte();
        let floor = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!(floor > 15.0 * unit, "the slow answer is the new floor: {}", floor / unit);
        // The slow answer also entered the speed's average; the floor it set still puts the
        // endpoint on probation: with a request out there, it stands at full height.
        assert!(s.unit_time_nanos().unwrap() > unit, "the speed moved up");
        advance(Duration::from_secs(3)).await;
        let faded = s.unit_time_nanos_at(Instant::now()).unwrap();
        let _next = s.start(Instant::now(), 10);
        let held = s.unit_time_nanos_at(Instant::now()).unwrap();
        assert!(held > 2.0 * faded && (held - floor).abs() < 1.0, "{faded} {held} {floor}");
    }

    #[tokio::test(start_paused = true)]
    async fn where_requests_carry_sizes_an_unsized_answer_is_no_sample_of_speed_nor_progress() {
        let s = state();
        // A metadata read first (unsized, 1 ms), then generations of 10 units in 10 ms: the
        // read's speed is forgotten at the first sized request.
        answers(&s, 1, 1, 1).await;
        assert!(!s.sizes_requests());
        let read_speed = s.unit_time_nanos().unwrap();
        answers(&s, 10, 10, 3).await;
        assert!(s.sizes_requests());
        let unit = s.unit_time_nanos().unwrap();
        let gens_only = state();
        answers(&gens_only, 10, 10, 3).await;
        assert_eq!(Some(unit), gens_only.unit_time_nanos(), "the read left out");
        assert!(unit > 2.0 * read_speed, "{unit} {read_speed}");
        // A generation stuck for 500 ms while reads are answered in a millisecond each: the
        // stall runs on, and the speed stays.
        let _stuck = s.start(Instant::now(), 10);
        for _ in 0..5 {
            advance(Duration::from_millis(100)).await;
            answers(&s, 1, 1, 1).await;
        }
        assert!(s.stalled_for(Instant::now()).unwrap() >= Duration::from_millis(500));
        assert_eq!(s.unit_time_nanos(), Some(unit));
        // Where no request carries a size, every answer is a sample and progress.
        let plain = state();
        answers(&plain, 1, 10, 3).await;
        let _waiting = plain.start(Instant::now(), 1);
        advance(Duration::from_millis(100)).await;
        answers(&plain, 1, 1, 1).await;
        assert_eq!(plain.stalled_for(Instant::now()), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_counts_from_the_last_first_byte_or_the_start_of_a_busy_period() {
        let s = state();
        assert_eq!(s.stalled_for(Instant::now()), None, "nothing awaits");
        advance(Duration::from_secs(10)).await;
        let mut first = s.start(Instant::now(), 1);
        assert_eq!(s.stalled_for(Instant::now()), Some(Duration::ZERO), "idle time is no stall");
        advance(Duration::from_millis(30)).await;
        let _second = s.start(Instant::now(), 1);
        assert_eq!(s.stalled_for(Instant::now()), Some(Duration::from_millis(30)));
        advance(Duration::from_millis(20)).await;
        first.first_byte();
        assert_eq!(s.stalled_for(Instant::now()), Some(Duration::ZERO), "a first byte is progress");
        advance(Duration::from_millis(5)).await;
        assert_eq!(s.stalled_for(Instant::now()), Some(Duration::from_millis(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_first_byte_is_progress_as_of_when_it_was_due() {
        let s = state();
        // Generations of 10 units in 10 ms, a millisecond a unit, learnt from enough answers
        // to judge.
        s.teach_time_grows_with_work(Duration::from_millis(1)).await;
        answers(&s, 10, 10, 5).await;
        let unit = s.unit_time_nanos().unwrap();
        assert!((unit - 1e6).abs() < 1e3, "{unit}");
        let mut slow = s.start(Instant::now(), 10);
        let mut behind = s.start(Instant::now(), 10);
        // A first byte after 60 ms where 10 were due: under the 10 × that judges a slowdown,
        // but 50 ms late. The stall counts from when it was due, not from its arrival.
        advance(Duration::from_millis(60)).await;
        slow.first_byte();
        let ratio = 60e6 / 10.0 / unit;
        assert!(ratio > RECOVERED_SAMPLE && ratio < SLOW_SAMPLE, "{ratio}");
        let stall = s.stalled_for(Instant::now()).unwrap();
        let late = Duration::from_secs_f64(0.060 * (1.0 - 1.0 / ratio));
        assert!(stall.abs_diff(late) < Duration::from_micros(100), "{stall:?} {late:?}");
        assert!(stall > Duration::from_millis(49), "{stall:?}");
        behind.first_byte();
        assert_eq!(s.stalled_for(Instant::now()), None, "nothing awaits");
        // Within 2 × the speed a first byte is on time; and never before the progress marked.
        let mut a = s.start(Instant::now(), 10);
        let mut b = s.start(Instant::now(), 10);
        advance(Duration::from_millis(15)).await;
        a.first_byte();
        assert_eq!(s.stalled_for(Instant::now()), Some(Duration::ZERO), "1.5 × is noise");
        advance(Duration::from_millis(5)).await;
        // b answers (20 ms behind a's 10 units, on time): nothing awaits now.
        b.first_byte();
        assert_eq!(s.stalled_for(Instant::now()), None);
        // A late first byte due before the last progress moves nothing: `late_again` is due at
        // 10 ms, `quick` (sent at 20 ms, on time) answers at 25, `late_again` at 40.
        let mut late_again = s.start(Instant::now(), 10);
        let _waiting = s.start(Instant::now(), 10);
        advance(Duration::from_millis(20)).await;
        let mut quick = s.start(Instant::now(), 2);
        advance(Duration::from_millis(5)).await;
        quick.first_byte();
        advance(Duration::from_millis(15)).await;
        late_again.first_byte();
        assert_eq!(s.stalled_for(Instant::now()), Some(Duration::from_millis(15)));
        // A request without its size says nothing of the speed (as for `slowed`): on an
        // endpoint sent only such requests, a late first byte is progress at its arrival.
        let unsized_ = state();
        answers(&unsized_, 1, 10, 5).await;
        assert!(!unsized_.sizes_requests() && unsized_.unit_time_nanos().is_some());
        let mut late_unsized = unsized_.start(Instant::now(), 1);
        let _after = unsized_.start(Instant::now(), 1);
        advance(Duration::from_millis(60)).await;
        late_unsized.first_byte();
        assert_eq!(unsized_.stalled_for(Instant::now()), Some(Duration::ZERO));
        // Without a learnt speed a first byte is progress at its arrival, as before.
        let fresh = state();
        let mut first = fresh.start(Instant::now(), 10);
        let _next = fresh.start(Instant::now(), 10);
        advance(Duration::from_millis(500)).await;
        first.first_byte();
        assert_eq!(fresh.stalled_for(Instant::now()), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn the_board_shows_the_learnt_capacity_and_a_stream_its_time_after_the_first_byte() {
        let s = state();
        let load = s.load(Instant::now());
        assert_eq!((load.slots, load.idle_unit_time), (1, None), "nothing learnt yet");
        // One request of 4 units sent with nothing ahead: first byte after 8 ms, end 2 s later.
        let mut f = s.start(Instant::now(), 4);
        advance(Duration::from_millis(8)).await;
        f.first_byte();
        advance(Duration::from_secs(2)).await;
        f.end(Outcome::Ok, &OutlierConfig::default());
        let load = s.load(Instant::now());
        assert_eq!((load.slots, load.idle_unit_time), (1, Some(Duration::from_millis(2))));
        assert_eq!(s.after_first_byte_nanos(), Some(2e9));
        // A failure teaches nothing about how long a response runs on.
        let mut f = s.start(Instant::now(), 4);
        advance(Duration::from_millis(8)).await;
        f.first_byte();
        f.end(Outcome::Unavailable, &OutlierConfig::default());
        assert_eq!(s.after_first_byte_nanos(), Some(2e9));
        // Eight at once, each as fast as one alone: the slots grow past 1.
        for _ in 0..100 {
            let mut batch: Vec<_> = (0..8).map(|_| s.start(Instant::now(), 4)).collect();
            advance(Duration::from_millis(8)).await;
            batch.iter_mut().for_each(|f| f.first_byte());
        }
        assert!(s.load(Instant::now()).slots > 1, "{:?}", s.load(Instant::now()));
        assert_eq!(s.load(Instant::now()).slots, s.slots());
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_found_to_count_per_request_keeps_its_speed_in_the_new_units() {
        // A classic server: 10 ms at no load whatever the size. Once enough no-load answers show
        // that its time does not grow with the work, every request counts alike; its time per
        // unit must then be restated in those units, not forgotten (an endpoint without one
        // borrows another's, in other units, and is not picked again to learn its own).
        let s = state();
        let mut answers = 0;
        while s.min_request_work() < crate::capacity::PER_REQUEST_WORK {
            assert!(answers < 4 * crate::capacity::FIT_SAMPLES, "judged within its answers");
            let work = u64::from(100 + (answers * 7919) % 1901);
            let mut f = s.start(Instant::now(), work);
            advance(Duration::from_millis(10)).await;
            f.first_byte();
            f.end(Outcome::Ok, &OutlierConfig::default());
            advance(Duration::from_millis(90)).await;
            answers += 1;
        }
        // Right at the answer that changed the count.
        let unit = s.unit_time_nanos().expect("a time per unit in the new units");
        let per_request = unit * s.request_work(1.0);
        assert!((9.9e6..=10.1e6).contains(&per_request), "a request costs its 10 ms: {per_request}");
    }
}
