#![allow(clippy::unwrap_used, clippy::expect_used)]
//! AIMD over replicas that queue instead of refusing: a discrete-event model of bench
//! `overload` (four replicas of 4 slots at 100 ms ± 5 %, each queueing what it cannot start, a
//! deadline of 1 s; a pool-wide limit with a shed queue in front that refuses a newcomer whose
//! expected wait exceeds 50 ms or finds 128 waiting; Poisson arrivals at 0.5, 1, 2 and 3 × the
//! capacity, 10 s each), in virtual time. With its defaults (`AimdParams::knee`) AIMD keeps
//! goodput at 3× and the p99 of admitted requests near a hand-set limit of the 16 slots; with
//! Netflix's it gets no drop signal before calls expire.
//!
//! `cargo test -p switchyard-limit --test aimd_queueing -- --nocapture` prints the figures per
//! step (those quoted in the module docs of `switchyard_limit::aimd`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use switchyard_limit::{Aimd, Fixed, LimitAlgorithm, Sample};
use tokio::time::Instant;

const REPLICAS: usize = 4;
const SLOTS: usize = 4;
const SERVICE_MS: f64 = 100.0;
const DEADLINE_NS: u64 = 1_000_000_000;
const STEP_NS: u64 = 10_000_000_000;
const LOADS: [f64; 4] = [0.5, 1.0, 2.0, 3.0];
/// The shed queue's target wait, and its bound.
const SHED_TARGET_NS: f64 = 50e6;
const SHED_MAX_QUEUE: usize = 128;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    Done { replica: usize, call: Call },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    arrived: u64,
    admitted: u64,
    in_flight: usize,
}

/// One step's figures.
#[derive(Debug, Clone, Copy)]
struct Step {
    goodput: f64,
    p99_ms: f64,
    mean_limit: f64,
}

/// The model: the limit, the shed queue in front, the replicas behind.
struct Model<'a> {
    algorithm: &'a mut dyn LimitAlgorithm,
    rng: rand::rngs::Xoshiro256PlusPlus,
    base: Instant,
    events: BinaryHeap<Reverse<(u64, Event)>>,
    busy: [usize; REPLICAS],
    held: [usize; REPLICAS],
    queued: Vec<VecDeque<Call>>,
    in_flight: usize,
    waiting: VecDeque<u64>,
    last_dispatch: u64,
    dispatch_gap_ns: f64,
    latencies: Vec<Vec<u64>>,
    good: [u64; 4],
    limits: Vec<Vec<usize>>,
}

fn step_of(t: u64) -> usize {
    ((t / STEP_NS) as usize).min(LOADS.len() - 1)
}

impl Model<'_> {
    fn service(&mut self) -> u64 {
        (SERVICE_MS * self.rng.random_range(0.95..1.05) * 1e6) as u64
    }

    fn feed(&mut self, t: u64, call: Call, dropped: bool) {
        let sample = Sample {
            now: self.base + Duration::from_nanos(t),
            rtt: Duration::from_nanos(t - call.admitted),
            in_flight: call.in_flight,
            dropped,
        };
        let limit = self.algorithm.update(&sample);
        self.limits[step_of(t)].push(limit);
    }

    /// Admits waiters while the limit has room, each to the replica holding the fewest.
    fn dispatch(&mut self, t: u64) {
        while self.in_flight < self.algorithm.limit() {
            let Some(arrived) = self.waiting.pop_front() else { break };
            if t - arrived >= DEADLINE_NS {
                continue; // expired in the shed queue: never reaches a replica
            }
            let gap = (t - self.last_dispatch) as f64;
            self.dispatch_gap_ns = self.dispatch_gap_ns * 7.0 / 8.0 + gap.min(1e9) / 8.0;
            self.last_dispatch = t;
            self.in_flight += 1;
            let call = Call { arrived, admitted: t, in_flight: self.in_flight };
            let replica = (0..REPLICAS).min_by_key(|&r| self.held[r]).unwrap();
            self.held[replica] += 1;
            if self.busy[replica] < SLOTS {
                self.busy[replica] += 1;
                let done = t + self.service();
                self.events.push(Reverse((done, Event::Done { replica, call })));
            } else {
                self.queued[replica].push_back(call);
            }
        }
    }

    fn done(&mut self, t: u64, replica: usize, call: Call) {
        self.in_flight -= 1;
        self.held[replica] -= 1;
        self.busy[replica] -= 1;
        let in_time = t - call.arrived <= DEADLINE_NS;
        if in_time {
            self.good[step_of(call.arrived)] += 1;
            self.latencies[step_of(call.arrived)].push(t - call.arrived);
        }
        // A call answered past its deadline is DEADLINE_EXCEEDED: a drop.
        self.feed(t, call, !in_time);
        while let Some(next) = self.queued[replica].pop_front() {
            if t - next.arrived >= DEADLINE_NS {
                // The replica drops a call still queued at its deadline: DEADLINE_EXCEEDED.
                self.in_flight -= 1;
                self.held[replica] -= 1;
                self.feed(t, next, true);
                continue;
            }
            self.busy[replica] += 1;
            let done = t + self.service();
            self.events.push(Reverse((done, Event::Done { replica, call: next })));
            break;
        }
        self.dispatch(t);
    }
}

fn run(algorithm: &mut dyn LimitAlgorithm, seed: u64) -> Vec<Step> {
    let capacity = (REPLICAS * SLOTS) as f64 / (SERVICE_MS / 1000.0);
    let mut m = Model {
        algorithm,
        rng: rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed),
        base: Instant::now(),
        events: BinaryHeap::new(),
        busy: [0; REPLICAS],
        held: [0; REPLICAS],
        queued: vec![VecDeque::new(); REPLICAS],
        in_flight: 0,
        waiting: VecDeque::new(),
        last_dispatch: 0,
        dispatch_gap_ns: 1e9 / capacity,
        latencies: vec![Vec::new(); LOADS.len()],
        good: [0; 4],
        limits: vec![Vec::new(); LOADS.len()],
    };
    let end = STEP_NS * LOADS.len() as u64;
    m.events.push(Reverse((0, Event::Arrival)));
    while let Some(Reverse((t, event))) = m.events.pop() {
        if t > end + 2 * DEADLINE_NS {
            break;
        }
        match event {
            Event::Arrival => {
                if t < end {
                    let mean_gap = 1e9 / (LOADS[step_of(t)] * capacity);
                    let gap = -mean_gap * (1.0 - m.rng.random_range(0.0..1.0f64)).ln();
                    m.events.push(Reverse((t + gap as u64, Event::Arrival)));
                }
                let expected_wait = m.waiting.len() as f64 * m.dispatch_gap_ns;
                let full = m.in_flight >= m.algorithm.limit();
                if full && (expected_wait > SHED_TARGET_NS || m.waiting.len() >= SHED_MAX_QUEUE) {
                    continue; // refused by the shed queue: RESOURCE_EXHAUSTED, never admitted
                }
                m.waiting.push_back(t);
                m.dispatch(t);
            }
            Event::Done { replica, call } => m.done(t, replica, call),
        }
    }
    (0..LOADS.len())
        .map(|s| {
            let mut l = std::mem::take(&mut m.latencies[s]);
            l.sort_unstable();
            let p99 = l.get(((l.len().max(1) - 1) as f64 * 0.99) as usize).copied().unwrap_or(0);
            let limits = &m.limits[s];
            Step {
                goodput: m.good[s] as f64 / (STEP_NS as f64 / 1e9) / capacity,
                p99_ms: p99 as f64 / 1e6,
                mean_limit: limits.iter().sum::<usize>() as f64 / limits.len().max(1) as f64,
            }
        })
        .collect()
}

/// Per seed: goodput at 3× and the p99 ratio of 3× over 0.5×, printed.
fn at_3x(label: &str, make: impl Fn() -> Box<dyn LimitAlgorithm>) -> Vec<(f64, f64)> {
    (0..3)
        .map(|seed| {
            let steps = run(&mut *make(), seed);
            let row: Vec<String> = LOADS
                .iter()
                .zip(&steps)
                .map(|(load, s)| {
                    format!("{load}×: {:.2} / {:.0} ms / {:.1}", s.goodput, s.p99_ms, s.mean_limit)
                })
                .collect();
            let ratio = steps[3].p99_ms / steps[0].p99_ms;
            println!(
                "{label} seed {seed} (goodput / p99 / mean limit): {}; ratio {ratio:.2}",
                row.join(" | ")
            );
            (steps[3].goodput, ratio)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_default_holds_goodput_and_latency_at_three_times_the_capacity() {
    for (goodput, ratio) in at_3x("aimd (default)", || Box::new(Aimd::default())) {
        assert!(goodput >= 0.95, "goodput {goodput:.3}");
        assert!(ratio <= 2.5, "p99 ratio {ratio:.2}");
    }
    // The hand-set reference: a fixed limit at the 16 slots.
    for (goodput, ratio) in at_3x("fixed(16)", || Box::new(Fixed::new(16))) {
        assert!(goodput >= 0.95 && ratio <= 2.0, "fixed(16): {goodput:.3}, {ratio:.2}");
    }
}

#[tokio::test(start_paused = true)]
async fn netflix_gets_no_drop_signal_before_calls_expire() {
    for (goodput, ratio) in at_3x("aimd (netflix)", || Box::new(Aimd::netflix())) {
        assert!(goodput < 0.8, "goodput {goodput:.3}");
        assert!(ratio > 5.0, "p99 ratio {ratio:.2}");
    }
}
