#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Edge cases of the balancer: a response future dropped before its headers, the weighted round
//! robin's state after endpoints leave, `Shared` on a multi-threaded runtime while the policy
//! switches under it, and discovery errors in a row (their back-off).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Req, Svc, answers, backend, completed, discovery, dispatch, held, in_flight, insert, remove, send, settle,
};
use switchyard_balance::discover::from_backends;
use switchyard_balance::{Balance, CompleteOnResponse, PolicyHandle, PolicyKind, Shared};
use tokio::sync::Semaphore;
use tower::ServiceExt;

type Lb = Balance<Svc<String>, Req, CompleteOnResponse>;

#[tokio::test(start_paused = true)]
async fn a_response_future_dropped_before_its_headers_ends_its_request_as_cancelled() {
    let mut lb: Lb = Balance::new(from_backends(vec![backend("a", answers("a", Duration::ZERO))]))
        .with_completion(CompleteOnResponse);
    let board = lb.board();
    let hold = Arc::new(Semaphore::new(0)); // the endpoint never answers
    let pending = dispatch(&mut lb, held(&hold)).await;
    assert_eq!(in_flight(&board)["a"], 1, "counted from the call");
    drop(pending); // the caller goes before any response
    let entry = board.snapshot().remove(0);
    assert_eq!(entry.load.in_flight, 0, "released at once");
    assert_eq!(
        (entry.load.completed, entry.load.failed, entry.load.cancelled),
        (0, 0, 1),
        "{:?}",
        entry.load
    );
    assert!(!entry.ejected);
    assert_eq!(send(&mut lb).await.unwrap(), "a", "and the endpoint is used again");
}

/// The next `n` picks of `lb`, as one string of endpoint names.
async fn picks(lb: &mut Lb, n: usize) -> String {
    let mut out = String::new();
    for _ in 0..n {
        out.push_str(&send(lb).await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_after_endpoints_leave_keeps_the_weights_of_those_left() {
    let (mut tx, rx) = discovery();
    let mut lb: Lb = Balance::new(rx)
        .with_policy(PolicyHandle::of(PolicyKind::WeightedRoundRobin, 0))
        .with_completion(CompleteOnResponse);
    for (name, weight) in [("a", 2), ("b", 1), ("c", 5), ("d", 5)] {
        let mut b = backend(name, answers(name, Duration::ZERO));
        b.endpoint.weight = weight;
        insert(&mut tx, b);
    }
    settle().await;
    // Part of a cycle, so that every endpoint holds a current weight when two of them leave.
    let before = picks(&mut lb, 7).await;
    assert_eq!(before.len(), 7);
    remove(&mut tx, "c");
    remove(&mut tx, "d");
    settle().await;
    // From here on a and b alone: every cycle of 3 picks holds a twice and b once, from the
    // first pick after the removal (no run of one endpoint longer than its weight).
    let after = picks(&mut lb, 30).await;
    for (i, cycle) in after.as_bytes().chunks(3).enumerate() {
        let a = cycle.iter().filter(|&&c| c == b'a').count();
        assert_eq!(a, 2, "cycle {i} of {after:?} (before the removal: {before:?})");
    }
    // An endpoint that comes back starts afresh with its weight, not with the state it left.
    let mut c = backend("c", answers("c", Duration::ZERO));
    c.endpoint.weight = 1;
    insert(&mut tx, c);
    settle().await;
    let again = picks(&mut lb, 40).await;
    for (i, cycle) in again.as_bytes().chunks(4).enumerate() {
        let count = |name: u8| cycle.iter().filter(|&&c| c == name).count();
        assert_eq!((count(b'a'), count(b'b'), count(b'c')), (2, 1, 1), "cycle {i} of {again:?}");
    }
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_on_two_threads_while_the_policy_switches_fails_no_request_and_counts_each_once() {
    let mut list: Vec<_> = (0..5)
        .map(|i| backend(&format!("e{i}"), answers(&format!("e{i}"), Duration::from_micros(100 * (i + 1)))))
        .collect();
    for (i, b) in list.iter_mut().enumerate() {
        b.endpoint.weight = 1 + i as u32 % 3;
    }
    let policy = PolicyHandle::of(PolicyKind::RoundRobin, 0);
    let lb: Lb =
        Balance::new(from_backends(list)).with_policy(policy.clone()).with_completion(CompleteOnResponse);
    let board = lb.board();
    let shared = Shared::new(lb);
    let (callers, each) = (8, 150);
    let done = Arc::new(AtomicBool::new(false));
    let switches = Arc::new(AtomicUsize::new(0));
    let switcher = {
        let (done, switches) = (done.clone(), switches.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !done.load(Ordering::Acquire) {
                policy.set(PolicyKind::ALL[i % PolicyKind::ALL.len()].build(i as u64));
                switches.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::task::yield_now().await;
            }
        })
    };
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let shared = shared.clone();
            tokio::spawn(async move {
                for _ in 0..each {
                    let call = tokio::spawn(shared.clone().oneshot(common::req()));
                    call.await.unwrap().expect("every request succeeds");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let switched_during = switches.load(Ordering::Relaxed);
    done.store(true, Ordering::Release);
    switcher.await.unwrap();
    assert!(switched_during > 0, "the policy switched while requests ran");
    assert_eq!(completed(&board).values().sum::<u64>(), (callers * each) as u64, "each request counted once");
    assert!(in_flight(&board).values().all(|&n| n == 0), "{:?}", in_flight(&board));
    assert!(board.snapshot().iter().all(|e| e.load.failed == 0 && e.load.cancelled == 0));
}

#[tokio::test(start_paused = true)]
async fn repeated_discovery_errors_back_off_doubling_to_five_seconds_and_a_change_resets_it() {
    use tower::discover::Change;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<_, tower::BoxError>>(16);
    let mut lb: Lb = Balance::new(rx).with_completion(CompleteOnResponse);
    let a = backend("a", answers("a", Duration::ZERO));
    tx.try_send(Ok(Change::Insert(a.endpoint.id.clone(), a))).unwrap();
    for _ in 0..7 {
        tx.try_send(Err("the source is down".into())).unwrap();
    }
    let b = backend("b", answers("b", Duration::ZERO));
    tx.try_send(Ok(Change::Insert(b.endpoint.id.clone(), b))).unwrap();
    settle().await;
    assert_eq!(lb.len(), 1);
    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s, then the cap: 5 s. Requests are served throughout.
    let backoff = Duration::from_millis(100 + 200 + 400 + 800 + 1600 + 3200 + 5000);
    // Sleeping (not `advance`) lets the paused clock stop at each back-off timer in turn.
    tokio::time::sleep(backoff - Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(lb.len(), 1, "still backing off");
    assert_eq!(send(&mut lb).await.unwrap(), "a");
    tokio::time::sleep(Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(lb.len(), 2, "the change after the errors arrives once they are waited out");

    // The change reset the back-off: one more error costs 100 ms again, not 5 s.
    tx.try_send(Err("down again".into())).unwrap();
    let c = backend("c", answers("c", Duration::ZERO));
    tx.try_send(Ok(Change::Insert(c.endpoint.id.clone(), c))).unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(99)).await;
    settle().await;
    assert_eq!(lb.len(), 2);
    tokio::time::sleep(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(lb.len(), 3);
    drop(tx);
}
