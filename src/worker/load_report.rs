//! Server-side ORCA load reports: a tower layer that puts the replica's current load into the
//! `endpoint-load-metrics-bin` trailer of every response.
//!
//! The report is read when the response ends (in the trailers), not when it starts, so a long
//! stream carries the load at its end. On a trailers-only response (how gRPC sends most errors:
//! the status is in the headers and the body is empty) the report goes into the headers, which
//! are then the trailers.
//!
//! A stream's trailers come when its generation ends, seconds after the replica took the
//! request. For the methods named with [`LoadReportLayer::with_head_report`] (the worker names
//! `ModelStreamInfer`) the response headers carry a report as well, read when the handler
//! answers, that is when the replica has admitted the request: a balancer hears the replica's
//! load one round trip after it sent there, not one generation later, including what other
//! balancers sent in between (Envoy reads ORCA reports from response headers too). A unary
//! answer's headers leave with its trailers, so they get none: it would be the same report
//! twice.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_core::{ReportedLoad, orca};
use tower::{Layer, Service};

/// Adds an ORCA load report, taken from `report` as each response ends, to every response;
/// and one taken as it starts to the headers of the methods chosen with
/// [`with_head_report`](Self::with_head_report).
///
/// ```
/// use switchyard::worker::LoadReportLayer;
/// use switchyard_core::ReportedLoad;
///
/// let layer = LoadReportLayer::new(|| ReportedLoad { queue_depth: 2, ..Default::default() })
///     .with_head_report(|path| path.ends_with("/ModelStreamInfer"));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct LoadReportLayer<F> {
    report: F,
    head: HeadReport,
}

/// Which requests' responses carry a report in their headers too: those whose path the function
/// accepts.
type HeadReport = Option<fn(&str) -> bool>;

impl<F> LoadReportLayer<F>
where
    F: Fn() -> ReportedLoad + Clone,
{
    /// A layer that calls `report` for the load to send.
    pub fn new(report: F) -> Self {
        Self { report, head: None }
    }

    /// Also puts a report, read when the response starts, into the response headers of the
    /// requests whose path `streams` accepts (the server-streaming methods; see the module
    /// docs). A trailers-only response keeps its single report.
    pub fn with_head_report(mut self, streams: fn(&str) -> bool) -> Self {
        self.head = Some(streams);
        self
    }
}

impl<S, F: Clone> Layer<S> for LoadReportLayer<F> {
    type Service = LoadReport<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadReport { inner, report: self.report.clone(), head: self.head }
    }
}

/// The service of [`LoadReportLayer`].
#[derive(Clone, Debug)]
pub struct LoadReport<S, F> {
    inner: S,
    report: F,
    head: HeadReport,
}

impl<S, F, ReqBody, ResBody> Service<http::Request<ReqBody>> for LoadReport<S, F>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    F: Fn() -> ReportedLoad + Clone,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<LoadReportBody<ResBody, F>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let head = self.head.is_some_and(|streams| streams(req.uri().path()));
        ResponseFuture { inner: self.inner.call(req), report: Some(self.report.clone()), head }
    }
}

pin_project! {
    /// The response future of [`LoadReport`].
    pub struct ResponseFuture<Fut, F> {
        #[pin]
        inner: Fut,
        report: Option<F>,
        // The response headers carry a report too (unless they are the trailers).
        head: bool,
    }
}

impl<Fut, F, ResBody, E> Future for ResponseFuture<Fut, F>
where
    Fut: Future<Output = Result<http::Response<ResBody>, E>>,
    F: Fn() -> ReportedLoad,
{
    type Output = Result<http::Response<LoadReportBody<ResBody, F>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut report = this.report.take();
        let (mut parts, body) = response.into_parts();
        if parts.headers.contains_key("grpc-status") {
            // Trailers-only response: the headers are the trailers.
            if let Some(f) = report.take() {
                parts.headers.insert(orca::TRAILER_NAME, orca::encode_header_value(&f()));
            }
        } else if *this.head
            && let Some(f) = &report
        {
            parts.headers.insert(orca::TRAILER_NAME, orca::encode_header_value(&f()));
        }
        Poll::Ready(Ok(http::Response::from_parts(parts, LoadReportBody { inner: body, report })))
    }
}

pin_project! {
    /// A response body that adds the load report to its trailers.
    pub struct LoadReportBody<B, F> {
        #[pin]
        inner: B,
        report: Option<F>,
    }
}

impl<B, F> Body for LoadReportBody<B, F>
where
    B: Body<Data = Bytes>,
    F: Fn() -> ReportedLoad,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(f) = this.report.take() {
                        trailers.insert(orca::TRAILER_NAME, orca::encode_header_value(&f()));
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(this.report.take().map(|f| {
                let mut trailers = http::HeaderMap::new();
                trailers.insert(orca::TRAILER_NAME, orca::encode_header_value(&f()));
                Ok(Frame::trailers(trailers))
            })),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.report.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::ServiceExt;

    fn layer() -> LoadReportLayer<impl Fn() -> ReportedLoad + Clone> {
        LoadReportLayer::new(|| ReportedLoad { queue_depth: 5, ..Default::default() })
    }

    #[tokio::test]
    async fn adds_the_report_to_existing_trailers() {
        let svc = layer().layer(tower::service_fn(|_req: http::Request<()>| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                Ok(Frame::trailers(trailers)),
            ];
            Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(futures::stream::iter(
                frames,
            ))))
        }));
        let response = svc.oneshot(http::Request::new(())).await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(orca::from_headers(&trailers).unwrap().unwrap().queue_depth, 5);
    }

    #[tokio::test]
    async fn adds_trailers_to_a_body_without_them() {
        let svc = layer().layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"abc"))))
        }));
        let response = svc.oneshot(http::Request::new(())).await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(orca::from_headers(&trailers).unwrap().unwrap().queue_depth, 5);
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"abc"));
    }

    #[tokio::test]
    async fn puts_the_report_in_the_headers_of_a_trailers_only_response() {
        let svc = layer().layer(tower::service_fn(|_req: http::Request<()>| async {
            let mut response = http::Response::new(Full::new(Bytes::new()));
            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
            Ok::<_, std::convert::Infallible>(response)
        }));
        let response = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(orca::from_headers(response.headers()).unwrap().unwrap().queue_depth, 5);
        let collected = response.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_none(), "reported once, in the headers");
    }

    #[tokio::test]
    async fn a_chosen_methods_headers_carry_the_load_when_it_starts() {
        let load = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(3));
        let reported = load.clone();
        let layer = LoadReportLayer::new(move || ReportedLoad {
            queue_depth: reported.load(std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        })
        .with_head_report(|path| path.ends_with("/Stream"));
        let svc = layer.layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"abc"))))
        }));
        let request = |path: &str| http::Request::builder().uri(path).body(()).unwrap();

        let response = svc.clone().oneshot(request("/svc/Stream")).await.unwrap();
        assert_eq!(orca::from_headers(response.headers()).unwrap().unwrap().queue_depth, 3);
        // The load moves while the stream runs: its trailers carry the load at its end.
        load.store(7, std::sync::atomic::Ordering::Relaxed);
        let trailers = response.into_body().collect().await.unwrap().trailers().cloned().unwrap();
        assert_eq!(orca::from_headers(&trailers).unwrap().unwrap().queue_depth, 7);

        // Another method's headers carry none: its report is in the trailers alone.
        let response = svc.oneshot(request("/svc/Unary")).await.unwrap();
        assert!(orca::from_headers(response.headers()).is_none());
        let trailers = response.into_body().collect().await.unwrap().trailers().cloned().unwrap();
        assert_eq!(orca::from_headers(&trailers).unwrap().unwrap().queue_depth, 7);
    }
}
