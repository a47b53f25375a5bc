#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `HttpCompletion`: a request counts until its response body ends; latency at the first frame;
//! outcome and load report from the trailers (or the headers of a trailers-only response), and
//! a stream's from its headers as well.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{Req, body_of, dispatch, grpc_response, req, trailers};
use futures::SinkExt;
use futures::channel::mpsc;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};

use switchyard_balance::{
    Backend, Balance, EndpointLoad, LoadBoard, Observation, Observer, PickedEndpoint, PolicyHandle,
    PolicyKind, TrackingConfig,
};
use switchyard_core::{Code, EndpointId, Outcome, ReportedLoad, orca};
use tokio::time::{Instant, advance};
use tower::BoxError;
use tower::util::BoxCloneService;

type Svc<B> = BoxCloneService<Req, http::Response<B>, BoxError>;

/// A balancer over one endpoint that answers with whatever `respond` makes.
fn one_endpoint<B: Send + 'static>(
    respond: impl Fn() -> http::Response<B> + Clone + Send + 'static,
) -> Balance<Svc<B>, Req> {
    let service = BoxCloneService::new(tower::service_fn(move |_req: Req| {
        let rsp = respond();
        async move { Ok::<_, BoxError>(rsp) }
    }));
    // A decay far longer than any test, so latency samples read back unchanged.
    let tracking = TrackingConfig::default().with_decay(Duration::from_secs(1_000_000));
    // Through a discovery stream, so that the tracking set below applies to the endpoint.
    let discover =
        switchyard_balance::discover::from_backends([Backend::new(common::endpoint("e"), service)]);
    Balance::new(discover).with_policy(PolicyHandle::of(PolicyKind::RoundRobin, 0)).with_tracking(tracking)
}

fn entry(board: &LoadBoard) -> EndpointLoad {
    board.get(&"e".into()).expect("the endpoint is on the board")
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_in_flight_until_its_body_ends() {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let body = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let mut lb = one_endpoint(move || {
        let rx = body.lock().unwrap().take().expect("one request");
        http::Response::new(http_body_util::StreamBody::new(rx).boxed_unsync())
    });
    let board = lb.board();
    let mut tx = tx;

    let sent = Instant::now();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    let mut body = response.into_body();
    assert_eq!(entry(&board).load.in_flight, 1, "headers arrived, the body did not");
    assert_eq!(entry(&board).load.latency_ewma, None, "no sample before the first frame");

    advance(Duration::from_millis(50)).await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"token 1")))).await.unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    let load = entry(&board).load;
    assert_eq!(load.in_flight, 1, "a stream counts until it ends");
    assert_eq!(load.latency_ewma, Some(Duration::from_millis(50)), "sampled at the first frame");

    advance(Duration::from_millis(500)).await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"token 2")))).await.unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert_eq!(entry(&board).load.in_flight, 1);

    let report = ReportedLoad { queue_depth: 2, running: 7, kv_cache_utilization: 0.5, ..Default::default() };
    tx.send(Ok(Frame::trailers(trailers(0, Some(&report))))).await.unwrap();
    drop(tx);
    assert!(body.frame().await.unwrap().unwrap().is_trailers());
    let load = entry(&board).load;
    assert_eq!(load.in_flight, 0, "the trailers end the request");
    assert_eq!((load.completed, load.failed), (1, 0));
    assert_eq!(load.report, Some(report));
    assert_eq!(load.report_at, Some(sent + Duration::from_millis(550)));
    let latency = load.latency_ewma.unwrap();
    assert!(
        latency > Duration::from_millis(49) && latency <= Duration::from_millis(50),
        "the time to the first frame, not to the end of the stream: {latency:?}"
    );
    assert!(body.frame().await.is_none());
    assert_eq!(entry(&board).load.completed, 1, "counted once");
}

#[tokio::test(start_paused = true)]
async fn a_streams_header_report_counts_when_the_headers_arrive() {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let body = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let admitted = ReportedLoad { queue_depth: 4, running: 3, ..Default::default() };
    let header = orca::encode_header_value(&admitted);
    let mut lb = one_endpoint(move || {
        let rx = body.lock().unwrap().take().expect("one request");
        let mut response = http::Response::new(http_body_util::StreamBody::new(rx).boxed_unsync());
        response.headers_mut().insert(orca::TRAILER_NAME, header.clone());
        response
    });
    let board = lb.board();
    let mut tx = tx;

    let sent = Instant::now();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    let mut body = response.into_body();
    let load = entry(&board).load;
    assert_eq!(load.in_flight, 1, "the stream goes on");
    assert_eq!(
        load.report,
        Some(admitted),
        "the replica's load as it admitted the request, before any token"
    );
    assert_eq!(load.report_at, Some(sent));

    advance(Duration::from_millis(300)).await;
    let ended = ReportedLoad { queue_depth: 0, running: 1, ..Default::default() };
    tx.send(Ok(Frame::data(Bytes::from_static(b"token")))).await.unwrap();
    tx.send(Ok(Frame::trailers(trailers(0, Some(&ended))))).await.unwrap();
    drop(tx);
    while body.frame().await.is_some() {}
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed), (0, 1));
    assert_eq!(load.report, Some(ended), "the trailers' report is the newer");
    assert_eq!(load.report_at, Some(sent + Duration::from_millis(300)));
}

#[tokio::test(start_paused = true)]
async fn a_body_that_ends_without_trailers_ends_the_request() {
    let mut lb = one_endpoint(|| http::Response::new(body_of(vec![Frame::data(Bytes::from_static(b"ok"))])));
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    assert_eq!(entry(&board).load.in_flight, 1);
    common::drain(response.into_body()).await;
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed), (0, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_grpc_body_that_ends_without_trailers_is_a_failure() {
    let mut lb = one_endpoint(|| {
        let mut response = http::Response::new(body_of(vec![Frame::data(Bytes::from_static(b"ok"))]));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        response
    });
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    common::drain(response.into_body()).await;
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed), (0, 0, 1), "no grpc-status: cut short");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_says_it_has_ended_ends_the_request() {
    // hyper (and other consumers) stop polling once `is_end_stream` is true, and drop the body.
    let mut lb = one_endpoint(|| http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))));
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    let mut body = response.into_body();
    while !body.is_end_stream() {
        body.frame().await.unwrap().unwrap();
    }
    let load = entry(&board).load;
    assert_eq!(
        (load.in_flight, load.completed, load.failed, load.cancelled),
        (0, 1, 0, 0),
        "ended when the body said so"
    );
    drop(body);
    assert_eq!(entry(&board).load.completed, 1, "counted once");
}

#[tokio::test(start_paused = true)]
async fn dropping_a_response_unread_ends_the_request() {
    let mut lb = one_endpoint(|| grpc_response(b"ok", trailers(0, None)));
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    assert_eq!(entry(&board).load.in_flight, 1);
    drop(response);
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed, load.cancelled), (0, 0, 0, 1));
    assert_eq!(load.latency_ewma, None, "the caller's patience is no latency sample");
}

#[tokio::test(start_paused = true)]
async fn a_trailers_only_response_is_read_from_its_headers() {
    let report = ReportedLoad { queue_depth: 9, kv_cache_utilization: 0.75, ..Default::default() };
    let headers = trailers(14, Some(&report));
    let mut lb = one_endpoint(move || {
        let mut rsp = http::Response::new(body_of(Vec::new()));
        *rsp.headers_mut() = headers.clone();
        rsp
    });
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    let load = entry(&board).load;
    assert_eq!(load.in_flight, 0, "nothing more to wait for");
    assert_eq!((load.completed, load.failed), (0, 1), "grpc-status 14 in the headers is a failure");
    assert_eq!(load.report, Some(report));
    assert_eq!(load.latency_ewma, None, "an error answered at once is no sample of the speed");
    common::drain(response.into_body()).await;
    assert_eq!(entry(&board).load.failed, 1, "counted once");
}

#[tokio::test(start_paused = true)]
async fn refusals_answered_at_once_are_no_sample_of_the_endpoints_speed() {
    // A worker shedding load answers RESOURCE_EXHAUSTED in a millisecond; taken as samples, its
    // refusals would make the busiest endpoint look the fastest and draw more requests to it.
    let mut lb = one_endpoint(|| {
        let mut rsp = http::Response::new(body_of(Vec::new()));
        *rsp.headers_mut() = trailers(8, None);
        rsp
    });
    let board = lb.board();
    for _ in 0..20 {
        advance(Duration::from_millis(1)).await;
        let response = dispatch(&mut lb, req()).await.await.unwrap();
        common::drain(response.into_body()).await;
    }
    let load = entry(&board).load;
    assert_eq!((load.overloaded, load.in_flight), (20, 0), "{load:?}");
    assert_eq!(load.latency_ewma, None, "{load:?}");
    assert_eq!(load.request_time, None, "{load:?}");
}

#[tokio::test(start_paused = true)]
async fn every_status_is_counted_by_its_outcome() {
    // (grpc-status, pushback) -> (completed, failed, overloaded, cancelled)
    let cases = [
        (0, None, (1, 0, 0, 0)),
        (3, None, (0, 1, 0, 0)),
        (14, None, (0, 1, 0, 0)),
        (4, None, (0, 1, 0, 0)),
        (8, Some("250"), (0, 0, 1, 0)),
        (1, None, (0, 0, 0, 1)),
    ];
    for (status, pushback, expected) in cases {
        let mut t = trailers(status, None);
        if let Some(ms) = pushback {
            t.insert("grpc-retry-pushback-ms", http::HeaderValue::from_static(ms));
        }
        let mut lb = one_endpoint(move || grpc_response(b"x", t.clone()));
        let board = lb.board();
        let response = dispatch(&mut lb, req()).await.await.unwrap();
        common::drain(response.into_body()).await;
        let load = entry(&board).load;
        assert_eq!(load.in_flight, 0);
        assert_eq!(
            (load.completed, load.failed, load.overloaded, load.cancelled),
            expected,
            "grpc-status {status}"
        );
    }
}

type Seen = (String, Outcome, Option<Duration>, Duration);

/// Records every observation.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Observer for Recorder {
    fn on_end(&self, o: &Observation<'_>) {
        let pool = o.pool.unwrap_or("-");
        self.0.lock().unwrap().push((format!("{pool}/{}", o.endpoint), o.outcome, o.first_byte, o.latency));
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_is_told_once_per_request_with_its_endpoint_timing_and_outcome() {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let body = Arc::new(Mutex::new(Some(rx)));
    let recorder = Arc::new(Recorder::default());
    let mut lb = one_endpoint(move || {
        let rx = body.lock().unwrap().take().expect("one request");
        http::Response::new(http_body_util::StreamBody::new(rx).boxed_unsync())
    })
    .with_name("llama")
    .with_observer(recorder.clone());
    let mut tx = tx;
    let mut sent_req = req();
    sent_req.extensions_mut().insert("marker");
    let response = dispatch(&mut lb, sent_req).await.await.unwrap();
    assert_eq!(response.extensions().get::<PickedEndpoint>(), Some(&PickedEndpoint(EndpointId::new("e"))));
    let mut body = response.into_body();
    advance(Duration::from_millis(30)).await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"token")))).await.unwrap();
    body.frame().await.unwrap().unwrap();
    advance(Duration::from_millis(70)).await;
    let mut t = trailers(8, None);
    t.insert("grpc-retry-pushback-ms", http::HeaderValue::from_static("40"));
    tx.send(Ok(Frame::trailers(t))).await.unwrap();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            "llama/e".to_string(),
            Outcome::Overloaded { pushback: Some(Duration::from_millis(40)) },
            Some(Duration::from_millis(30)),
            Duration::from_millis(100)
        )],
        "once, when the trailers came"
    );
    assert_eq!(Outcome::Overloaded { pushback: None }.code(), Code::ResourceExhausted);
}

#[tokio::test(start_paused = true)]
async fn the_endpoint_sees_its_id_in_the_request() {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let service: Svc<()> = BoxCloneService::new(tower::service_fn(move |req: Req| {
        *record.lock().unwrap() = req.extensions().get::<PickedEndpoint>().cloned();
        async { Ok::<_, BoxError>(http::Response::new(())) }
    }));
    let mut lb = Balance::from_backends([Backend::new(common::endpoint("e"), service.clone())])
        .with_completion(switchyard_balance::CompleteOnResponse);
    dispatch(&mut lb, req()).await.await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(PickedEndpoint(EndpointId::new("e"))));

    // Turned off, for endpoints that do not read it.
    let mut lb = Balance::from_backends([Backend::new(common::endpoint("e"), service)])
        .with_picked_endpoint_in_requests(false)
        .with_completion(switchyard_balance::CompleteOnResponse);
    dispatch(&mut lb, req()).await.await.unwrap();
    assert_eq!(*seen.lock().unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn http_gateway_errors_are_failures() {
    let mut lb = one_endpoint(|| {
        let mut rsp = http::Response::new(body_of(vec![Frame::data(Bytes::from_static(b"bad gateway"))]));
        *rsp.status_mut() = http::StatusCode::BAD_GATEWAY;
        rsp
    });
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_load_report_is_ignored() {
    let mut lb = one_endpoint(|| {
        let mut t = trailers(0, None);
        t.insert(orca::TRAILER_NAME, http::HeaderValue::from_static("!!not base64!!"));
        grpc_response(b"ok", t)
    });
    let board = lb.board();
    for _ in 0..3 {
        let response = dispatch(&mut lb, req()).await.await.unwrap();
        let trailers = common::drain(response.into_body()).await.expect("trailers pass through");
        assert!(trailers.contains_key(orca::TRAILER_NAME), "the caller still sees the trailer");
    }
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed), (0, 3, 0));
    assert_eq!(load.report, None);
}

#[tokio::test(start_paused = true)]
async fn a_body_error_is_a_failure() {
    let mut lb = one_endpoint(|| {
        let frames = futures::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err::<Frame<Bytes>, BoxError>("connection reset".into()),
        ]);
        http::Response::new(http_body_util::StreamBody::new(frames))
    });
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert!(body.frame().await.unwrap().is_err());
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_service_error_is_a_failure() {
    let service: common::Svc<String> = BoxCloneService::new(tower::service_fn(|_req: Req| async {
        Err::<String, BoxError>("connection refused".into())
    }));
    let mut lb = Balance::from_backends([Backend::new(common::endpoint("e"), service)])
        .with_name("pool-a")
        .with_completion(switchyard_balance::CompleteOnResponse);
    let board = lb.board();
    let err = dispatch(&mut lb, req()).await.await.unwrap_err();
    assert_eq!(err.to_string(), "pool \"pool-a\" endpoint \"e\": connection failed during the call");
    let status = switchyard_core::status_of(&*err);
    assert_eq!(status.code, Code::Unavailable);
    assert!(!status.message.contains("refused"), "the cause stays in the log");
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed), (0, 0, 1));

    // An OS-level refusal is a connect failure: the request never reached the endpoint.
    let refused: common::Svc<String> = BoxCloneService::new(tower::service_fn(|_req: Req| async {
        Err::<String, BoxError>(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
    }));
    let mut lb = Balance::from_backends([Backend::new(common::endpoint("e"), refused)])
        .with_completion(switchyard_balance::CompleteOnResponse);
    let err = dispatch(&mut lb, req()).await.await.unwrap_err();
    let typed = err.downcast_ref::<switchyard_core::Error>().unwrap();
    assert_eq!(typed.kind(), &switchyard_core::ErrorKind::ConnectFailed);
    assert_eq!(err.to_string(), "endpoint \"e\": unreachable");
}

#[tokio::test(start_paused = true)]
async fn an_empty_body_ends_the_request_at_once() {
    let mut lb = one_endpoint(|| http::Response::new(http_body_util::Empty::<Bytes>::new()));
    let board = lb.board();
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    let load = entry(&board).load;
    assert_eq!((load.in_flight, load.completed, load.failed), (0, 1, 0), "nobody polls an empty body");
    assert!(common::drain(response.into_body()).await.is_none());
    assert_eq!(entry(&board).load.completed, 1, "counted once");
}

#[tokio::test(start_paused = true)]
async fn the_picked_endpoint_in_responses_can_be_turned_off() {
    let recorder = Arc::new(Recorder::default());
    let mut lb = one_endpoint(|| grpc_response(b"ok", trailers(0, None)))
        .with_completion(switchyard_balance::HttpCompletion::new().with_picked_endpoint(false))
        .with_observer(recorder.clone());
    let response = dispatch(&mut lb, req()).await.await.unwrap();
    assert!(response.extensions().get::<PickedEndpoint>().is_none());
    common::drain(response.into_body()).await;
    assert_eq!(recorder.0.lock().unwrap()[0].0, "-/e", "the observer still knows the endpoint");
}
