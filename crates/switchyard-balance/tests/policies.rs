#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Each policy, through a whole balancer: what it picks, in what order, under what load.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Req, Svc, answers, backend, backends, completed, dispatch, grown, held, in_flight, send};
use switchyard_balance::{Backend, Balance, CompleteOnResponse, PolicyHandle, PolicyKind};
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tower::{Service, ServiceExt};

type Lb = Balance<Svc<String>, Req, CompleteOnResponse>;

fn balancer(backends: Vec<Backend<Svc<String>>>, policy: PolicyHandle) -> Lb {
    Balance::from_backends(backends).with_policy(policy).with_completion(CompleteOnResponse)
}

fn instant(names: &[&'static str]) -> Vec<Backend<Svc<String>>> {
    backends(&names.iter().map(|n| (*n, Duration::ZERO)).collect::<Vec<_>>())
}

fn weighted(spec: &[(&str, u32)]) -> Vec<Backend<Svc<String>>> {
    spec.iter()
        .map(|(name, weight)| {
            let mut b = backend(name, answers(name, Duration::ZERO));
            b.endpoint.weight = *weight;
            b
        })
        .collect()
}

async fn picks(lb: &mut Lb, n: usize) -> String {
    let mut out = String::new();
    for _ in 0..n {
        out.push_str(&send(lb).await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn round_robin_cycles_exactly() {
    let mut lb = balancer(instant(&["a", "b", "c"]), PolicyHandle::of(PolicyKind::RoundRobin, 0));
    assert_eq!(picks(&mut lb, 9).await, "abcabcabc");
    let counts = completed(&lb.board());
    assert!(counts.values().all(|&n| n == 3), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn smooth_weighted_round_robin_spreads_the_heavy_endpoint() {
    let policy = PolicyHandle::of(PolicyKind::WeightedRoundRobin, 0);
    let mut lb = balancer(weighted(&[("a", 5), ("b", 1), ("c", 1)]), policy);
    for cycle in 0..4 {
        assert_eq!(picks(&mut lb, 7).await, "aabacaa", "cycle {cycle}");
    }
    let counts = completed(&lb.board());
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [20, 4, 4]);
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_skips_weight_zero() {
    let policy = PolicyHandle::of(PolicyKind::WeightedRoundRobin, 0);
    let mut lb = balancer(weighted(&[("a", 2), ("z", 0), ("b", 1)]), policy);
    assert_eq!(picks(&mut lb, 12).await, "abaabaabaaba");
    assert_eq!(completed(&lb.board())["z"], 0);
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_with_all_weights_zero_is_round_robin() {
    let policy = PolicyHandle::of(PolicyKind::WeightedRoundRobin, 0);
    let mut lb = balancer(weighted(&[("a", 0), ("b", 0), ("c", 0)]), policy);
    assert_eq!(picks(&mut lb, 9).await, "abcabcabc");
}

#[tokio::test(start_paused = true)]
async fn least_connections_picks_the_least_loaded() {
    let mut lb = balancer(instant(&["a", "b", "c"]), PolicyHandle::of(PolicyKind::LeastConnections, 0));
    let board = lb.board();
    // Hold requests in flight, release some of them, and check every new request goes to an
    // endpoint with the fewest requests in flight.
    let mut pending: Vec<common::Held> = Vec::new();
    let release_pattern = [None, None, None, None, None, None, Some(0), Some(1), None, Some(3), None, None];
    for round in 0..4 {
        for release in release_pattern {
            if let Some(i) = release {
                let (hold, task) = pending.remove(i % pending.len());
                hold.add_permits(1);
                task.await.unwrap().unwrap();
                continue;
            }
            let ready = lb.ready().await.unwrap();
            let before = in_flight(&board);
            let min = *before.values().min().unwrap();
            let hold = Arc::new(Semaphore::new(0));
            let fut = ready.call(held(&hold));
            let after = in_flight(&board);
            let to = grown(&before, &after);
            assert_eq!(before[&to], min, "round {round}: went to {to} with {before:?}");
            pending.push((hold, tokio::spawn(fut)));
        }
    }
    for (hold, task) in pending {
        hold.add_permits(1);
        task.await.unwrap().unwrap();
    }
    assert!(in_flight(&board).values().all(|&n| n == 0));
}

#[tokio::test(start_paused = true)]
async fn least_connections_ties_take_turns() {
    let mut lb = balancer(instant(&["a", "b", "c"]), PolicyHandle::of(PolicyKind::LeastConnections, 0));
    // Every request ends before the next: every pick is a three-way tie.
    let seq = picks(&mut lb, 9).await;
    assert_eq!(seq, "abcabcabc");

    // One request held on each: the ties are at one in flight now, and still take turns.
    let hold = Arc::new(Semaphore::new(0));
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(tokio::spawn(dispatch(&mut lb, held(&hold)).await));
    }
    let before = in_flight(&lb.board());
    assert!(before.values().all(|&n| n == 1), "{before:?}");
    let seq = picks(&mut lb, 12).await;
    for name in ["a", "b", "c"] {
        assert_eq!(seq.matches(name).count(), 4, "{seq}");
    }
    hold.add_permits(3);
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// An open-loop arrival process: one request every `gap`, each spawned, so load builds up where
/// a policy sends too much. Returns each endpoint's completed count.
async fn open_loop(lb: &mut Lb, requests: usize, gap: Duration) -> std::collections::BTreeMap<String, u64> {
    let mut tasks = Vec::with_capacity(requests);
    for _ in 0..requests {
        sleep(gap).await;
        tasks.push(tokio::spawn(dispatch(lb, common::req()).await));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let counts = completed(&lb.board());
    assert_eq!(counts.values().sum::<u64>(), requests as u64);
    assert!(in_flight(&lb.board()).values().all(|&n| n == 0));
    counts
}

fn four_fast_one_slow() -> Vec<Backend<Svc<String>>> {
    let fast = Duration::from_millis(10);
    backends(&[("a", fast), ("b", fast), ("c", fast), ("d", fast), ("slow", Duration::from_millis(100))])
}

const REQUESTS: usize = 3000;
const GAP: Duration = Duration::from_millis(2);

#[tokio::test(start_paused = true)]
async fn p2c_peak_ewma_avoids_a_slow_replica() {
    let mut lb = balancer(four_fast_one_slow(), PolicyHandle::of(PolicyKind::P2cPeakEwma, 7));
    let counts = open_loop(&mut lb, REQUESTS, GAP).await;
    assert!(counts["slow"] * 10 < REQUESTS as u64, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn least_response_time_avoids_a_slow_replica() {
    let mut lb = balancer(four_fast_one_slow(), PolicyHandle::of(PolicyKind::LeastResponseTime, 7));
    let counts = open_loop(&mut lb, REQUESTS, GAP).await;
    assert!(counts["slow"] * 10 < REQUESTS as u64, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn random_does_not_avoid_a_slow_replica() {
    // The control for the two tests above: a policy blind to load gives the slow replica its
    // fair fifth, so the scenario really discriminates.
    let mut lb = balancer(four_fast_one_slow(), PolicyHandle::of(PolicyKind::Random, 7));
    let counts = open_loop(&mut lb, REQUESTS, GAP).await;
    assert!(counts["slow"] * 6 > REQUESTS as u64, "{counts:?}");
}

/// The endpoints that served an open-loop run, in the order the requests were sent.
async fn pick_sequence(kind: PolicyKind, seed: u64) -> Vec<String> {
    let spec = [
        ("a", Duration::from_millis(3)),
        ("b", Duration::from_millis(5)),
        ("c", Duration::from_millis(8)),
        ("d", Duration::from_millis(13)),
    ];
    let mut lb = balancer(backends(&spec), PolicyHandle::of(kind, seed));
    let mut tasks = Vec::new();
    for _ in 0..300 {
        sleep(Duration::from_millis(1)).await;
        tasks.push(tokio::spawn(dispatch(&mut lb, common::req()).await));
    }
    let mut names = Vec::new();
    for t in tasks {
        names.push(t.await.unwrap().unwrap());
    }
    names
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_picks() {
    for kind in [PolicyKind::P2cPeakEwma, PolicyKind::Random] {
        let first = pick_sequence(kind, 42).await;
        let again = pick_sequence(kind, 42).await;
        assert_eq!(first, again, "{kind}: same seed, same picks");
        let other = pick_sequence(kind, 43).await;
        assert_ne!(first, other, "{kind}: the seed matters");
        let distinct: std::collections::BTreeSet<&String> = first.iter().collect();
        assert!(distinct.len() > 1, "{kind}: spreads requests");
    }
}

/// Many balancers built the default way (a library balancer in every client process, or
/// several in one) do not break ties in step: each draws from a seed of its own. With one seed
/// for all, each client's first requests over idle replicas of one speed went to the same
/// replica as every other client's.
#[tokio::test(start_paused = true)]
async fn balancers_built_the_default_way_do_not_pick_in_step() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    // Each request ends before the next is sent: every pick is among eight exact ties (nothing
    // in flight, the same speed learnt everywhere).
    let mut sequences = Vec::new();
    for _ in 0..2 {
        let mut lb = Balance::from_backends(instant(&names)).with_completion(CompleteOnResponse);
        sequences.push(picks(&mut lb, 200).await);
    }
    let (a, b) = (sequences[0].as_bytes(), sequences[1].as_bytes());
    let alike = a.iter().zip(b).filter(|(x, y)| x == y).count();
    // Independent draws over eight agree about an eighth of the time (25 of 200).
    assert!(alike < 60, "{alike} of 200 picks alike:\n{}\n{}", sequences[0], sequences[1]);
    for s in &sequences {
        let distinct: std::collections::BTreeSet<char> = s.chars().collect();
        assert_eq!(distinct.len(), names.len(), "each spreads its own requests: {s}");
    }
}
