//! The request body after a peek: the frames read first, unchanged, then the rest.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

/// A data frame read by the peek, with the connection-budget permits it holds.
pub(crate) struct Held {
    pub(crate) data: Bytes,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

pin_project! {
    /// A request body replayed after the key layer read its first frames: those frames come
    /// again, in order and unchanged (the same `Bytes`, no copy), then the rest of the body, its
    /// trailers and its error exactly as the client's body gives them.
    ///
    /// Each frame held back keeps its share of the connection's byte budget until it is handed
    /// on by [`Body::poll_frame`] (or the body is dropped). A request that was not peeked is
    /// wrapped too ([`Replay::new`]), holding nothing, so a stack has one body type.
    pub struct Replay<B: Body> {
        head: VecDeque<Held>,
        error: Option<B::Error>,
        trailers: Option<http::HeaderMap>,
        // `None` once the client's body has ended.
        #[pin]
        rest: Option<B>,
    }
}

impl<B: Body> Replay<B> {
    /// `body`, with nothing read ahead.
    pub fn new(body: B) -> Self {
        Self { head: VecDeque::new(), error: None, trailers: None, rest: Some(body) }
    }

    /// A body replaying `head`, then the error or trailers that ended the peek, then `rest`.
    pub(crate) fn peeked(
        head: VecDeque<Held>,
        error: Option<B::Error>,
        trailers: Option<http::HeaderMap>,
        rest: Option<B>,
    ) -> Self {
        Self { head, error, trailers, rest }
    }

    /// A body of `frames` alone: their data in order, then the trailers among them, if any.
    pub fn from_frames(frames: impl IntoIterator<Item = Frame<Bytes>>) -> Self {
        let mut body = Self { head: VecDeque::new(), error: None, trailers: None, rest: None };
        body.put_back(frames);
        body
    }

    /// Puts `frames`, read from this body, back in front of what is left of it, in order and
    /// unchanged, for a layer that reads a whole request before passing it on (a response cache
    /// keying on its bytes). Trailers among them come back after all the data: put back only
    /// trailers that ended the body. Frames put back hold no connection budget.
    pub fn put_back(&mut self, frames: impl IntoIterator<Item = Frame<Bytes>>) {
        let mut head = VecDeque::new();
        for frame in frames {
            match frame.into_data() {
                Ok(data) => head.push_back(Held { data, _permit: None }),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.trailers = Some(trailers);
                    }
                }
            }
        }
        head.append(&mut self.head);
        self.head = head;
    }

    /// Bytes read ahead and not yet handed on.
    pub fn held_bytes(&self) -> usize {
        self.head.iter().map(|h| h.data.len()).sum()
    }

    /// Frames read ahead and not yet handed on.
    pub fn held_frames(&self) -> usize {
        self.head.len()
    }
}

impl<B: Body> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("held_frames", &self.head.len())
            .field("held_bytes", &self.held_bytes())
            .field("error", &self.error.is_some())
            .field("trailers", &self.trailers.is_some())
            .field("ended", &self.rest.is_none())
            .finish()
    }
}

impl<B: Body<Data = Bytes>> Body for Replay<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some(held) = this.head.pop_front() {
            // Its budget permits are released here, as it leaves.
            return Poll::Ready(Some(Ok(Frame::data(held.data))));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let Some(rest) = this.rest.as_mut().as_pin_mut() else { return Poll::Ready(None) };
        let frame = ready!(rest.poll_frame(cx));
        if frame.is_none() {
            this.rest.set(None);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty()
            && self.error.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.held_bytes() as u64;
        let Some(rest) = &self.rest else { return SizeHint::with_exact(head) };
        if head == 0 {
            return rest.size_hint();
        }
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(head));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(head));
        }
        hint
    }
}
