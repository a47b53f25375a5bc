//! Bodies the cache can read and hand on: [`ReplayBody`].

use bytes::Bytes;
use http_body::{Body, Frame};
use switchyard_core::FramesThen;
use switchyard_keys::Replay;

/// A body type that can be rebuilt from frames read out of it: how the cache reads a request
/// (for its key) and a response (to store it) and still hands each on unchanged, in the same
/// type, so that it fits any stack.
///
/// Implemented for tonic's body (a tonic client or server) and for the key layer's
/// [`Replay`] (the gateway's request body); the gateway implements it for its response body.
pub trait ReplayBody: Body<Data = Bytes> + Sized {
    /// A body that gives `frames` in order (data, then perhaps trailers), then what is left of
    /// `rest`, or nothing more when `rest` is `None`. The frames were read from `rest` (or from
    /// a body like it): if trailers are among them, `rest` has ended.
    fn replay(frames: Vec<Frame<Bytes>>, rest: Option<Self>) -> Self;
}

impl ReplayBody for tonic::body::Body {
    fn replay(frames: Vec<Frame<Bytes>>, rest: Option<Self>) -> Self {
        match rest {
            None if frames.is_empty() => tonic::body::Body::empty(),
            rest => tonic::body::Body::new(FramesThen::new(frames, rest)),
        }
    }
}

impl<B: Body<Data = Bytes>> ReplayBody for Replay<B> {
    fn replay(frames: Vec<Frame<Bytes>>, rest: Option<Self>) -> Self {
        match rest {
            Some(mut rest) => {
                rest.put_back(frames);
                rest
            }
            None => Replay::from_frames(frames),
        }
    }
}

/// What reading a body up to a bound gave.
pub(crate) struct Read<B> {
    /// The frames read, in order.
    pub(crate) frames: Vec<Frame<Bytes>>,
    /// Their data, concatenated, if the body ended within the bounds.
    pub(crate) whole: Option<Bytes>,
    /// The trailers, if the body ended with some.
    pub(crate) trailers: Option<http::HeaderMap>,
    /// The body, if it has not ended (a bound was reached first).
    pub(crate) rest: Option<B>,
}

/// Reads `body` to its end, or until more than `max_bytes` of data have been read (checked
/// after each frame: one frame may overshoot), or, with `max_messages`, until more gRPC
/// messages than that have begun (a stream: it is handed on after its first message, never
/// held to its end).
pub(crate) async fn read_bounded<B>(
    mut body: B,
    max_bytes: usize,
    max_messages: Option<usize>,
) -> Result<Read<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut frames = Vec::new();
    let mut whole = bytes::BytesMut::new();
    let mut trailers = None;
    loop {
        let too_many = max_messages.is_some_and(|m| crate::grpc::messages_begun(&whole) > m);
        if whole.len() > max_bytes || too_many {
            return Ok(Read { frames, whole: None, trailers: None, rest: Some(body) });
        }
        let Some(frame) = body.frame().await else { break };
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            whole.extend_from_slice(data);
        } else if let Some(t) = frame.trailers_ref() {
            trailers = Some(t.clone());
        }
        frames.push(frame);
    }
    Ok(Read { frames, whole: Some(whole.freeze()), trailers, rest: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn replay_gives_the_frames_then_the_rest() {
        let body = Replay::new(Full::new(Bytes::from_static(b"tail")));
        let body = Replay::replay(vec![Frame::data(Bytes::from_static(b"head-"))], Some(body));
        assert_eq!(body.collect().await.unwrap().to_bytes(), Bytes::from_static(b"head-tail"));

        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![Frame::data(Bytes::from_static(b"ab")), Frame::trailers(trailers.clone())];
        let body = tonic::body::Body::replay(frames, None);
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"ab"));
    }

    #[tokio::test]
    async fn reading_stops_past_the_bound_and_keeps_the_rest() {
        let body = tonic::body::Body::new(Full::new(Bytes::from(vec![7u8; 100])));
        let read = read_bounded(body, 10, None).await.unwrap();
        assert!(read.whole.is_none() && read.rest.is_some());
        let body = tonic::body::Body::replay(read.frames, read.rest);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 100, "nothing lost");

        let body = tonic::body::Body::new(Full::new(Bytes::from(vec![7u8; 10])));
        let read = read_bounded(body, 10, None).await.unwrap();
        assert_eq!(read.whole.map(|b| b.len()), Some(10));
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use futures::stream;
    use http_body_util::StreamBody;

    #[tokio::test]
    async fn a_second_message_ends_the_read_with_the_stream_kept() {
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 1, 7]))),
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 1, 8]))),
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 1, 9]))),
        ];
        let body = StreamBody::new(stream::iter(frames));
        let read = read_bounded(body, 1024, Some(1)).await.unwrap();
        assert!(read.whole.is_none(), "a stream is not read to its end");
        assert_eq!(read.frames.len(), 2, "it stops at the second message");
        assert!(read.rest.is_some());
    }
}
