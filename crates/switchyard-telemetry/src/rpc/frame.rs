//! What a frame just polled from an RPC's body says about the body's end: the one piece of
//! bookkeeping the request body ([`RpcRequestBody`](super::RpcRequestBody)) and the response body
//! ([`RpcBody`](super::RpcBody)) share. It counts data bytes into a `u64` the caller owns and
//! borrows the trailers it found: nothing is allocated, shared or locked per frame.

use bytes::Buf;
use http_body::Frame;

/// How a body stands after one poll.
#[derive(Debug)]
pub(super) enum FrameEnd<'a> {
    /// More is to come.
    Open,
    /// The body ended without trailers: a last data frame, or the end of the stream.
    Done,
    /// The body ended with these trailers.
    Trailers(&'a http::HeaderMap),
    /// The body failed.
    Failed,
}

/// Adds the data bytes of `frame` (a body's poll result) to `bytes` and says whether the body
/// ended with it; `end_stream` is the body's `is_end_stream()` after the poll.
#[inline]
pub(super) fn observe<'a, D: Buf, E>(
    frame: &'a Option<Result<Frame<D>, E>>,
    bytes: &mut u64,
    end_stream: bool,
) -> FrameEnd<'a> {
    match frame {
        Some(Ok(f)) => {
            if let Some(data) = f.data_ref() {
                *bytes += data.remaining() as u64;
                if end_stream { FrameEnd::Done } else { FrameEnd::Open }
            } else if let Some(trailers) = f.trailers_ref() {
                FrameEnd::Trailers(trailers)
            } else if end_stream {
                FrameEnd::Done
            } else {
                FrameEnd::Open
            }
        }
        Some(Err(_)) => FrameEnd::Failed,
        None => FrameEnd::Done,
    }
}
