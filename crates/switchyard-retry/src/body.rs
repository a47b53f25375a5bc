//! The request body of a call that may be retried: the first attempt records the frames it sends
//! (bounded), a retry sends them again and then goes on with the rest of the client's body.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tower::BoxError;

/// A request body as the service below a [`Retry`](crate::Retry) layer gets it: the client's
/// frames, unchanged, for every attempt.
///
/// The attempts of one call share its source. The current attempt pulls frames from it and
/// records them, up to the layer's buffer bound (gRPC's per-RPC buffer limit); a retry sends the
/// recorded frames again, in order and unchanged (the same `Bytes`), then pulls the rest. Past
/// the bound the record is dropped and the call is committed to its attempt: it is not retried.
/// An attempt that a retry superseded ends with an error rather than take frames that are the
/// new attempt's.
///
/// [`RetryBody::new`] passes a body through with nothing recorded (a stack that never retries
/// has the same body type).
pub struct RetryBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Direct(B),
    Attempt {
        shared: Arc<Mutex<Recording<B>>>,
        attempt: u32,
        next: usize,
    },
    /// A hedge: the whole record, the source having ended, beside the attempt it races.
    Hedge {
        shared: Arc<Mutex<Recording<B>>>,
        next: usize,
    },
}

/// What one call's attempts share: the client's body and the frames taken from it so far.
pub(crate) struct Recording<B> {
    source: Option<B>,
    frames: Vec<Frame<Bytes>>,
    bytes: usize,
    limit: usize,
    /// Past the bound, or a source that failed: no attempt after this one.
    committed: bool,
    /// The attempt that may pull from the source.
    current: u32,
}

/// The frames a record holds (data and trailers; frames are not `Clone`).
fn copy(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match (frame.data_ref(), frame.trailers_ref()) {
        (Some(data), _) => Frame::data(data.clone()),
        (None, Some(trailers)) => Frame::trailers(trailers.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}

/// The error of an attempt that a retry superseded.
#[derive(Debug)]
pub struct Superseded;

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body superseded by a retry")
    }
}

impl std::error::Error for Superseded {}

impl<B> RetryBody<B> {
    /// `body`, passed through: nothing recorded, never replayed.
    pub fn new(body: B) -> Self {
        Self { kind: Kind::Direct(body) }
    }
}

/// The handle the retry layer keeps on a call's recording.
pub(crate) struct Replayable<B> {
    shared: Arc<Mutex<Recording<B>>>,
}

impl<B> Replayable<B> {
    /// A recording of `body`, keeping at most `limit` bytes.
    pub(crate) fn new(body: B, limit: usize) -> Self {
        let recording = Recording {
            source: Some(body),
            frames: Vec::new(),
            bytes: 0,
            limit,
            committed: false,
            current: 0,
        };
        Self { shared: Arc::new(Mutex::new(recording)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording<B>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The body of the first attempt.
    pub(crate) fn first(&self) -> RetryBody<B> {
        RetryBody { kind: Kind::Attempt { shared: self.shared.clone(), attempt: 0, next: 0 } }
    }

    /// The body of a new attempt, which supersedes the others; `None` if the call is committed.
    pub(crate) fn retry(&self) -> Option<RetryBody<B>> {
        let mut recording = self.lock();
        if recording.committed {
            return None;
        }
        recording.current += 1;
        let attempt = recording.current;
        Some(RetryBody { kind: Kind::Attempt { shared: self.shared.clone(), attempt, next: 0 } })
    }

    /// Whether a new attempt could still be made.
    pub(crate) fn is_replayable(&self) -> bool {
        !self.lock().committed
    }

    /// The call is committed to its current attempt (its response has begun): nothing more is
    /// recorded, and the record is dropped once the attempt has sent it all again (a response may
    /// begin before a retry has replayed its body).
    pub(crate) fn commit(&self) {
        self.lock().committed = true;
    }
}

impl<B: Body> Replayable<B> {
    /// The body of a hedge racing the current attempt: the whole request again, from the record;
    /// `None` unless the client's body has ended and is all recorded (a unary call's, once sent).
    pub(crate) fn hedge(&self) -> Option<RetryBody<B>> {
        let recording = self.lock();
        if recording.committed || recording.source.as_ref().is_some_and(|source| !source.is_end_stream()) {
            return None;
        }
        Some(RetryBody { kind: Kind::Hedge { shared: self.shared.clone(), next: 0 } })
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (shared, attempt, next) = match &mut self.get_mut().kind {
            Kind::Direct(body) => {
                return Pin::new(body).poll_frame(cx).map(|f| f.map(|f| f.map_err(Into::into)));
            }
            Kind::Attempt { shared, attempt, next } => (shared, *attempt, next),
            Kind::Hedge { shared, next } => {
                let recording = shared.lock().unwrap_or_else(PoisonError::into_inner);
                let frame = recording.frames.get(*next).map(copy);
                *next += 1;
                return Poll::Ready(frame.map(Ok));
            }
        };
        let mut recording = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if recording.current != attempt {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if let Some(frame) = recording.frames.get(*next) {
            *next += 1;
            return Poll::Ready(Some(Ok(copy(frame))));
        }
        if recording.committed && !recording.frames.is_empty() {
            // Committed and all sent again: no attempt will need the record.
            recording.frames = Vec::new();
        }
        let Some(source) = recording.source.as_mut() else { return Poll::Ready(None) };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                recording.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // An error cannot be sent again: the call stays with this attempt.
                recording.committed = true;
                recording.frames = Vec::new();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if !recording.committed {
                    let size = frame.data_ref().map_or(0, Bytes::len);
                    if recording.bytes.saturating_add(size) > recording.limit {
                        recording.committed = true;
                        recording.frames = Vec::new();
                    } else {
                        recording.bytes += size;
                        recording.frames.push(copy(&frame));
                        *next += 1;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Direct(body) => body.is_end_stream(),
            Kind::Hedge { shared, next } => {
                *next >= shared.lock().unwrap_or_else(PoisonError::into_inner).frames.len()
            }
            Kind::Attempt { shared, attempt, next } => {
                let recording = shared.lock().unwrap_or_else(PoisonError::into_inner);
                recording.current == *attempt
                    && *next >= recording.frames.len()
                    && recording.source.as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Direct(body) => body.size_hint(),
            Kind::Attempt { .. } | Kind::Hedge { .. } => SizeHint::default(),
        }
    }
}

impl<B> std::fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Direct(_) => f.write_str("RetryBody::Direct"),
            Kind::Attempt { attempt, next, .. } => {
                f.debug_struct("RetryBody").field("attempt", attempt).field("next", next).finish()
            }
            Kind::Hedge { next, .. } => f.debug_struct("RetryBody::Hedge").field("next", next).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Source = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

    fn source(chunks: &[&'static str]) -> Source {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_sent_then_the_rest() {
        let call = Replayable::new(source(&["ab", "cd", "ef"]), 1024);
        let mut first = call.first();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        let second = call.retry().unwrap();
        // The first attempt may not take the second's frames.
        assert!(first.frame().await.unwrap().is_err());
        let whole = second.collect().await.unwrap().to_bytes();
        assert_eq!(whole, "abcdef");
    }

    #[tokio::test]
    async fn a_response_that_begins_before_the_replay_ends_does_not_cut_it() {
        let call = Replayable::new(source(&["ab", "cd", "ef"]), 1024);
        let mut first = call.first();
        for _ in 0..2 {
            first.frame().await.unwrap().unwrap();
        }
        let mut second = call.retry().unwrap();
        let frame = second.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        call.commit();
        let rest = second.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "cdef");
    }

    #[tokio::test]
    async fn past_the_bound_the_call_is_committed() {
        let call = Replayable::new(source(&["abcd", "efgh"]), 6);
        let whole = call.first().collect().await.unwrap().to_bytes();
        assert_eq!(whole, "abcdefgh");
        assert!(!call.is_replayable());
        assert!(call.retry().is_none());
    }
}
