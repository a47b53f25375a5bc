#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A paced gRPC stream: its messages count as tokens, and its permit is settled as a drop the
//! moment its pace cannot make its deadline, not when it ends; a stream that ends early at a
//! good pace is not a drop although its `max_tokens` was a loose bound.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use switchyard_core::{Deadline, RequestSize};
use switchyard_limit::{Fixed, LimitLayer, Limiter, PaceBudgetLayer, PaceParams, PacedHttpPermit};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};

/// A gRPC message of `n` payload bytes.
fn message(n: usize) -> Bytes {
    let mut m = vec![0];
    m.extend_from_slice(&(n as u32).to_be_bytes());
    m.extend(std::iter::repeat_n(7u8, n));
    Bytes::from(m)
}

/// Streams `tokens` one-message frames `gap` apart, then OK trailers, through a paced limit of a
/// `max_tokens` request with a deadline `deadline` away; the limiter's (samples, dropped) after
/// the token at which the check first could say behind (the 16th), and at the end.
async fn run(tokens: usize, gap: Duration, max_tokens: u32, deadline: Duration) -> ((u64, u64), (u64, u64)) {
    let limiter = Limiter::new(Fixed::new(8));
    let limit =
        LimitLayer::with_limiter(limiter.clone()).with_tracking(PacedHttpPermit::new(PaceParams::default()));
    let inner = tower::service_fn(move |_req: http::Request<()>| async move {
        let frames = futures::stream::iter(0..tokens)
            .then(move |i| async move {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Ok::<_, Infallible>(Frame::data(message(12)))
            })
            .chain(futures::stream::once(async {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                Ok(Frame::trailers(trailers))
            }));
        let mut response = http::Response::new(StreamBody::new(frames.boxed()));
        response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(response)
    });
    let service = ServiceBuilder::new().layer(limit).layer(PaceBudgetLayer).service(inner);
    let mut request = http::Request::new(());
    request.extensions_mut().insert(RequestSize::new(100, max_tokens));
    request.extensions_mut().insert(Deadline(Instant::now() + deadline));
    let mut body = service.oneshot(request).await.unwrap().into_body();
    let stats = || {
        let s = limiter.stats();
        (s.samples, s.dropped)
    };
    let mut at_16 = (0, 0);
    let mut seen = 0;
    while let Some(frame) = body.frame().await {
        if frame.unwrap().is_data() {
            seen += 1;
            if seen == 16 {
                at_16 = stats();
                assert_eq!(limiter.stats().in_flight, 1, "a settled stream keeps its place");
            }
        }
    }
    assert_eq!(limiter.stats().in_flight, 0);
    (at_16, stats())
}

#[tokio::test(start_paused = true)]
async fn a_stream_behind_its_pace_is_a_drop_at_its_16th_message_not_at_its_end() {
    // 200 ms a message, 256 owed: 51 s against a 10 s deadline.
    let (at_16, end) = run(100, Duration::from_millis(200), 256, Duration::from_secs(10)).await;
    assert_eq!(at_16, (0, 1), "dropped while it streams");
    assert_eq!(end, (0, 1), "fed once: its OK trailers feed nothing more");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_early_at_a_good_pace_is_a_success_whatever_its_max_tokens() {
    // max_tokens 4096 at 30 ms is 123 s, past the 10 s deadline; the stream ends after 120
    // messages (3.6 s), within it.
    let (at_16, end) = run(120, Duration::from_millis(30), 4096, Duration::from_secs(10)).await;
    assert_eq!(at_16, (0, 0));
    assert_eq!(end, (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_response_without_a_size_is_not_paced() {
    let limiter = Limiter::new(Fixed::new(8));
    let layer = LimitLayer::with_limiter(limiter.clone()).with_tracking(PacedHttpPermit::default());
    let service = layer.layer(PaceBudgetLayer.layer(tower::service_fn(|_req: http::Request<()>| async {
        let frames = futures::stream::iter(0..40).then(|_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(Frame::data(message(1)))
        });
        Ok::<_, Infallible>(http::Response::new(StreamBody::new(frames.boxed())))
    })));
    let body = service.oneshot(http::Request::new(())).await.unwrap().into_body();
    let _ = body.collect().await;
    assert_eq!(limiter.stats().dropped, 0, "a stream without a RequestSize is not judged");
}
