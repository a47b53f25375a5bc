#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The pool of endpoints: discovery changes under load, policy switches under load, outlier
//! ejection and return, the wait for a first endpoint, and the LoadBoard.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    Held, Hold, Req, Svc, answers, backend, backends, completed, discovery, dispatch, held, in_flight,
    insert, remove, req, send, settle,
};
use futures::channel::mpsc;
use switchyard_balance::discover::from_backends;
use switchyard_balance::{
    Backend, Balance, CompleteOnResponse, DEFAULT_NO_ENDPOINT_WAIT, LoadBoard, OutlierConfig, PolicyHandle,
    PolicyKind, Shared,
};
use switchyard_core::{EndpointId, ErrorKind, FinalAttempt, RequestSize};
use tokio::sync::Semaphore;
use tokio::time::{Instant, advance, sleep};
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceExt};

type Lb = Balance<Svc<String>, Req, CompleteOnResponse>;

/// The kind of a balancer error.
fn kind(err: &BoxError) -> ErrorKind {
    err.downcast_ref::<switchyard_core::Error>().expect("a typed error").kind().clone()
}

fn no_endpoint(err: &BoxError) -> bool {
    kind(err) == ErrorKind::NoEndpoint
}

fn dynamic() -> (mpsc::Sender<common::ChangeOf<Svc<String>>>, Lb) {
    let (tx, rx) = discovery();
    (tx, Balance::new(rx).with_completion(CompleteOnResponse))
}

/// An endpoint that answers with its name, or fails while `failing` is set; it waits for a
/// [`Hold`] first if the request has one.
fn flaky(name: &str, failing: &Arc<AtomicBool>) -> Backend<Svc<String>> {
    let (label, failing) = (name.to_string(), failing.clone());
    let service = BoxCloneService::new(tower::service_fn(move |req: Req| {
        let (label, failing) = (label.clone(), failing.clone());
        let hold = req.extensions().get::<Hold>().cloned();
        async move {
            if let Some(Hold(hold)) = hold {
                hold.acquire().await?.forget();
            }
            if failing.load(Ordering::Relaxed) {
                Err(BoxError::from(format!("{label} is down")))
            } else {
                Ok(label)
            }
        }
    }));
    backend(name, service)
}

fn flag(on: bool) -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(on))
}

fn ejected(board: &LoadBoard) -> Vec<String> {
    board.snapshot().into_iter().filter(|e| e.ejected).map(|e| e.endpoint.id.to_string()).collect()
}

/// Requests an endpoint served, successfully or not.
fn count(board: &LoadBoard, id: &str) -> u64 {
    let load = board.get(&id.into()).expect("on the board").load;
    load.completed + load.failed
}

// ---- switching the policy -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn switching_the_policy_under_load_fails_no_request() {
    let spec = [20, 30, 40, 50, 60].map(Duration::from_millis);
    let mut list: Vec<_> = spec
        .iter()
        .enumerate()
        .map(|(i, d)| backend(&format!("e{i}"), answers(&format!("e{i}"), *d)))
        .collect();
    for (i, b) in list.iter_mut().enumerate() {
        b.endpoint.weight = i as u32 % 3;
    }
    let policy = PolicyHandle::of(PolicyKind::RoundRobin, 0);
    let mut lb =
        Balance::new(from_backends(list)).with_policy(policy.clone()).with_completion(CompleteOnResponse);
    let board = lb.board();
    let requests = 2100;
    let mut tasks = Vec::new();
    let mut peak = 0;
    for i in 0..requests {
        if i % 3 == 0 {
            let kind = PolicyKind::ALL[(i / 3) % PolicyKind::ALL.len()];
            policy.set(kind.build(i as u64));
        }
        sleep(Duration::from_millis(1)).await;
        tasks.push(tokio::spawn(dispatch(&mut lb, req()).await));
        peak = peak.max(in_flight(&board).values().sum::<u32>());
    }
    assert!(peak >= 20, "requests overlapped the switches: peak {peak} in flight");
    for t in tasks {
        t.await.unwrap().expect("every request succeeds");
    }
    assert_eq!(completed(&board).values().sum::<u64>(), requests as u64);
    assert!(in_flight(&board).values().all(|&n| n == 0), "{:?}", in_flight(&board));
    assert!(board.snapshot().iter().all(|e| e.load.failed == 0));
}

// ---- discovery --------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_removed_endpoint_finishes_its_requests_and_gets_no_more() {
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0));
    let board = lb.board();
    for b in backends(&[("a", Duration::ZERO), ("b", Duration::ZERO), ("c", Duration::ZERO)]) {
        insert(&mut tx, b);
    }
    let hold = Arc::new(Semaphore::new(0));
    let mut pending = Vec::new();
    for _ in 0..6 {
        pending.push(tokio::spawn(dispatch(&mut lb, held(&hold)).await));
    }
    let b_state = board.state(&EndpointId::new("b")).expect("b is on the board");
    assert_eq!(b_state.in_flight(), 2);

    let generation = lb.generation();
    remove(&mut tx, "b");
    settle().await;
    assert_eq!(lb.len(), 2);
    assert_eq!(lb.generation(), generation + 1, "a removal moves the membership generation");
    let b = board.get(&"b".into()).expect("b stays on the board while its requests run");
    assert!(b.draining && b.load.in_flight == 2, "{b:?}");
    assert_eq!(board.len(), 3);

    for _ in 0..12 {
        assert_ne!(send(&mut lb).await.unwrap(), "b", "no new request goes to a removed endpoint");
    }
    assert_eq!(b_state.in_flight(), 2, "b's requests are still in flight");

    hold.add_permits(6);
    let mut served = Vec::new();
    for p in pending {
        served.push(p.await.unwrap().expect("requests in flight on a removed endpoint succeed"));
    }
    assert_eq!(served.iter().filter(|s| *s == "b").count(), 2);
    assert_eq!(b_state.in_flight(), 0);
    assert_eq!(b_state.outcomes(), (2, 0));
    assert!(board.get(&"b".into()).is_none(), "drained, b left the board");
    assert_eq!(board.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_idle_removed_endpoint_leaves_the_board_at_once() {
    let (mut tx, mut lb) = dynamic();
    let board = lb.board();
    insert(&mut tx, backend("a", answers("a", Duration::ZERO)));
    insert(&mut tx, backend("b", answers("b", Duration::ZERO)));
    settle().await;
    assert_eq!(board.len(), 2, "discovery changes arrive with no request flowing");
    remove(&mut tx, "b");
    settle().await;
    assert_eq!(board.len(), 1, "no request ever flowed");
    assert_eq!(send(&mut lb).await.unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn reinserting_a_known_id_and_address_keeps_its_load_in_place() {
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0));
    let board = lb.board();
    insert(&mut tx, backend("a", answers("old", Duration::from_millis(40))));
    assert_eq!(send(&mut lb).await.unwrap(), "old");
    let hold = Arc::new(Semaphore::new(0));
    let pending = tokio::spawn(dispatch(&mut lb, held(&hold)).await);
    let state = board.state(&"a".into()).unwrap();
    let (generation, ewma) = (lb.generation(), state.latency_ewma(Instant::now()));
    assert_eq!((state.in_flight(), ewma.is_some()), (1, true));

    // The same id and address again (a DNS or EndpointSlice refresh), with a new weight.
    let mut again = backend("a", answers("new", Duration::ZERO));
    again.endpoint = again.endpoint.with_weight(3);
    insert(&mut tx, again);
    settle().await;
    let now = board.state(&"a".into()).unwrap();
    assert!(Arc::ptr_eq(&state, &now), "the same state, updated in place");
    assert_eq!((now.in_flight(), now.latency_ewma(Instant::now()), now.weight()), (1, ewma, 3));
    assert_eq!(lb.generation(), generation, "no membership change");
    assert_eq!(send(&mut lb).await.unwrap(), "new", "the new service serves");
    hold.add_permits(1);
    assert_eq!(pending.await.unwrap().unwrap(), "old");
    assert_eq!(count(&board, "a"), 3);

    // Another address under the same id: a new endpoint.
    insert(&mut tx, common::backend_at("a", "http://elsewhere:9001", answers("moved", Duration::ZERO)));
    settle().await;
    assert_eq!(lb.generation(), generation + 1);
    assert_eq!(send(&mut lb).await.unwrap(), "moved");
    assert_eq!(count(&board, "a"), 1, "a fresh state for the new endpoint");
}

/// An endpoint that answers with its name after 10 µs per prompt token of the request (an
/// engine's prefill: its time grows with the work).
fn prefills(name: &str) -> Svc<String> {
    let name = name.to_string();
    BoxCloneService::new(tower::service_fn(move |req: Req| {
        let name = name.clone();
        let tokens = req.extensions().get::<RequestSize>().map_or(1, |s| s.prompt_tokens);
        async move {
            sleep(Duration::from_micros(10 * u64::from(tokens))).await;
            Ok::<_, BoxError>(name)
        }
    }))
}

fn sized(prompt_tokens: u32) -> Req {
    let mut r = req();
    r.extensions_mut().insert(RequestSize::new(prompt_tokens, 1));
    r
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_added_to_a_pool_of_engines_counts_their_work_from_its_first_answer() {
    let (mut tx, mut lb) = dynamic();
    insert(&mut tx, backend("a", prefills("a")));
    settle().await;
    // One at a time, sizes 500 to 1,500: a's no-load answers show its time grows with the work.
    for i in 0..12u32 {
        dispatch(&mut lb, sized(500 + i * 97 % 1000)).await.await.unwrap();
    }
    let board = lb.board();
    let a = board.state(&"a".into()).unwrap();
    assert_eq!(a.counting_verdict(), Some(false), "a counts the work");
    insert(&mut tx, backend("b", prefills("b")));
    settle().await;
    let b = board.state(&"b".into()).unwrap();
    assert_eq!(b.counting_verdict(), None);
    let mut sent = 0;
    while count(&board, "b") == 0 {
        assert!(sent < 8, "b gets a request");
        dispatch(&mut lb, sized(800)).await.await.unwrap();
        sent += 1;
    }
    // Its first answer cannot judge; it counts as its pool does, not every request alike (a
    // billion units a request, which would cost it far above a after one answer).
    assert_eq!(b.counting_verdict(), None);
    assert!(
        b.min_request_work() < switchyard_balance::capacity::PER_REQUEST_WORK,
        "{}",
        b.min_request_work()
    );
    assert!(b.request_work(800.0) <= 800.0, "an 800-token prompt counts for its size");
}

// ---- no endpoints -----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn with_no_endpoint_requests_fail_after_the_default_wait() {
    let (_tx, mut lb) = dynamic();
    let start = Instant::now();
    let ready = lb.ready().await.unwrap();
    assert_eq!(start.elapsed(), DEFAULT_NO_ENDPOINT_WAIT);
    let err = ready.call(req()).await.unwrap_err();
    assert!(no_endpoint(&err), "{err}");
    assert_eq!(err.to_string(), "no endpoint available");
    // Failing fast from now on: no second wait.
    let again = Instant::now();
    let err = send(&mut lb).await.unwrap_err();
    assert!(no_endpoint(&err));
    assert_eq!(again.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_a_first_endpoint_is_configurable() {
    let (_tx, lb) = dynamic();
    let mut lb = lb.with_no_endpoint_wait(Duration::from_millis(250));
    let start = Instant::now();
    let err = send(&mut lb).await.unwrap_err();
    assert!(no_endpoint(&err), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_inserted_during_the_wait_is_used() {
    let (mut tx, mut lb) = dynamic();
    tokio::spawn(async move {
        sleep(Duration::from_secs(1)).await;
        insert(&mut tx, backend("late", answers("late", Duration::ZERO)));
        // Keep discovery open.
        sleep(Duration::from_secs(3600)).await;
    });
    let start = Instant::now();
    assert_eq!(send(&mut lb).await.unwrap(), "late");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_inserted_after_the_wait_is_used() {
    let (mut tx, mut lb) = dynamic();
    assert!(no_endpoint(&send(&mut lb).await.unwrap_err()));
    insert(&mut tx, backend("late", answers("late", Duration::ZERO)));
    settle().await;
    assert_eq!(send(&mut lb).await.unwrap(), "late");
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_is_removed_requests_fail_with_no_endpoints() {
    let (mut tx, mut lb) = dynamic();
    insert(&mut tx, backend("a", answers("a", Duration::ZERO)));
    assert_eq!(send(&mut lb).await.unwrap(), "a");
    remove(&mut tx, "a");
    settle().await;
    let start = Instant::now();
    let err = send(&mut lb).await.unwrap_err();
    assert!(no_endpoint(&err), "{err}");
    assert_eq!(start.elapsed(), DEFAULT_NO_ENDPOINT_WAIT, "waits for discovery again");
}

#[tokio::test(start_paused = true)]
async fn an_empty_finished_discovery_fails_at_once() {
    let mut lb =
        Balance::new(from_backends(Vec::<Backend<Svc<String>>>::new())).with_completion(CompleteOnResponse);
    let start = Instant::now();
    assert!(no_endpoint(&send(&mut lb).await.unwrap_err()));
    assert_eq!(start.elapsed(), Duration::ZERO, "nothing more will come");
}

// ---- outlier ejection -------------------------------------------------------------------------

fn outlier(consecutive_failures: u32, max_ejected_share: f64) -> OutlierConfig {
    OutlierConfig::default()
        .with_consecutive_failures(consecutive_failures)
        .with_base_ejection(Duration::from_secs(10))
        .with_max_ejection(Duration::from_secs(300))
        .with_max_ejected_share(max_ejected_share)
}

/// Sends `n` requests made by `request` one after the other; returns how many failed.
async fn failures_of(lb: &mut Lb, n: usize, request: fn() -> Req) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        if dispatch(lb, request()).await.await.is_err() {
            failed += 1;
        }
    }
    failed
}

/// Sends `n` requests one after the other; returns how many failed.
async fn failures(lb: &mut Lb, n: usize) -> usize {
    failures_of(lb, n, common::req).await
}

/// Round robin over `a` and `b`, which answer, and `bad`, which fails while the flag returned
/// is set (it starts set), ejected after `consecutive_failures` in a row.
fn pool_with_a_failing_endpoint(
    consecutive_failures: u32,
) -> (mpsc::Sender<common::ChangeOf<Svc<String>>>, Lb, Arc<AtomicBool>) {
    let (mut tx, lb) = dynamic();
    let lb = lb
        .with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0))
        .with_outlier(outlier(consecutive_failures, 0.5));
    let (up, down) = (flag(false), flag(true));
    for b in [flaky("a", &up), flaky("b", &up), flaky("bad", &down)] {
        insert(&mut tx, b);
    }
    (tx, lb, down)
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_and_returns_after_its_ejection_time() {
    let (_tx, mut lb, down) = pool_with_a_failing_endpoint(3);
    let board = lb.board();
    // Round robin: `bad` fails every third request; its third failure ejects it.
    assert_eq!(failures(&mut lb, 9).await, 3);
    assert_eq!(ejected(&board), ["bad"]);
    assert_eq!(board.get(&"bad".into()).unwrap().load.failed, 3);

    assert_eq!(failures(&mut lb, 30).await, 0, "an ejected endpoint gets no traffic");
    assert_eq!(count(&board, "bad"), 3);

    advance(Duration::from_secs(10)).await;
    assert!(ejected(&board).is_empty(), "the ejection ran out");
    assert!(failures(&mut lb, 6).await > 0, "back in rotation");
    // Still failing: the second ejection lasts twice as long.
    failures(&mut lb, 9).await;
    assert_eq!(ejected(&board), ["bad"]);
    let served = count(&board, "bad");
    advance(Duration::from_secs(10)).await;
    assert_eq!(failures(&mut lb, 30).await, 0, "still ejected after one base ejection time");
    assert_eq!(count(&board, "bad"), served);
    advance(Duration::from_secs(10)).await;

    down.store(false, Ordering::Relaxed);
    assert_eq!(failures(&mut lb, 30).await, 0);
    assert_eq!(count(&board, "bad") - served, 10, "a full share again");
    assert!(ejected(&board).is_empty());
}

/// A request marked as a retry layer marks an attempt no retry can save.
fn final_attempt() -> Req {
    let mut req = common::req();
    req.extensions_mut().insert(FinalAttempt);
    req
}

/// Sends `n` final attempts one after the other; returns how many failed.
async fn final_failures(lb: &mut Lb, n: usize) -> usize {
    failures_of(lb, n, final_attempt).await
}

#[tokio::test(start_paused = true)]
async fn an_attempt_no_retry_can_save_stays_off_an_endpoint_whose_last_call_failed() {
    let (_tx, mut lb, down) = pool_with_a_failing_endpoint(5);
    let board = lb.board();
    assert_eq!(failures(&mut lb, 3).await, 1, "round robin: `bad` fails its first request");
    assert_eq!(final_failures(&mut lb, 30).await, 0, "then takes no final attempt");
    assert_eq!(count(&board, "bad"), 1);
    // Unmarked requests (those a retry can save, or any without a retry layer) still try it.
    assert_eq!(failures(&mut lb, 3).await, 1);
    assert_eq!(final_failures(&mut lb, 30).await, 0);
    assert_eq!(count(&board, "bad"), 2);
    assert!(ejected(&board).is_empty(), "two failures of five: not ejected");

    // A success there (of a request sent after the failures) lifts the suspicion.
    down.store(false, Ordering::Relaxed);
    assert_eq!(failures(&mut lb, 3).await, 0);
    assert_eq!(final_failures(&mut lb, 30).await, 0);
    assert_eq!(count(&board, "bad"), 3 + 10, "a full share of final attempts again");

    // Without a call to try it, the suspicion lasts the outlier detector's base ejection time.
    down.store(true, Ordering::Relaxed);
    assert_eq!(failures(&mut lb, 3).await, 1);
    advance(Duration::from_secs(9)).await;
    assert_eq!(final_failures(&mut lb, 30).await, 0);
    advance(Duration::from_secs(2)).await;
    assert_eq!(final_failures(&mut lb, 3).await, 1, "tried again after 10 s");
}

#[tokio::test(start_paused = true)]
async fn a_final_attempt_goes_to_a_suspect_endpoint_when_every_endpoint_is_suspect() {
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0)).with_outlier(outlier(5, 0.5));
    let down = flag(true);
    for b in [flaky("a", &down), flaky("b", &down)] {
        insert(&mut tx, b);
    }
    assert_eq!(failures(&mut lb, 2).await, 2);
    assert_eq!(final_failures(&mut lb, 2).await, 2, "sent on, not refused");
}

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_trailers_eject_through_http_completion() {
    let grpc = |name: &str, status: u32| {
        let service: Svc<http::Response<common::Body>> =
            BoxCloneService::new(tower::service_fn(move |_req: Req| async move {
                Ok::<_, BoxError>(common::grpc_response(b"msg", common::trailers(status, None)))
            }));
        backend(name, service)
    };
    let mut lb = Balance::new(from_backends([grpc("a", 0), grpc("bad", 14)]))
        .with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0))
        .with_outlier(outlier(2, 0.5));
    let board = lb.board();
    for _ in 0..20 {
        let response = dispatch(&mut lb, req()).await.await.unwrap();
        common::drain(response.into_body()).await;
    }
    assert_eq!(ejected(&board), ["bad"]);
    assert_eq!(board.get(&"bad".into()).unwrap().load.failed, 2);
    assert_eq!(count(&board, "a"), 18);
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_max_ejected_share_is_ejected() {
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0)).with_outlier(outlier(2, 0.5));
    let board = lb.board();
    let (up, down) = (flag(false), flag(true));
    for b in [flaky("a", &up), flaky("x", &down), flaky("y", &down), flaky("z", &down)] {
        insert(&mut tx, b);
    }
    for _ in 0..60 {
        let _ = send(&mut lb).await;
        assert!(ejected(&board).len() <= 2, "{:?}", ejected(&board));
    }
    assert_eq!(ejected(&board).len(), 2, "half of four");
    let unejected =
        board.snapshot().into_iter().find(|e| !e.ejected && e.endpoint.id.as_str() != "a").unwrap();
    assert!(unejected.load.failed > 2, "the third failing endpoint keeps serving (and failing)");
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_is_ejected_the_balancer_still_serves() {
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0)).with_outlier(outlier(2, 1.0));
    let board = lb.board();
    let down = flag(true);
    for b in [flaky("a", &down), flaky("b", &down)] {
        insert(&mut tx, b);
    }
    assert_eq!(failures(&mut lb, 4).await, 4);
    assert_eq!(ejected(&board), ["a", "b"]);
    down.store(false, Ordering::Relaxed);
    // Panic mode: every endpoint is ejected, so the policy picks among all of them.
    let served: Vec<String> = [send(&mut lb).await.unwrap(), send(&mut lb).await.unwrap()].into();
    assert_eq!(served, ["a", "b"]);
    assert_eq!(ejected(&board), ["a", "b"], "still ejected, still serving");
}

#[tokio::test(start_paused = true)]
async fn removing_an_endpoint_whose_ejection_ran_out_frees_its_slot() {
    // Four endpoints and a share of 0.5: two may be ejected; after one leaves, one of three.
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0)).with_outlier(outlier(1, 0.5));
    let board = lb.board();
    let (up, x_down, y_down) = (flag(false), flag(true), flag(false));
    for b in [flaky("a", &up), flaky("b", &up), flaky("x", &x_down), flaky("y", &y_down)] {
        insert(&mut tx, b);
    }
    failures(&mut lb, 4).await;
    assert_eq!(ejected(&board), ["x"]);
    // x's ejection runs out while no request comes, then discovery removes it.
    advance(Duration::from_secs(11)).await;
    remove(&mut tx, "x");
    settle().await;
    y_down.store(true, Ordering::Relaxed);
    failures(&mut lb, 6).await;
    assert_eq!(ejected(&board), ["y"], "x's ejection slot was given back when it left");
}

#[tokio::test(start_paused = true)]
async fn failures_on_a_removed_endpoint_take_no_ejection_slot() {
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0)).with_outlier(outlier(1, 0.5));
    let board = lb.board();
    let (up, gone_down, y_down) = (flag(false), flag(true), flag(false));
    for b in [flaky("a", &up), flaky("b", &up), flaky("gone", &gone_down), flaky("y", &y_down)] {
        insert(&mut tx, b);
    }
    // Requests in flight on `gone` when it is removed (its process is shutting down)...
    let hold = Arc::new(Semaphore::new(0));
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(tokio::spawn(dispatch(&mut lb, held(&hold)).await));
    }
    assert_eq!(in_flight(&board)["gone"], 1);
    remove(&mut tx, "gone");
    settle().await;
    // ...fail afterwards.
    hold.add_permits(4);
    let mut failed = 0;
    for p in pending {
        failed += usize::from(p.await.unwrap().is_err());
    }
    assert_eq!(failed, 1);
    // Three endpoints, a share of 0.5: one may be ejected, and `y` is the one that fails now.
    y_down.store(true, Ordering::Relaxed);
    failures(&mut lb, 6).await;
    assert_eq!(ejected(&board), ["y"], "a departed endpoint holds no ejection slot");
}

/// Lets the `i`-th held request go, and waits for its outcome.
async fn release(pending: &mut [Held], i: usize) -> Result<String, BoxError> {
    let (hold, task) = &mut pending[i];
    hold.add_permits(1);
    task.await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_an_ejection_ran_out_takes_no_second_slot() {
    // Four endpoints and a share of 0.5: two ejection slots.
    let (mut tx, lb) = dynamic();
    let mut lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0)).with_outlier(outlier(1, 0.5));
    let board = lb.board();
    let (a_down, b_down, x_down, up) = (flag(false), flag(false), flag(true), flag(false));
    for b in [flaky("a", &a_down), flaky("b", &b_down), flaky("x", &x_down), flaky("y", &up)] {
        insert(&mut tx, b);
    }
    // Two long requests on each endpoint (round robin: a b x y a b x y).
    let mut pending = Vec::new();
    for _ in 0..8 {
        let hold = Arc::new(Semaphore::new(0));
        pending.push((hold.clone(), tokio::spawn(dispatch(&mut lb, held(&hold)).await)));
    }
    assert!(release(&mut pending, 2).await.is_err());
    assert_eq!(ejected(&board), ["x"]);
    // x's ejection runs out; before any request comes, its other request fails too.
    advance(Duration::from_secs(11)).await;
    assert!(release(&mut pending, 6).await.is_err());
    assert_eq!(ejected(&board), ["x"], "ejected again, for longer");
    for i in [0, 1, 3, 4, 5, 7] {
        release(&mut pending, i).await.unwrap();
    }
    // The second ejection runs out and x returns, healthy.
    advance(Duration::from_secs(21)).await;
    x_down.store(false, Ordering::Relaxed);
    assert_eq!(failures(&mut lb, 8).await, 0);
    assert!(ejected(&board).is_empty());
    // Both slots are free: a and b can both be ejected.
    a_down.store(true, Ordering::Relaxed);
    b_down.store(true, Ordering::Relaxed);
    failures(&mut lb, 4).await;
    assert_eq!(ejected(&board), ["a", "b"]);
}

// ---- the LoadBoard ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_board_shows_every_endpoints_load_sorted_and_shared_between_balancers() {
    let board = LoadBoard::new();
    let (up, down) = (flag(false), flag(true));
    let mut first = Balance::new(from_backends([flaky("c", &down), flaky("a", &up)]))
        .with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0))
        .with_completion(CompleteOnResponse)
        .with_board(board.clone());
    let mut second = Balance::new(from_backends([flaky("b", &up)]))
        .with_completion(CompleteOnResponse)
        .with_board(board.clone());
    let err = send(&mut first).await.unwrap_err();
    assert_eq!(err.to_string(), "endpoint \"c\": connection failed during the call");
    assert_eq!(std::error::Error::source(&*err).map(ToString::to_string).as_deref(), Some("c is down"));
    assert_eq!(send(&mut first).await.unwrap(), "a");
    assert_eq!(kind(&send(&mut first).await.unwrap_err()), ErrorKind::Upstream);
    let hold = Arc::new(Semaphore::new(0));
    let held_b = tokio::spawn(dispatch(&mut second, held(&hold)).await);
    tokio::task::yield_now().await;

    let snapshot = board.snapshot();
    let ids: Vec<&str> = snapshot.iter().map(|e| e.endpoint.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"], "sorted by id, both balancers' endpoints");
    let loads: Vec<(u32, u64, u64)> =
        snapshot.iter().map(|e| (e.load.in_flight, e.load.completed, e.load.failed)).collect();
    assert_eq!(loads, [(0, 1, 0), (1, 0, 0), (0, 0, 2)], "failures are not completions");
    assert!(snapshot[0].load.latency_ewma.is_some() && snapshot[1].load.latency_ewma.is_none());
    assert_eq!(snapshot[1].endpoint.address, "http://b:9001");
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json[2]["load"]["failed"], 2);
    assert_eq!(json[0]["ejected"], false);

    hold.add_permits(1);
    assert_eq!(held_b.await.unwrap().unwrap(), "b");
    assert_eq!(board.get(&"b".into()).unwrap().load.in_flight, 0);
    assert!(board.len() == 3 && first.board().len() == 3 && second.board().len() == 3);
}

#[tokio::test(start_paused = true)]
async fn from_backends_puts_endpoints_on_the_board_before_any_request() {
    use switchyard_balance::{Backend, Balance, CompleteOnResponse, LoadBoard};
    use switchyard_core::Endpoint;
    let backends = ["b", "a"].map(|id| {
        Backend::new(
            Endpoint::new(id, "http://x"),
            tower::service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) }),
        )
    });
    let shared = LoadBoard::new();
    let lb: Balance<_, http::Request<()>, _> =
        Balance::from_backends(backends).with_board(shared.clone()).with_completion(CompleteOnResponse);
    let ids = |board: &LoadBoard| -> Vec<String> {
        board.snapshot().iter().map(|e| e.endpoint.id.to_string()).collect()
    };
    assert_eq!(ids(&shared), ["a", "b"], "on the shared board, sorted, before any poll");
    assert_eq!(lb.len(), 2);

    // Another pool on the same board; dropping the first takes only its own endpoints away.
    let other: Balance<_, http::Request<()>, _> = Balance::from_backends([Backend::new(
        Endpoint::new("c", "http://y"),
        tower::service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) }),
    )])
    .with_board(shared.clone());
    assert_eq!(ids(&shared), ["a", "b", "c"]);
    drop(lb);
    assert_eq!(ids(&shared), ["c"], "a dropped balancer leaves nothing behind");
    drop(other);
    assert!(shared.is_empty());
}

// ---- Shared: one balancer, many tasks -------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shared_callers_all_wait_for_a_first_endpoint_and_all_get_it() {
    let (mut tx, lb) = dynamic();
    let shared = Shared::new(lb);
    // Five tasks call before any endpoint exists: each must be woken when one arrives, not only
    // the one whose waker the balancer's timer holds.
    let calls: Vec<_> = (0..5).map(|_| tokio::spawn(shared.clone().oneshot(req()))).collect();
    sleep(Duration::from_millis(500)).await;
    insert(&mut tx, backend("late", answers("late", Duration::ZERO)));
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), "late");
    }
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn shared_callers_in_flight_at_once_are_counted_on_one_board() {
    let balancer = Balance::new(from_backends(backends(&[("a", Duration::ZERO), ("b", Duration::ZERO)])))
        .with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0))
        .with_completion(CompleteOnResponse);
    let board = balancer.board();
    let shared = Shared::new(balancer);
    let hold = Arc::new(Semaphore::new(0));
    let calls: Vec<_> = (0..10).map(|_| tokio::spawn(shared.clone().oneshot(held(&hold)))).collect();
    sleep(Duration::from_millis(1)).await;
    // All ten reached their endpoints through the one balancer, split by its round robin.
    assert_eq!(in_flight(&board), [("a".to_string(), 5), ("b".to_string(), 5)].into());
    hold.add_permits(10);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(completed(&board), [("a".to_string(), 5), ("b".to_string(), 5)].into());
}

// ---- membership, policies that refuse, outlier settings after from_backends ------------------

/// Records the membership generation and member count of every pick; picks `pick` (or none).
#[derive(Debug)]
struct Probe {
    pick: Option<usize>,
    seen: std::sync::Mutex<Vec<(u64, usize, usize)>>,
}

impl switchyard_balance::Policy for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn pick(
        &self,
        _request: &switchyard_balance::RequestInfo<'_>,
        endpoints: &switchyard_balance::Endpoints<'_>,
    ) -> Option<usize> {
        let eligible =
            (0..endpoints.members().len()).filter(|&i| endpoints.eligible_index(i).is_some()).count();
        self.seen.lock().unwrap().push((endpoints.generation(), endpoints.members().len(), eligible));
        self.pick
    }
}

fn probe(pick: Option<usize>) -> Arc<Probe> {
    Arc::new(Probe { pick, seen: std::sync::Mutex::default() })
}

#[tokio::test(start_paused = true)]
async fn the_membership_generation_moves_on_insert_and_remove_not_on_ejection() {
    let (mut tx, lb) = dynamic();
    let policy = probe(Some(0));
    let mut lb = lb.with_policy(PolicyHandle::new(policy.clone())).with_outlier(outlier(1, 0.5));
    let (up, down) = (flag(false), flag(true));
    insert(&mut tx, flaky("bad", &down));
    insert(&mut tx, flaky("a", &up));
    settle().await;
    assert_eq!(lb.generation(), 2);
    assert!(send(&mut lb).await.is_err(), "the probe picks `bad` first");
    // `bad` is ejected: still a member, no longer eligible, same generation.
    assert_eq!(send(&mut lb).await.unwrap(), "a");
    remove(&mut tx, "a");
    settle().await;
    let _ = send(&mut lb).await;
    let seen = policy.seen.lock().unwrap().clone();
    assert_eq!(seen, [(2, 2, 2), (2, 2, 1), (3, 1, 1)], "(generation, members, eligible) per pick");
}

#[tokio::test(start_paused = true)]
async fn a_policy_that_finds_none_fit_fails_the_request_clearly() {
    for pick in [None, Some(7)] {
        let mut lb = Balance::from_backends(backends(&[("a", Duration::ZERO)]))
            .with_name("llama")
            .with_policy(PolicyHandle::new(probe(pick)))
            .with_completion(CompleteOnResponse);
        let err = send(&mut lb).await.unwrap_err();
        assert_eq!(kind(&err), ErrorKind::NoneFits, "{pick:?}");
        let status = switchyard_core::status_of(&*err);
        assert_eq!(status.code, switchyard_core::Code::Unavailable);
        assert_eq!(status.message, "pool \"llama\": no endpoint fits the request");
        assert_eq!(lb.board().get(&"a".into()).unwrap().load.in_flight, 0, "nothing was sent");
    }
}

#[tokio::test(start_paused = true)]
async fn outlier_settings_given_after_from_backends_eject() {
    let (up, down) = (flag(false), flag(true));
    let mut lb = Balance::from_backends([flaky("a", &up), flaky("bad", &down)])
        .with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0))
        .with_completion(CompleteOnResponse)
        .with_outlier(outlier(2, 0.5));
    let board = lb.board();
    assert_eq!(failures(&mut lb, 4).await, 2);
    assert_eq!(ejected(&board), ["bad"]);
    assert_eq!(failures(&mut lb, 10).await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_discovery_error_keeps_the_endpoints_and_discovery_goes_on() {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<_, BoxError>>(8);
    let mut lb = Balance::new(rx).with_completion(CompleteOnResponse);
    let a = backend("a", answers("a", Duration::ZERO));
    tx.try_send(Ok(tower::discover::Change::Insert(a.endpoint.id.clone(), a))).unwrap();
    tx.try_send(Err("the source is down".into())).unwrap();
    let b = backend("b", answers("b", Duration::ZERO));
    tx.try_send(Ok(tower::discover::Change::Insert(b.endpoint.id.clone(), b))).unwrap();
    settle().await;
    assert_eq!(lb.len(), 1, "the error holds discovery back for its back-off");
    assert_eq!(send(&mut lb).await.unwrap(), "a");
    advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(lb.len(), 2, "then the next change comes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_under_concurrent_load_leaves_the_board_once_drained() {
    // Requests from many tasks on two threads while discovery removes `b`: whichever of the
    // drain and b's last request comes second takes b off the board.
    for _ in 0..20 {
        let (mut tx, lb) = dynamic();
        let lb = lb.with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0));
        let board = lb.board();
        insert(&mut tx, backend("a", answers("a", Duration::from_micros(200))));
        insert(&mut tx, backend("b", answers("b", Duration::from_micros(200))));
        let shared = Shared::new(lb);
        let calls: Vec<_> = (0..64).map(|_| tokio::spawn(shared.clone().oneshot(req()))).collect();
        tokio::task::yield_now().await;
        remove(&mut tx, "b");
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while board.len() != 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(board.snapshot().iter().map(|e| e.endpoint.id.to_string()).collect::<Vec<_>>(), ["a"]);
    }
}
