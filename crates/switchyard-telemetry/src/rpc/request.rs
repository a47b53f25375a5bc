//! The request body of an RPC, which counts its bytes as they pass.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::frame::{self, FrameEnd};
use super::stats::PathMetrics;

pin_project! {
    /// A request body passed through frame for frame, whose data bytes (every message, framed)
    /// are counted as they pass and recorded in `rpc_server_request_size_bytes` (or
    /// `rpc_client_...`) once, when the body ends, or when it is dropped before (the bytes read
    /// by then). The count lives in the body itself: nothing is allocated, shared or copied per
    /// request. Without metrics it is only the inner body and a branch per frame.
    #[derive(Debug)]
    pub struct RpcRequestBody<B> {
        #[pin]
        inner: B,
        count: Option<RequestCount>,
    }

    impl<B> PinnedDrop for RpcRequestBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(count) = this.project().count.take() {
                count.record();
            }
        }
    }
}

/// The bytes a request body has given so far, and where they go when it ends.
#[derive(Debug)]
struct RequestCount {
    metrics: Arc<PathMetrics>,
    bytes: u64,
}

impl RequestCount {
    fn record(self) {
        self.metrics.request_size.record(self.bytes as f64);
    }
}

impl<B: Default> Default for RpcRequestBody<B> {
    fn default() -> Self {
        Self::plain(B::default())
    }
}

impl<B> RpcRequestBody<B> {
    /// `inner`, counted nowhere.
    pub fn plain(inner: B) -> Self {
        Self { inner, count: None }
    }

    pub(crate) fn counted(inner: B, metrics: Option<Arc<PathMetrics>>) -> Self {
        Self { inner, count: metrics.map(|metrics| RequestCount { metrics, bytes: 0 }) }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for RpcRequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let Some(count) = this.count.as_mut() else { return Poll::Ready(frame) };
        // Trailers end a body; so does a last data frame, an error or the end of the stream.
        let ended =
            !matches!(frame::observe(&frame, &mut count.bytes, this.inner.is_end_stream()), FrameEnd::Open);
        if ended && let Some(count) = this.count.take() {
            count.record();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::{MetricsRegistry, RpcLayer};

    /// A client stream's body: its frames, one after the other.
    type Frames = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    /// A gRPC frame: the 5-byte prefix and `len` bytes of message.
    fn frame(len: usize) -> Bytes {
        let mut wire = vec![0, 0, 0, 0, u8::try_from(len).unwrap()];
        wire.resize(5 + len, b'x');
        wire.into()
    }

    /// A service that reads `read` frames of the request body (all, if `None`), then answers OK.
    fn server(
        registry: &MetricsRegistry,
        read: Option<usize>,
    ) -> impl tower::Service<
        http::Request<Frames>,
        Response = http::Response<crate::RpcBody<String>>,
        Error = tower::BoxError,
    > {
        ServiceBuilder::new().layer(RpcLayer::server().with_metrics(Some(registry))).service_fn(
            move |req: http::Request<RpcRequestBody<Frames>>| async move {
                let mut body = req.into_body();
                let mut frames = 0;
                while read.is_none_or(|n| frames < n) {
                    match body.frame().await {
                        Some(Ok(_)) => frames += 1,
                        _ => break,
                    }
                }
                drop(body);
                let mut response = http::Response::new(String::new());
                response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
                Ok::<_, Infallible>(response)
            },
        )
    }

    fn request(frames: &[usize]) -> http::Request<Frames> {
        let frames: Vec<_> = frames.iter().map(|&n| Ok(Frame::data(frame(n)))).collect();
        http::Request::builder()
            .uri("/inference.GRPCInferenceService/ModelInfer")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap()
    }

    const SERIES: &str =
        r#"{rpc_system="grpc",rpc_service="inference.GRPCInferenceService",rpc_method="ModelInfer"}"#;

    #[tokio::test]
    async fn a_requests_bytes_are_counted_once_when_its_body_ends() {
        let registry = MetricsRegistry::new();
        let service = server(&registry, None);
        // A client stream of three messages: 5 + 7, 5 + 100, 5 + 0 bytes on the wire.
        drop(service.oneshot(request(&[7, 100, 0])).await.unwrap());
        let text = registry.render();
        assert!(text.contains(&format!("rpc_server_request_size_bytes_sum{SERIES} 122\n")), "{text}");
        assert!(text.contains(&format!("rpc_server_request_size_bytes_count{SERIES} 1\n")), "{text}");
        let bucket = SERIES.replace('}', r#",le="256"}"#);
        assert!(text.contains(&format!("rpc_server_request_size_bytes_bucket{bucket} 1\n")), "{text}");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_records_the_bytes_read() {
        let registry = MetricsRegistry::new();
        let service = server(&registry, Some(1));
        drop(service.oneshot(request(&[7, 100])).await.unwrap());
        let text = registry.render();
        assert!(text.contains(&format!("rpc_server_request_size_bytes_sum{SERIES} 12\n")), "{text}");
        assert!(text.contains(&format!("rpc_server_request_size_bytes_count{SERIES} 1\n")), "{text}");
    }

    #[tokio::test]
    async fn a_client_counts_the_bytes_it_sends() {
        let registry = MetricsRegistry::new();
        let service = ServiceBuilder::new()
            .layer(RpcLayer::client().with_metrics(Some(&registry)))
            .service_fn(|req: http::Request<RpcRequestBody<http_body_util::Full<Bytes>>>| async move {
                assert_eq!(req.into_body().collect().await.unwrap().to_bytes().len(), 45);
                let mut response = http::Response::new(String::new());
                response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
                Ok::<_, Infallible>(response)
            });
        let request = http::Request::builder()
            .uri("/inference.GRPCInferenceService/ModelInfer")
            .body(http_body_util::Full::new(frame(40)))
            .unwrap();
        drop(service.oneshot(request).await.unwrap());
        let text = registry.render();
        assert!(text.contains(&format!("rpc_client_request_size_bytes_sum{SERIES} 45\n")), "{text}");
    }

    #[tokio::test]
    async fn without_metrics_the_body_passes_unchanged() {
        let mut body = RpcRequestBody::plain(http_body_util::Full::new(frame(3)));
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, frame(3));
        assert!(body.is_end_stream());
    }
}
