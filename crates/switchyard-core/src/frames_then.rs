//! [`FramesThen`]: frames read ahead of a body, then the body they came from.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A body that gives `frames` in order, then what is left of the body they were read from,
    /// if anything: how a layer that reads a body ahead (the response cache, a retry layer
    /// holding a response to its trailers) hands it on unchanged.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use http_body::Frame;
    /// use switchyard_core::FramesThen;
    /// let body: FramesThen<http_body_util::Empty<Bytes>> =
    ///     FramesThen::new(vec![Frame::data(Bytes::from_static(b"read ahead"))], None);
    /// assert_eq!(body.head().len(), 1);
    /// ```
    pub struct FramesThen<B> {
        head: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Option<B>,
    }
}

impl<B> FramesThen<B> {
    /// `frames`, then `rest` (nothing more when `None`: the frames were all of it).
    pub fn new(frames: impl Into<VecDeque<Frame<Bytes>>>, rest: Option<B>) -> Self {
        Self { head: frames.into(), rest }
    }

    /// The frames still to give before the rest.
    pub fn head(&self) -> &VecDeque<Frame<Bytes>> {
        &self.head
    }

    /// The body after the frames, unless it had ended.
    pub fn rest(&self) -> Option<&B> {
        self.rest.as_ref()
    }

    /// The frames still to give, and the rest.
    pub fn into_parts(self) -> (Vec<Frame<Bytes>>, Option<B>) {
        (self.head.into(), self.rest)
    }
}

impl<B: Body<Data = Bytes>> Body for FramesThen<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_pin_mut() {
            Some(rest) => rest.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let head: u64 = self.head.iter().filter_map(Frame::data_ref).map(|d| d.len() as u64).sum();
        let Some(rest) = &self.rest else { return SizeHint::with_exact(head) };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(head));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(head));
        }
        hint
    }
}

impl<B> std::fmt::Debug for FramesThen<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramesThen")
            .field("head", &self.head.len())
            .field("rest", &self.rest.is_some())
            .finish()
    }
}
