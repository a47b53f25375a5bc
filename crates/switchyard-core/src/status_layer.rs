//! A tower layer that answers a failed call with the gRPC status its error maps to.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, status_of};

/// Turns the errors of the service below into trailers-only gRPC responses, by [`status_of`]: the
/// same statuses the gateway sends. Put it outermost on a tonic server
/// (`Server::builder().layer(StatusLayer)`) whose layers fail calls with Switchyard's typed
/// errors, so that a shed request reaches the client as `RESOURCE_EXHAUSTED` with its pushback
/// rather than as tonic's `UNKNOWN`. The error's cause goes to the log (debug level), not to the
/// client.
///
/// ```
/// use switchyard_core::{Error, ErrorKind, StatusLayer};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let failing = tower::service_fn(|_req: http::Request<()>| async {
///     Err::<http::Response<String>, _>(Error::new(ErrorKind::Shed { retry_after: None }).in_pool("llama"))
/// });
/// let response = StatusLayer.layer(failing).oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(response.headers()["grpc-status"], "8");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusLayer;

impl<S> Layer<S> for StatusLayer {
    type Service = StatusService<S>;

    fn layer(&self, inner: S) -> StatusService<S> {
        StatusService { inner }
    }
}

/// The service of [`StatusLayer`].
#[derive(Debug, Clone)]
pub struct StatusService<S> {
    inner: S,
}

impl<S, Req, B> Service<Req> for StatusService<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = StatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        StatusFuture { inner: self.inner.call(req) }
    }
}

pin_project! {
    /// The response future of [`StatusService`].
    pub struct StatusFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for StatusFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<http::Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().inner.poll(cx)) {
            Ok(response) => response,
            Err(e) => {
                let e: BoxError = e.into();
                let status = status_of(&*e);
                tracing::debug!(code = ?status.code, "call failed: {e}");
                status.to_http()
            }
        }))
    }
}
