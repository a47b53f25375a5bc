//! Responses held to their trailers: a call of a method in `hold_responses` is committed only
//! when its whole response has come, so that a response cut mid-way can still be retried.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use switchyard_balance::PickedEndpoint;
use switchyard_core::{Error, ErrorKind, FramesThen};
use tower::BoxError;

/// A response body as a [`Retry`](crate::Retry) layer hands it on: the frames it held (a held
/// response's, up to its trailers), then what is left of the endpoint's body, if anything
/// ([`FramesThen::into_parts`] gives both). A response that was not held is its endpoint's body,
/// frame for frame, behind no frame.
pub type HeldBody<B> = FramesThen<B>;

/// The trailers of a response held whole.
pub(crate) fn held_trailers<B>(body: &HeldBody<B>) -> Option<&http::HeaderMap> {
    if body.rest().is_some() {
        return None;
    }
    body.head().back().and_then(Frame::trailers_ref)
}

/// An attempt's response, held to its trailers when `limit` is given: read until the body ends
/// or `limit` bytes of it have come (then passed on with the rest, committed). A body that fails
/// before its end fails the attempt, as a connection lost under a call that had no answer yet
/// (`ErrorKind::Upstream`, at the endpoint that answered), which a retry may take; `cut` counts
/// those.
pub(crate) async fn hold<B>(
    attempt: impl Future<Output = Result<http::Response<B>, BoxError>>,
    limit: Option<usize>,
    cut: &AtomicU64,
) -> Result<http::Response<HeldBody<B>>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let response = attempt.await?;
    let Some(limit) = limit else {
        return Ok(response.map(|body| FramesThen::new(VecDeque::new(), Some(body))));
    };
    let (parts, mut body) = response.into_parts();
    let mut held = VecDeque::new();
    let mut bytes = 0usize;
    while !body.is_end_stream() {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                bytes = bytes.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                let trailers = frame.is_trailers();
                held.push_back(frame);
                if trailers {
                    break;
                }
                if bytes > limit {
                    return Ok(http::Response::from_parts(parts, FramesThen::new(held, Some(body))));
                }
            }
            Some(Err(e)) => {
                cut.fetch_add(1, Ordering::Relaxed);
                let mut error = Error::new(ErrorKind::Upstream).with_source(e);
                if let Some(picked) = parts.extensions.get::<PickedEndpoint>() {
                    error = error.at_endpoint(picked.0.clone());
                }
                return Err(error.into());
            }
        }
    }
    Ok(http::Response::from_parts(parts, FramesThen::new(held, None)))
}
