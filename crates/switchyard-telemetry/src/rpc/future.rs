//! The response future of [`Rpc`](super::Rpc).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use switchyard_balance::PickedEndpoint;
use tower::BoxError;

use super::body::{CallEnd, RpcBody, header_status};

pin_project! {
    /// The response future of [`Rpc`](super::Rpc): the inner service's, inside the RPC's span.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        end: Option<CallEnd>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, end: Option<CallEnd>) -> Self {
        Self { inner, end }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<RpcBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.end.as_ref().and_then(|e| e.span.as_ref()).map(tracing::Span::enter);
            ready!(this.inner.poll(cx))
        };
        let mut end = this.end.take();
        Poll::Ready(match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                if let Some(end) = end.as_mut() {
                    end.header_status = header_status(&parts);
                    end.grpc = parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    if let (Some(span), Some(picked)) = (&end.span, parts.extensions.get::<PickedEndpoint>())
                    {
                        span.record("switchyard.endpoint", tracing::field::display(picked));
                    }
                    if http_body::Body::is_end_stream(&body) {
                        // Nothing will be polled: the call has ended (a trailers-only answer).
                        let code = end.without_trailers();
                        end.finish(code);
                    }
                }
                Ok(http::Response::from_parts(parts, RpcBody::tracked(body, end)))
            }
            Err(error) => {
                let error = error.into();
                if let Some(mut end) = end {
                    end.finish(switchyard_core::status_of(&*error).code);
                }
                Err(error)
            }
        })
    }
}
