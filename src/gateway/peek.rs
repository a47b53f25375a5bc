//! Reading the KServe `model_name` from the first gRPC message of a request, then replaying the
//! bytes read.
//!
//! A gRPC message travels as a 5-byte prefix (a compression flag, then the length as a big-endian
//! `u32`) and the protobuf bytes. The requests of the KServe model methods (`ModelInfer`,
//! `ModelStreamInfer`, `ModelReady`, `ModelMetadata`, Triton's `ModelConfig` and
//! `ModelStatistics`) all carry the model's name in field 1, and protobuf encoders write fields in
//! number order, so the name is normally within the first few dozen bytes of the body: the peek
//! reads body frames only until field 1 is complete, decoding nothing else (fields before it are
//! skipped by wire type). It reads at most [`MAX_PEEK_BYTES`]; past that, or when the message is
//! compressed, malformed or has no field 1, the request has no model and is routed by the
//! routes that do not ask for one. The frames read are then replayed, unchanged and without
//! copies, ahead of the rest of the body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// The most request bytes the gateway holds back to find a model name: 4 MiB.
pub const MAX_PEEK_BYTES: usize = 4 * 1024 * 1024;

/// The size of a gRPC message prefix.
const PREFIX: usize = 5;

/// What the bytes read so far say about the model name.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Found(String),
    Absent,
    NeedMore,
}

/// Reads frames of `body` until the model name of its first gRPC message is known (or known to
/// be absent), at most `limit` bytes; returns it and a body that replays everything.
pub(crate) async fn peek_model<B>(mut body: B, limit: usize) -> (Option<String>, Replay<B>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut head = VecDeque::new();
    // Contiguous copy for scanning, made only when the prefix spans several frames (rare).
    let mut joined = BytesMut::new();
    let mut read = 0;
    let mut ended = false;
    let mut replay = Replay { head: VecDeque::new(), error: None, trailers: None, rest: None };
    let model = loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                replay.error = Some(e);
                break None;
            }
            None => {
                ended = true;
                break scan_head(&head, &joined, true).found();
            }
        };
        match frame.into_data() {
            Ok(data) => {
                read += data.len();
                if !head.is_empty() {
                    if joined.is_empty() {
                        joined.extend_from_slice(&head[0]);
                    }
                    joined.extend_from_slice(&data);
                }
                head.push_back(data);
            }
            Err(frame) => {
                replay.trailers = frame.into_trailers().ok();
                break scan_head(&head, &joined, true).found();
            }
        }
        match scan_head(&head, &joined, false) {
            Scan::NeedMore if read < limit => {}
            Scan::Found(model) => break Some(model),
            _ => break None,
        }
    };
    replay.head = head;
    if !ended && replay.error.is_none() && replay.trailers.is_none() && !body.is_end_stream() {
        replay.rest = Some(body);
    }
    (model, replay)
}

fn scan_head(head: &VecDeque<Bytes>, joined: &BytesMut, ended: bool) -> Scan {
    let bytes: &[u8] = match head.len() {
        0 => &[],
        1 => &head[0],
        _ => joined,
    };
    scan_message(bytes, ended)
}

impl Scan {
    fn found(self) -> Option<String> {
        match self {
            Scan::Found(model) => Some(model),
            _ => None,
        }
    }
}

/// Scans the first gRPC message in `bytes` for field 1. `ended`: no more bytes will come.
fn scan_message(bytes: &[u8], ended: bool) -> Scan {
    let more = if ended { Scan::Absent } else { Scan::NeedMore };
    let Some(prefix) = bytes.get(..PREFIX) else { return more };
    if prefix[0] != 0 {
        // Compressed: not worth inflating to route.
        return Scan::Absent;
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let available = &bytes[PREFIX..];
    let complete = available.len() >= len;
    let mut message = &available[..len.min(available.len())];
    let more = if complete || ended { Scan::Absent } else { Scan::NeedMore };
    while !message.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut message) else { return more };
        if tag == 1 {
            if wire_type != WireType::LengthDelimited {
                return Scan::Absent;
            }
            let Ok(n) = decode_varint(&mut message) else { return more };
            let Some(name) = usize::try_from(n).ok().and_then(|n| message.get(..n)) else { return more };
            return match std::str::from_utf8(name) {
                Ok(name) => Scan::Found(name.to_string()),
                Err(_) => Scan::Absent,
            };
        }
        if skip_field(wire_type, tag, &mut message, DecodeContext::default()).is_err() {
            return more;
        }
    }
    more
}

/// A request body whose first frames were read by [`peek_model`]: they come again, then the rest.
#[derive(Debug)]
pub(crate) struct Replay<B: Body> {
    head: VecDeque<Bytes>,
    error: Option<B::Error>,
    trailers: Option<http::HeaderMap>,
    /// `None` once the body has ended.
    rest: Option<B>,
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let Some(rest) = this.rest.as_mut() else { return Poll::Ready(None) };
        let frame = ready!(Pin::new(rest).poll_frame(cx));
        if frame.is_none() {
            this.rest = None;
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
        let head: u64 = self.head.iter().map(|b| b.len() as u64).sum();
        let Some(rest) = &self.rest else { return SizeHint::with_exact(head) };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};
    use prost::Message;

    use super::*;
    use crate::proto::inference::ModelInferRequest;

    fn grpc_frame(message: &impl Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        StreamBody::new(futures::stream::iter(
            chunks.into_iter().map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c)))),
        ))
    }

    #[tokio::test]
    async fn finds_the_model_and_replays_every_byte() {
        let mut req = crate::worker::request::text_request("llama", &"x".repeat(100_000), 4);
        req.id = "id-1".into();
        let wire = grpc_frame(&req);
        // Split into many small frames, the first shorter than the prefix.
        let chunks: Vec<Vec<u8>> =
            wire.chunks(3).take(2).chain(wire[6..].chunks(1000)).map(<[u8]>::to_vec).collect();
        let (model, replay) = peek_model(body_of(chunks), MAX_PEEK_BYTES).await;
        assert_eq!(model.as_deref(), Some("llama"));
        let replayed = replay.collect().await.unwrap().to_bytes();
        assert_eq!(replayed.as_ref(), wire.as_slice());
    }

    #[tokio::test]
    async fn no_model_when_absent_compressed_or_too_far() {
        let req = ModelInferRequest { id: "only-an-id".into(), ..Default::default() };
        let (model, _) = peek_model(body_of(vec![grpc_frame(&req)]), MAX_PEEK_BYTES).await;
        assert_eq!(model, None);

        let mut compressed = grpc_frame(&crate::worker::request::text_request("m", "hi", 1));
        compressed[0] = 1;
        let (model, _) = peek_model(body_of(vec![compressed]), MAX_PEEK_BYTES).await;
        assert_eq!(model, None);

        let wire = grpc_frame(&crate::worker::request::text_request("m", "hi", 1));
        let (model, replay) = peek_model(body_of(vec![wire[..3].to_vec(), wire[3..].to_vec()]), 2).await;
        assert_eq!(model, None, "gave up after the limit");
        assert_eq!(replay.collect().await.unwrap().to_bytes().as_ref(), wire.as_slice());

        let (model, replay) = peek_model(body_of(vec![]), MAX_PEEK_BYTES).await;
        assert_eq!(model, None);
        assert!(replay.is_end_stream());
    }

    #[test]
    fn scans_past_other_fields_and_waits_for_a_split_name() {
        // Field 2 (model_version) written first, then field 1.
        let mut bytes = vec![0, 0, 0, 0, 0];
        let msg = [0x12, 1, b'7', 0x0a, 3, b'a', b'b', b'c'];
        bytes[4] = msg.len() as u8;
        bytes.extend_from_slice(&msg);
        assert_eq!(scan_message(&bytes, false), Scan::Found("abc".into()));
        assert_eq!(scan_message(&bytes[..bytes.len() - 1], false), Scan::NeedMore);
        assert_eq!(scan_message(&bytes[..bytes.len() - 1], true), Scan::Absent);
        assert_eq!(scan_message(&bytes[..3], false), Scan::NeedMore);
    }
}
