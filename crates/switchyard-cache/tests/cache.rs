//! The cache over mock upstreams: calls counted, answers compared, times on the paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use switchyard_cache::{Cache, CacheConfig, CacheLayer, CacheRule, first_message};
use switchyard_core::{Code, Error, ErrorKind, orca, status_of};
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};

const METHOD: &str = "/inference.GRPCInferenceService/ModelInfer";

type Body = tonic::body::Body;
type Upstream = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// What the mock upstream answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// The request's message back, `grpc-status: 0`, and an ORCA trailer.
    Echo,
    /// The request's message back twice: a server stream.
    Stream,
    /// A trailers-only `NOT_FOUND`.
    NotFound,
    /// The call fails: the endpoint is unreachable.
    Fail,
    /// `n` bytes of message, OK.
    Large(usize),
}

/// A mock upstream that counts its calls and, while its gate is shut, holds them.
struct Mock {
    calls: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    service: Upstream,
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn trailers(status: &str) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_str(status).unwrap());
    t
}

fn mock(answer: Answer) -> Mock {
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, open) = watch::channel(true);
    let counted = calls.clone();
    let service = tower::service_fn(move |req: http::Request<Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let mut open = open.clone();
        async move {
            open.wait_for(|&o| o).await.map_err(|e| Box::new(e) as BoxError)?;
            let request = req.into_body().collect().await?.to_bytes();
            let message = first_message(&request).unwrap_or_default().to_vec();
            let mut t = trailers("0");
            let load = switchyard_core::ReportedLoad { queue_depth: 3, ..Default::default() };
            t.insert(orca::TRAILER_NAME, orca::encode_header_value(&load));
            let data = match answer {
                Answer::Echo => frame(&message),
                Answer::Stream => [frame(&message), frame(&message)].concat(),
                Answer::Large(n) => frame(&vec![7u8; n]),
                Answer::NotFound => {
                    let mut response = http::Response::new(Body::empty());
                    response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
                    return Ok(response);
                }
                Answer::Fail => {
                    return Err(Box::new(Error::new(ErrorKind::ConnectFailed).in_pool("llama")) as BoxError);
                }
            };
            let body = Full::new(Bytes::from(data)).with_trailers(async move { Some(Ok(t)) });
            Ok(http::Response::new(Body::new(body.map_err(|never| match never {}))))
        }
    });
    Mock { calls, gate, service: BoxCloneSyncService::new(service) }
}

fn request(path: &str, message: &[u8]) -> http::Request<Body> {
    http::Request::post(path).body(Body::new(Full::new(Bytes::from(frame(message))))).unwrap()
}

fn layer() -> CacheLayer {
    CacheLayer::new(CacheConfig::new([CacheRule::method(METHOD)]))
}

struct Reply {
    headers: http::HeaderMap,
    data: Bytes,
    trailers: Option<http::HeaderMap>,
}

async fn call(service: &mut Cache<Upstream>, req: http::Request<Body>) -> Result<Reply, BoxError> {
    let response = service.ready().await?.call(req).await?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(BoxError::from)?;
    let trailers = collected.trailers().cloned();
    Ok(Reply { headers: parts.headers, data: collected.to_bytes(), trailers })
}

#[tokio::test(start_paused = true)]
async fn a_repeated_request_makes_no_upstream_call() {
    let m = mock(Answer::Echo);
    let layer = layer();
    let mut service = layer.layer(m.service.clone());
    let first = call(&mut service, request(METHOD, b"hello")).await.unwrap();
    for _ in 0..5 {
        let again = call(&mut service.clone(), request(METHOD, b"hello")).await.unwrap();
        assert_eq!(again.data, first.data);
        assert_eq!(again.trailers.as_ref().and_then(|t| t.get("grpc-status")).unwrap(), "0");
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);
    let other = call(&mut service, request(METHOD, b"other")).await.unwrap();
    assert_eq!(other.data, Bytes::from(frame(b"other")));
    assert_eq!(m.calls.load(Ordering::SeqCst), 2, "different bytes, different key");
    let stats = layer.stats();
    assert_eq!((stats.hits, stats.misses, stats.bypassed), (5, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn identical_concurrent_requests_make_one_call_and_all_get_the_answer() {
    let m = mock(Answer::Echo);
    m.gate.send_replace(false);
    let layer = layer();
    let service = layer.layer(m.service.clone());
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let mut service = service.clone();
            tokio::spawn(async move { call(&mut service, request(METHOD, b"same")).await })
        })
        .collect();
    // Every caller is waiting before the one call is let through.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);
    m.gate.send_replace(true);
    for waiter in waiters {
        let reply = waiter.await.unwrap().unwrap();
        assert_eq!(reply.data, Bytes::from(frame(b"same")));
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 1, "one upstream call for sixteen requests");
    assert_eq!(layer.stats().hits, 15);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_reaches_every_coalesced_caller_and_is_not_cached() {
    let m = mock(Answer::Fail);
    m.gate.send_replace(false);
    let layer = layer();
    let service = layer.layer(m.service.clone());
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let mut service = service.clone();
            tokio::spawn(async move { call(&mut service, request(METHOD, b"q")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    m.gate.send_replace(true);
    for waiter in waiters {
        let err = waiter.await.unwrap().err().expect("the error reaches every caller");
        assert_eq!(status_of(&*err).code, Code::Unavailable, "{err}");
        assert!(err.to_string().contains("llama"), "{err}");
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 1, "the group made one call");
    let _ = call(&mut service.clone(), request(METHOD, b"q")).await;
    assert_eq!(m.calls.load(Ordering::SeqCst), 2, "the error was not stored");
    layer.run_pending_tasks().await;
    assert_eq!(layer.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn an_error_status_reaches_every_coalesced_caller_and_is_not_cached_unless_told() {
    for (rule, stored) in
        [(CacheRule::method(METHOD), false), (CacheRule::method(METHOD).with_errors(), true)]
    {
        let m = mock(Answer::NotFound);
        m.gate.send_replace(false);
        let layer = CacheLayer::new(CacheConfig::new([rule]));
        let service = layer.layer(m.service.clone());
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let mut service = service.clone();
                tokio::spawn(async move { call(&mut service, request(METHOD, b"missing")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        m.gate.send_replace(true);
        for waiter in waiters {
            let reply = waiter.await.unwrap().unwrap();
            assert_eq!(reply.headers.get("grpc-status").unwrap(), "5");
        }
        assert_eq!(m.calls.load(Ordering::SeqCst), 1);
        call(&mut service.clone(), request(METHOD, b"missing")).await.unwrap();
        assert_eq!(m.calls.load(Ordering::SeqCst), if stored { 1 } else { 2 }, "stored: {stored}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_byte_bound_holds() {
    let max_bytes = 16 * 1024;
    let m = mock(Answer::Large(1000));
    let layer = CacheLayer::new(CacheConfig { max_bytes, ..CacheConfig::new([CacheRule::method(METHOD)]) });
    let mut service = layer.layer(m.service.clone());
    for i in 0..200u32 {
        call(&mut service, request(METHOD, &i.to_be_bytes())).await.unwrap();
        layer.run_pending_tasks().await;
        let stats = layer.stats();
        assert!(stats.bytes <= max_bytes, "{} bytes stored, bound {max_bytes}", stats.bytes);
    }
    let stats = layer.stats();
    assert!(stats.entries > 0 && stats.entries < 16, "{stats:?}");
    assert!(stats.bytes > max_bytes / 2, "the bound is used, not avoided: {stats:?}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_larger_than_the_bound_is_passed_on_whole_and_not_stored() {
    let m = mock(Answer::Large(5000));
    let layer = CacheLayer::new(CacheConfig {
        max_response_bytes: 4096,
        ..CacheConfig::new([CacheRule::method(METHOD)])
    });
    let mut service = layer.layer(m.service.clone());
    for _ in 0..2 {
        let reply = call(&mut service, request(METHOD, b"big")).await.unwrap();
        assert_eq!(reply.data.len(), 5005);
        assert!(reply.trailers.unwrap().contains_key(orca::TRAILER_NAME), "unchanged");
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_not_cached_unless_told_and_reaches_its_caller_whole() {
    for (rule, calls) in [(CacheRule::method(METHOD), 2), (CacheRule::method(METHOD).with_streams(), 1)] {
        let m = mock(Answer::Stream);
        let layer = CacheLayer::new(CacheConfig::new([rule]));
        let mut service = layer.layer(m.service.clone());
        for _ in 0..2 {
            let reply = call(&mut service, request(METHOD, b"tok")).await.unwrap();
            assert_eq!(reply.data, Bytes::from([frame(b"tok"), frame(b"tok")].concat()));
            assert_eq!(reply.trailers.unwrap().get("grpc-status").unwrap(), "0");
        }
        assert_eq!(m.calls.load(Ordering::SeqCst), calls);
    }
}

#[tokio::test(start_paused = true)]
async fn the_orca_trailer_is_stripped_from_what_is_stored() {
    let m = mock(Answer::Echo);
    let layer = layer();
    let mut service = layer.layer(m.service.clone());
    let fetched = call(&mut service, request(METHOD, b"x")).await.unwrap();
    let fetched = fetched.trailers.unwrap();
    assert!(fetched.contains_key(orca::TRAILER_NAME), "the caller that reached the replica gets its report");
    let cached = call(&mut service, request(METHOD, b"x")).await.unwrap().trailers.unwrap();
    assert!(!cached.contains_key(orca::TRAILER_NAME), "{cached:?}");
    assert_eq!(cached.get("grpc-status").unwrap(), "0");
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn answers_expire_after_the_ttl() {
    let m = mock(Answer::Echo);
    let layer = CacheLayer::new(CacheConfig {
        ttl: Duration::from_secs(5),
        ..CacheConfig::new([CacheRule::method(METHOD)])
    });
    let mut service = layer.layer(m.service.clone());
    call(&mut service, request(METHOD, b"t")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    call(&mut service, request(METHOD, b"t")).await.unwrap();
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    call(&mut service, request(METHOD, b"t")).await.unwrap();
    assert_eq!(m.calls.load(Ordering::SeqCst), 2, "stale after 5 s");
}

#[tokio::test(start_paused = true)]
async fn only_named_methods_and_accepted_requests_are_cached() {
    let m = mock(Answer::Echo);
    // Cache a request only when its message's first byte is 0 (as a `temperature == 0` check would).
    let rule =
        CacheRule::method(METHOD).when(|_, body| first_message(body).is_some_and(|m| m.first() == Some(&0)));
    let layer = CacheLayer::new(CacheConfig { max_request_bytes: 64, ..CacheConfig::new([rule]) });
    let mut service = layer.layer(m.service.clone());
    for _ in 0..2 {
        call(&mut service, request(METHOD, &[0, 1])).await.unwrap();
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 1, "accepted: cached");
    for _ in 0..2 {
        let reply = call(&mut service, request(METHOD, &[1, 1])).await.unwrap();
        assert_eq!(reply.data, Bytes::from(frame(&[1, 1])), "the request went on unchanged");
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 3, "refused by the predicate: not cached");
    for _ in 0..2 {
        let reply = call(&mut service, request("/other.Service/Call", &[0, 1])).await.unwrap();
        assert_eq!(reply.data, Bytes::from(frame(&[0, 1])));
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 5, "another method: not cached");
    let big = vec![0u8; 100];
    for _ in 0..2 {
        let reply = call(&mut service, request(METHOD, &big)).await.unwrap();
        assert_eq!(reply.data, Bytes::from(frame(&big)), "a request over the bound went on whole");
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 7, "over max_request_bytes: not cached");
    // A client stream: two request messages.
    for _ in 0..2 {
        let body = Bytes::from([frame(&[0, 1]), frame(&[0, 2])].concat());
        let req = http::Request::post(METHOD).body(Body::new(Full::new(body))).unwrap();
        let reply = call(&mut service, req).await.unwrap();
        assert_eq!(reply.data, Bytes::from(frame(&[0, 1])), "the stream went on whole");
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 9, "a request stream: not cached");
    assert_eq!(
        layer.stats().bypassed,
        6,
        "refused, too large, a stream: two each; another method is not counted"
    );
}

#[tokio::test(start_paused = true)]
async fn the_key_layers_replayed_body_works_as_the_gateway_uses_it() {
    use switchyard_keys::Replay;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let upstream = tower::service_fn(move |req: http::Request<Replay<Full<Bytes>>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let data = req.into_body().collect().await?.to_bytes();
            let body = Full::new(data).with_trailers(async { Some(Ok(trailers("0"))) });
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::new(body)))
        }
    });
    let mut service = layer().layer(upstream);
    for _ in 0..3 {
        let req =
            http::Request::post(METHOD).body(Replay::new(Full::new(Bytes::from(frame(b"kv"))))).unwrap();
        let response = service.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), Bytes::from(frame(b"kv")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rule_can_key_by_a_canonical_form() {
    let m = mock(Answer::Echo);
    // Requests that differ only in their last byte are the same request here; `None` is never cached.
    let rule =
        CacheRule::method(METHOD).key_with(|body| (body.len() > 7).then(|| body.slice(..body.len() - 1)));
    let layer = CacheLayer::new(CacheConfig::new([rule]));
    let mut service = layer.layer(m.service.clone());
    call(&mut service, request(METHOD, b"abc1")).await.unwrap();
    let reply = call(&mut service, request(METHOD, b"abc2")).await.unwrap();
    assert_eq!(reply.data, Bytes::from(frame(b"abc1")), "the stored answer");
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);
    for _ in 0..2 {
        call(&mut service, request(METHOD, b"ab")).await.unwrap();
    }
    assert_eq!(m.calls.load(Ordering::SeqCst), 3, "no key: not cached");
}

type FrameSender = tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, BoxError>>;

/// A request whose body sends `head` and then stalls, open while the returned sender lives.
fn stalled(head: &[u8]) -> (http::Request<Body>, FrameSender) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(Ok(http_body::Frame::data(Bytes::copy_from_slice(head)))).unwrap();
    let frames = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let body = http_body_util::StreamBody::new(frames);
    (http::Request::post(METHOD).body(Body::new(body)).unwrap(), tx)
}

#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_is_refused_at_the_read_timeout_and_waits_on_nothing() {
    let m = mock(Answer::Echo);
    let layer = CacheLayer::new(
        CacheConfig::new([CacheRule::method(METHOD)]).with_read_timeout(Duration::from_millis(300)),
    );
    let mut service = layer.layer(m.service.clone());
    // Half a message, then nothing: the body neither ends nor passes the byte bound.
    let (req, _kept_open) = stalled(&frame(b"hello")[..4]);
    let started = tokio::time::Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(60), call(&mut service, req)).await;
    let error = answered.expect("not left waiting").err().expect("refused");
    assert_eq!(started.elapsed(), Duration::from_millis(300), "given up at the read timeout");
    assert_eq!(status_of(&*error).code, Code::DeadlineExceeded, "{error}");
    assert_eq!(m.calls.load(Ordering::SeqCst), 0, "nothing went upstream");
    assert_eq!(layer.stats().timed_out, 1);
    // The cache is free for the same request sent whole: it is answered, and then cached.
    let reply = call(&mut service, request(METHOD, b"hello")).await.unwrap();
    assert_eq!(reply.data, Bytes::from(frame(b"hello")));
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);

    // The request's own deadline, when sooner, gives up first.
    let (mut req, _kept_open) = stalled(&frame(b"other")[..2]);
    req.extensions_mut()
        .insert(switchyard_core::Deadline(tokio::time::Instant::now() + Duration::from_millis(50)));
    let started = tokio::time::Instant::now();
    let error = call(&mut service, req).await.err().expect("refused");
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(status_of(&*error).code, Code::DeadlineExceeded);
    assert_eq!(layer.stats().timed_out, 2);
}

/// An upstream that answers a head and half a message, then stalls its body (kept open), and
/// counts its calls.
fn stalling_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let open: Arc<std::sync::Mutex<Vec<FrameSender>>> = Arc::default();
    let counted = calls.clone();
    let service = tower::service_fn(move |_req: http::Request<Body>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(Ok(http_body::Frame::data(Bytes::copy_from_slice(&frame(b"answer")[..4])))).unwrap();
        open.lock().unwrap().push(tx);
        let frames = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body = Body::new(http_body_util::StreamBody::new(frames));
        async move { Ok::<_, BoxError>(http::Response::new(body)) }
    });
    (BoxCloneSyncService::new(service), calls)
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upstream_answer_fails_every_coalesced_waiter_at_the_response_timeout() {
    let (upstream, calls) = stalling_upstream();
    let layer = CacheLayer::new(
        CacheConfig::new([CacheRule::method(METHOD)]).with_response_timeout(Duration::from_secs(2)),
    );
    let service = layer.layer(upstream);
    let started = tokio::time::Instant::now();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let mut service = service.clone();
            tokio::spawn(async move { call(&mut service, request(METHOD, b"hello")).await })
        })
        .collect();
    for waiter in waiters {
        let answered = tokio::time::timeout(Duration::from_secs(60), waiter).await;
        let error = answered.expect("not left waiting").unwrap().err().expect("given up on");
        assert_eq!(status_of(&*error).code, Code::DeadlineExceeded, "{error}");
    }
    assert_eq!(started.elapsed(), Duration::from_secs(2), "given up at the response timeout");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream call for the three");
    let stats = layer.stats();
    assert_eq!((stats.response_timed_out, stats.misses, stats.hits), (1, 0, 0), "{stats:?}");
    assert_eq!(stats.timed_out, 0, "the request bodies were whole");

    // Nothing was stored: the same request calls upstream again. Its own deadline, sooner than
    // the response timeout, gives up first.
    let mut req = request(METHOD, b"hello");
    req.extensions_mut()
        .insert(switchyard_core::Deadline(tokio::time::Instant::now() + Duration::from_millis(500)));
    let started = tokio::time::Instant::now();
    let error = call(&mut service.clone(), req).await.err().expect("given up on");
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    assert_eq!(status_of(&*error).code, Code::DeadlineExceeded);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.stats().response_timed_out, 2);
    assert_eq!(layer.stats().entries, 0);
}
