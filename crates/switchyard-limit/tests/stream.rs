#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A stream holds its permit until its trailers, and the trailers' outcome feeds the algorithm.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use switchyard_limit::{Aimd, AimdParams, LimitLayer};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};

/// The frames sent on `rx`, as a stream.
fn frames(rx: mpsc::Receiver<Frame<Bytes>>) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) })
}

#[tokio::test(start_paused = true)]
async fn a_stream_holds_its_permit_until_its_trailers() {
    let params = AimdParams { initial_limit: 1, min_limit: 1, max_limit: 4, ..AimdParams::default() };
    let layer = LimitLayer::new(Aimd::new(params));
    let limiter = layer.limiter().clone();
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let service = layer.layer(tower::service_fn(move |_req: http::Request<()>| {
        let rx = rx.lock().unwrap().take().expect("one call");
        async move {
            let body = StreamBody::new(frames(rx).boxed());
            let mut response = http::Response::new(body);
            response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
            Ok::<_, Infallible>(response)
        }
    }));

    let mut response = service.clone().oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(limiter.stats().in_flight, 1);
    // The limit is 1: a second call waits in poll_ready.
    let mut second = ready_service(service.clone());
    assert!(futures::poll!(&mut second).is_pending());

    for _ in 0..3 {
        tx.send(Frame::data(Bytes::from_static(b"token"))).await.unwrap();
        let frame = response.body_mut().frame().await.unwrap().unwrap();
        assert!(frame.is_data());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limiter.stats().in_flight, 1, "the stream still counts after a message");
        assert!(futures::poll!(&mut second).is_pending());
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    tx.send(Frame::trailers(trailers)).await.unwrap();
    assert!(response.body_mut().frame().await.unwrap().unwrap().is_trailers());
    let stats = limiter.stats();
    assert_eq!((stats.samples, stats.dropped), (1, 0), "the trailers' OK fed the algorithm");
    // Its place went to the waiting call.
    let ready = second.await;
    assert_eq!(limiter.stats().in_flight, 1);
    drop(ready);
    assert_eq!(limiter.stats().in_flight, 0);
}

/// Resolves to the service once it is ready (holding a permit).
fn ready_service<S, Req>(service: S) -> impl Future<Output = S> + Unpin
where
    S: tower::Service<Req> + Unpin,
{
    Box::pin(async move {
        let mut service = service;
        service.ready().await.ok().expect("ready");
        service
    })
}
