#![allow(clippy::unwrap_used)]
//! The retry layer over a real `Balance` of in-process endpoints, under tokio's paused clock.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use switchyard_balance::policy::{Endpoints, RequestInfo};
use switchyard_balance::{Backend, Balance, Policy, PolicyHandle, Shared};
use switchyard_core::{Endpoint, Error, ErrorKind, FinalAttempt};
use switchyard_retry::{BudgetConfig, MethodPattern, RetryBody, RetryConfig, RetryLayer};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

type Source = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;
type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

const IDEMPOTENT: &str = "/inference.GRPCInferenceService/ModelInfer";
const OTHER: &str = "/pkg.Service/Write";

/// Always the first eligible endpoint: where a retry goes shows whether the balancer honoured
/// the endpoints tried.
#[derive(Debug)]
struct First;

impl Policy for First {
    fn name(&self) -> &'static str {
        "first"
    }
    fn pick(&self, _: &RequestInfo<'_>, _: &Endpoints<'_>) -> Option<usize> {
        Some(0)
    }
}

/// How an endpoint answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    ConnectFailed,
    RefusedStream,
    /// A trailers-only status, with a pushback if given.
    Status(&'static str, Option<&'static str>),
    /// Headers, one message, then `UNAVAILABLE` trailers: a stream that began.
    StreamThenUnavailable,
    /// Headers, one message, then the stream reset (`INTERNAL_ERROR`): a response cut mid-way.
    MessageThenReset,
}

/// An in-process endpoint: counts its calls, notes when they came and the bodies it read.
#[derive(Clone)]
struct Replica {
    answer: Arc<Mutex<Answer>>,
    calls: Arc<AtomicUsize>,
    at: Arc<Mutex<Vec<Instant>>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    /// Whether each call came marked as a final attempt.
    finals: Arc<Mutex<Vec<bool>>>,
}

impl Replica {
    fn new(answer: Answer) -> Self {
        Self {
            answer: Arc::new(Mutex::new(answer)),
            calls: Arc::default(),
            at: Arc::default(),
            bodies: Arc::default(),
            finals: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn status(code: &'static str, pushback: Option<&'static str>) -> http::Response<Body> {
    let mut response = http::Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert("content-type", http::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", http::HeaderValue::from_static(code));
    if let Some(p) = pushback {
        headers.insert("grpc-retry-pushback-ms", http::HeaderValue::from_static(p));
    }
    response
}

fn stream_then_unavailable() -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
        vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))), Ok(Frame::trailers(trailers))];
    let mut response = http::Response::new(StreamBody::new(futures::stream::iter(frames)).boxed_unsync());
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    response
}

fn message_then_reset() -> http::Response<Body> {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
        Err(h2::Error::from(h2::Reason::INTERNAL_ERROR).into()),
    ];
    let mut response = http::Response::new(StreamBody::new(futures::stream::iter(frames)).boxed_unsync());
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    response
}

impl<B> Service<http::Request<RetryBody<B>>> for Replica
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RetryBody<B>>) -> Self::Future {
        let this = self.clone();
        let final_attempt = req.extensions().get::<FinalAttempt>().is_some();
        Box::pin(async move {
            this.calls.fetch_add(1, Ordering::SeqCst);
            this.at.lock().unwrap().push(Instant::now());
            this.finals.lock().unwrap().push(final_attempt);
            let answer = *this.answer.lock().unwrap();
            match answer {
                Answer::ConnectFailed => Err(Error::new(ErrorKind::ConnectFailed).into()),
                Answer::RefusedStream => Err(h2::Error::from(h2::Reason::REFUSED_STREAM).into()),
                Answer::Status(code, pushback) => Ok(status(code, pushback)),
                Answer::StreamThenUnavailable => Ok(stream_then_unavailable()),
                Answer::MessageThenReset => Ok(message_then_reset()),
                Answer::Ok => {
                    let body = req.into_body().collect().await?.to_bytes();
                    this.bodies.lock().unwrap().push(body);
                    Ok(status("0", None))
                }
            }
        })
    }
}

type Balancer = Shared<Balance<Replica, http::Request<RetryBody<Source>>>>;

fn balancer(replicas: &[(&str, &Replica)]) -> Balancer {
    let backends =
        replicas.iter().map(|(id, r)| Backend::new(Endpoint::new(*id, format!("http://{id}")), (*r).clone()));
    Shared::new(Balance::from_backends(backends).with_policy(PolicyHandle::new(Arc::new(First))))
}

fn config() -> RetryConfig {
    let mut config = RetryConfig::default();
    config.idempotent = vec![MethodPattern::parse("/inference.GRPCInferenceService/*").unwrap()];
    config
}

fn request(path: &str, chunks: &[&'static [u8]]) -> http::Request<Source> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c)))).collect();
    let mut req = http::Request::new(StreamBody::new(futures::stream::iter(frames)));
    *req.uri_mut() = format!("http://gateway{path}").parse().unwrap();
    req
}

async fn send(
    service: &mut switchyard_retry::Retry<Balancer>,
    req: http::Request<Source>,
) -> Result<http::Response<switchyard_retry::HeldBody<switchyard_balance::TrackedBody<Body>>>, BoxError> {
    service.ready().await?.call(req).await
}

fn grpc_status<B>(result: &Result<http::Response<B>, BoxError>) -> Option<String> {
    let response = result.as_ref().ok()?;
    Some(response.headers().get("grpc-status")?.to_str().ok()?.to_owned())
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_stops_retries() {
    let a = Replica::new(Answer::Status("14", None));
    let mut config = config();
    // No share of the traffic, a floor of one retry a second over one second: one retry.
    config.budget = BudgetConfig { ratio: 0.0, min_per_second: 1, ttl: Duration::from_secs(1) };
    let layer = RetryLayer::new(config).unwrap();
    let mut service = tower::Layer::layer(&layer, balancer(&[("a", &a)]));
    for _ in 0..5 {
        let result = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
        assert_eq!(grpc_status(&result).as_deref(), Some("14"));
    }
    assert_eq!(a.calls(), 6, "five calls and the one retry the budget allows");
    let stats = layer.stats();
    assert_eq!((stats.calls, stats.retries), (5, 1));
    assert!(stats.budget_exhausted >= 4, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn what_never_reached_a_replica_is_retried_on_another_endpoint_for_any_method() {
    for failure in [Answer::ConnectFailed, Answer::RefusedStream] {
        let a = Replica::new(failure);
        let b = Replica::new(Answer::Ok);
        let layer = RetryLayer::new(config()).unwrap();
        let mut service = tower::Layer::layer(&layer, balancer(&[("a", &a), ("b", &b)]));
        for _ in 0..3 {
            let result = send(&mut service, request(OTHER, &[b"x"])).await;
            assert_eq!(grpc_status(&result).as_deref(), Some("0"));
        }
        // The first call went to `a` and was retried on `b`. Its attempts were final (a method
        // not marked idempotent is retried only when it never reached a replica), and the
        // balancer keeps final attempts off `a` while its last call failed.
        assert_eq!((a.calls(), b.calls()), (1, 3));
    }
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_status_is_retried_for_idempotent_methods_only() {
    let a = Replica::new(Answer::Status("14", None));
    let b = Replica::new(Answer::Ok);
    let mut service =
        tower::Layer::layer(&RetryLayer::new(config()).unwrap(), balancer(&[("a", &a), ("b", &b)]));
    let result = send(&mut service, request(OTHER, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("14"));
    assert_eq!((a.calls(), b.calls()), (1, 0));
    let result = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    assert_eq!((a.calls(), b.calls()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn pushback_is_honoured_and_a_negative_one_stops_retries() {
    let a = Replica::new(Answer::Status("14", Some("300")));
    let layer = RetryLayer::new(config()).unwrap();
    let mut service = tower::Layer::layer(&layer, balancer(&[("a", &a)]));
    let _ = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
    let at = a.at.lock().unwrap().clone();
    assert_eq!(at.len(), 3);
    for pair in at.windows(2) {
        assert_eq!(pair[1] - pair[0], Duration::from_millis(300));
    }
    *a.answer.lock().unwrap() = Answer::Status("14", Some("-1"));
    let _ = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(a.calls(), 4, "a negative pushback: no retry");
}

#[tokio::test(start_paused = true)]
async fn no_retry_would_start_past_the_deadline() {
    let a = Replica::new(Answer::Status("14", Some("500")));
    let mut service = tower::Layer::layer(&RetryLayer::new(config()).unwrap(), balancer(&[("a", &a)]));
    let mut req = request(IDEMPOTENT, &[b"x"]);
    req.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("200m"));
    let start = Instant::now();
    let result = send(&mut service, req).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("14"));
    assert_eq!(a.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO, "the status comes back at once, no wait");
}

#[tokio::test(start_paused = true)]
async fn attempts_no_retry_can_save_are_marked_final() {
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::new(Answer::Status("14", None))).collect();
    let named: Vec<(&str, &Replica)> = ["a", "b", "c"].into_iter().zip(&replicas).collect();
    let mut service = tower::Layer::layer(&RetryLayer::new(config()).unwrap(), balancer(&named));
    let finals = |r: &Replica| r.finals.lock().unwrap().clone();
    // An idempotent call, three attempts: only the last is final.
    let result = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("14"));
    let seen: Vec<Vec<bool>> = replicas.iter().map(finals).collect();
    assert_eq!(seen, [vec![false], vec![false], vec![true]]);
    // A call of a method not marked idempotent: final from its first attempt.
    let result = send(&mut service, request(OTHER, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("14"));
    assert_eq!(finals(&replicas[0]), [false, true]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_first_message_came_is_not_retried() {
    let a = Replica::new(Answer::StreamThenUnavailable);
    let b = Replica::new(Answer::Ok);
    let mut service =
        tower::Layer::layer(&RetryLayer::new(config()).unwrap(), balancer(&[("a", &a), ("b", &b)]));
    let response = send(&mut service, request(IDEMPOTENT, &[b"x"])).await.unwrap();
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"14"[..]));
    assert_eq!((a.calls(), b.calls()), (1, 0));
}

/// The config with the idempotent method's responses held to their trailers.
fn holding() -> RetryConfig {
    let mut config = config();
    config.hold_responses = vec![MethodPattern::parse(IDEMPOTENT).unwrap()];
    config
}

#[tokio::test(start_paused = true)]
async fn a_held_response_cut_mid_way_is_retried_on_another_endpoint() {
    // Not held: the response is committed at its headers, and its caller sees the reset.
    let a = Replica::new(Answer::MessageThenReset);
    let b = Replica::new(Answer::Ok);
    let mut service =
        tower::Layer::layer(&RetryLayer::new(config()).unwrap(), balancer(&[("a", &a), ("b", &b)]));
    let response = send(&mut service, request(IDEMPOTENT, &[b"x"])).await.unwrap();
    assert!(response.into_body().collect().await.is_err());
    assert_eq!((a.calls(), b.calls()), (1, 0));

    // Held: the reset comes before the response is handed on, and the call goes to b.
    let a = Replica::new(Answer::MessageThenReset);
    let b = Replica::new(Answer::Ok);
    let layer = RetryLayer::new(holding()).unwrap();
    let mut service = tower::Layer::layer(&layer, balancer(&[("a", &a), ("b", &b)]));
    let result = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    assert_eq!((a.calls(), b.calls()), (1, 1));
    assert_eq!((layer.stats().retries, layer.stats().held_cut), (1, 1));

    // A method whose responses are not held: as before, and no held response counted as cut.
    let result =
        send(&mut service, request("/inference.GRPCInferenceService/ModelStreamInfer", &[b"x"])).await;
    assert!(result.unwrap().into_body().collect().await.is_err());
    assert_eq!((a.calls(), b.calls()), (2, 1));
    assert_eq!(layer.stats().held_cut, 1);
}

#[tokio::test(start_paused = true)]
async fn a_held_response_ending_with_a_retryable_status_is_retried_and_one_past_the_bound_is_not() {
    let a = Replica::new(Answer::StreamThenUnavailable);
    let b = Replica::new(Answer::Ok);
    let mut service =
        tower::Layer::layer(&RetryLayer::new(holding()).unwrap(), balancer(&[("a", &a), ("b", &b)]));
    let result = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    assert_eq!((a.calls(), b.calls()), (1, 1));

    // Past the bound (a 6-byte message, 3 bytes held at most): handed on whole, committed.
    let a = Replica::new(Answer::StreamThenUnavailable);
    let b = Replica::new(Answer::Ok);
    let mut config = holding();
    config.hold_bytes = 3;
    let mut service =
        tower::Layer::layer(&RetryLayer::new(config).unwrap(), balancer(&[("a", &a), ("b", &b)]));
    let response = send(&mut service, request(IDEMPOTENT, &[b"x"])).await.unwrap();
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"14"[..]));
    assert_eq!(body.to_bytes(), &b"\0\0\0\0\x01x"[..]);
    assert_eq!((a.calls(), b.calls()), (1, 0));
}

/// An endpoint that reads the first frame of the request, then refuses the stream: a retry must
/// send the frame again.
#[derive(Clone)]
struct ReadsThenRefuses {
    calls: Arc<AtomicUsize>,
}

impl<B> Service<http::Request<RetryBody<B>>> for ReadsThenRefuses
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RetryBody<B>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let mut body = req.into_body();
            let first = body.frame().await.and_then(|f| f.ok()).and_then(|f| f.into_data().ok());
            assert_eq!(first.as_deref(), Some(&b"\0\0\0\0\x05hello"[..]));
            Err(h2::Error::from(h2::Reason::REFUSED_STREAM).into())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_replayed_body_reaches_the_second_endpoint_byte_for_byte() {
    let a = ReadsThenRefuses { calls: Arc::default() };
    let b = Replica::new(Answer::Ok);
    let backends = vec![
        Backend::new(Endpoint::new("a", "http://a"), tower::util::Either::Left(a.clone())),
        Backend::new(Endpoint::new("b", "http://b"), tower::util::Either::Right(b.clone())),
    ];
    let balancer: Balance<_, http::Request<RetryBody<Source>>> =
        Balance::from_backends(backends).with_policy(PolicyHandle::new(Arc::new(First)));
    let mut service = tower::Layer::layer(&RetryLayer::new(config()).unwrap(), Shared::new(balancer));
    let chunks: [&'static [u8]; 3] = [b"\0\0\0\0\x05hello", b"\0\0\0\0\x05", b"world"];
    let result = service.ready().await.unwrap().call(request(OTHER, &chunks)).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    assert_eq!(a.calls.load(Ordering::SeqCst), 1);
    let bodies = b.bodies.lock().unwrap().clone();
    assert_eq!(bodies, vec![Bytes::from_static(b"\0\0\0\0\x05hello\0\0\0\0\x05world")]);
}

/// Retries over calls when every call fails with a retryable status, `rate` calls a second
/// arriving whatever the earlier ones are doing, for a minute (paused clock), under `budget`.
async fn steady_state_share(budget: BudgetConfig, rate: u64) -> f64 {
    let a = Replica::new(Answer::Status("14", None));
    let mut config = config();
    config.budget = budget;
    let layer = RetryLayer::new(config).unwrap();
    let service = tower::Layer::layer(&layer, balancer(&[("a", &a)]));
    let mut calls = Vec::new();
    for _ in 0..60 * rate {
        let mut service = service.clone();
        calls.push(tokio::spawn(async move {
            let _ = send(&mut service, request(IDEMPOTENT, &[b"x"])).await;
        }));
        tokio::time::sleep(Duration::from_micros(1_000_000 / rate)).await;
    }
    for call in calls {
        call.await.unwrap();
    }
    let stats = layer.stats();
    assert_eq!(stats.calls, 60 * rate);
    assert_eq!(a.calls() as u64, stats.calls + stats.retries);
    stats.retries as f64 / stats.calls as f64
}

#[tokio::test(start_paused = true)]
async fn at_steady_state_the_budget_holds_retries_to_its_ratio() {
    // The share alone: at most one retry per ten calls.
    let ratio_only = BudgetConfig { ratio: 0.1, min_per_second: 0, ..BudgetConfig::default() };
    let share = steady_state_share(ratio_only, 100).await;
    assert!((0.09..=0.10).contains(&share), "{share}");
    // The default floor (10 retries a second) comes on top: a tenth more at 100 calls a second,
    // a hundredth at 1,000.
    let share = steady_state_share(BudgetConfig::default(), 100).await;
    assert!((0.19..=0.21).contains(&share), "{share}");
    let share = steady_state_share(BudgetConfig::default(), 1000).await;
    assert!((0.10..=0.111).contains(&share), "{share}");
}

/// Endpoints that answer at once, but for the next call after `slow` was set, which answers
/// after a second; a call dropped before it answers is counted as cancelled.
#[derive(Clone, Default)]
struct SlowFirst {
    slow: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
}

/// Counts a call as cancelled if dropped before it is disarmed.
struct CancelGuard(Option<Arc<AtomicUsize>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl<B> Service<http::Request<RetryBody<B>>> for SlowFirst
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RetryBody<B>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let slow = this.slow.swap(false, Ordering::SeqCst);
            let mut guard = CancelGuard(Some(this.cancelled.clone()));
            let body = req.into_body().collect().await?.to_bytes();
            assert_eq!(body, "x", "each attempt sends the whole request");
            if slow {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            guard.0 = None;
            Ok(status("0", None))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn hedging_cancels_the_loser() {
    let replica = SlowFirst::default();
    let backends =
        ["a", "b"].map(|id| Backend::new(Endpoint::new(id, format!("http://{id}")), replica.clone()));
    let balancer: Balance<_, http::Request<RetryBody<Source>>> = Balance::from_backends(backends);
    let mut config = config();
    config.hedge_after = Some(Duration::from_millis(50));
    let layer = RetryLayer::new(config).unwrap();
    let mut service = tower::Layer::layer(&layer, Shared::new(balancer));
    replica.slow.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let result = service.ready().await.unwrap().call(request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    assert_eq!(start.elapsed(), Duration::from_millis(50), "the hedge answered, not the slow first attempt");
    drop(result);
    assert_eq!(replica.calls.load(Ordering::SeqCst), 2);
    assert_eq!(replica.cancelled.load(Ordering::SeqCst), 1, "the slow attempt was cancelled");
    assert_eq!(layer.stats().hedges, 1);

    // A call that answers before the delay is not hedged; nor is a method not marked idempotent.
    let result = service.ready().await.unwrap().call(request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    replica.slow.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let result = service.ready().await.unwrap().call(request(OTHER, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!((replica.calls.load(Ordering::SeqCst), layer.stats().hedges), (4, 1));
}

#[tokio::test(start_paused = true)]
async fn a_hedge_goes_to_another_endpoint_than_the_attempt_it_races() {
    // The policy picks the first eligible endpoint every time: without the first attempt's
    // endpoint among those tried, the hedge would go to the slow one too.
    let (slow, fast) = (SlowFirst::default(), SlowFirst::default());
    let backends = [
        Backend::new(Endpoint::new("slow", "http://slow"), slow.clone()),
        Backend::new(Endpoint::new("fast", "http://fast"), fast.clone()),
    ];
    let balancer: Balance<_, http::Request<RetryBody<Source>>> =
        Balance::from_backends(backends).with_policy(PolicyHandle::new(Arc::new(First)));
    let mut config = config();
    config.hedge_after = Some(Duration::from_millis(50));
    let layer = RetryLayer::new(config).unwrap();
    let mut service = tower::Layer::layer(&layer, Shared::new(balancer));
    slow.slow.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let result = service.ready().await.unwrap().call(request(IDEMPOTENT, &[b"x"])).await;
    assert_eq!(grpc_status(&result).as_deref(), Some("0"));
    assert_eq!(start.elapsed(), Duration::from_millis(50), "the hedge answered");
    drop(result);
    assert_eq!((slow.calls.load(Ordering::SeqCst), fast.calls.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(slow.cancelled.load(Ordering::SeqCst), 1, "the first attempt lost and was cancelled");
}
