//! Responses held to their trailers: a call of a method in `hold_responses` is committed only
//! when its whole response has come, so that a response cut mid-way can still be retried.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use switchyard_balance::PickedEndpoint;
use switchyard_core::{Error, ErrorKind};
use tower::BoxError;

/// A response body as a [`Retry`](crate::Retry) layer hands it on: the frames it held (a held
/// response's, up to its trailers), then what is left of the endpoint's body, if anything.
///
/// A response that was not held is its endpoint's body, frame for frame.
pub struct HeldBody<B> {
    held: VecDeque<Frame<Bytes>>,
    rest: Option<B>,
}

impl<B> HeldBody<B> {
    /// `body`, passed on as it comes.
    pub fn new(body: B) -> Self {
        Self { held: VecDeque::new(), rest: Some(body) }
    }

    /// The frames held, in order, and the body they were read from unless it has ended (a
    /// response held whole has none; one past the bound has the rest in it).
    pub fn into_parts(self) -> (Vec<Frame<Bytes>>, Option<B>) {
        (self.held.into(), self.rest)
    }

    /// The trailers of a response held whole.
    pub(crate) fn held_trailers(&self) -> Option<&http::HeaderMap> {
        if self.rest.is_some() {
            return None;
        }
        self.held.back().and_then(Frame::trailers_ref)
    }
}

impl<B> Body for HeldBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.held.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self.held.iter().filter_map(Frame::data_ref).map(|d| d.len() as u64).sum();
        let Some(rest) = &self.rest else { return SizeHint::with_exact(held) };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(held));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

impl<B> std::fmt::Debug for HeldBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldBody")
            .field("held", &self.held.len())
            .field("ended", &self.rest.is_none())
            .finish()
    }
}

/// An attempt's response, held to its trailers when `limit` is given: read until the body ends
/// or `limit` bytes of it have come (then passed on with the rest, committed). A body that fails
/// before its end fails the attempt, as a connection lost under a call that had no answer yet
/// (`ErrorKind::Upstream`, at the endpoint that answered), which a retry may take.
pub(crate) async fn hold<B>(
    attempt: impl Future<Output = Result<http::Response<B>, BoxError>>,
    limit: Option<usize>,
) -> Result<http::Response<HeldBody<B>>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let response = attempt.await?;
    let Some(limit) = limit else { return Ok(response.map(HeldBody::new)) };
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
                    return Ok(http::Response::from_parts(parts, HeldBody { held, rest: Some(body) }));
                }
            }
            Some(Err(e)) => {
                let mut error = Error::new(ErrorKind::Upstream).with_source(e);
                if let Some(picked) = parts.extensions.get::<PickedEndpoint>() {
                    error = error.at_endpoint(picked.0.clone());
                }
                return Err(error.into());
            }
        }
    }
    Ok(http::Response::from_parts(parts, HeldBody { held, rest: None }))
}
