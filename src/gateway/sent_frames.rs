//! The refusals h2 makes on its own, counted from the frames it writes to the client.
//!
//! Two of the listener's limits are HTTP/2 settings that h2 enforces without asking the
//! gateway's service: a request whose headers pass `max_header_list_bytes` is answered `431`
//! (a HEADERS frame, then the stream's reset), and a stream opened past
//! `max_streams_per_connection` is reset with `REFUSED_STREAM`. Neither reaches the service, so
//! [`SentFrames`] reads the frame headers h2 writes (the nine bytes of each, the payload skipped
//! by its length; the four bytes of an RST_STREAM's error code) and tells them apart:
//!
//! - an RST_STREAM with `REFUSED_STREAM`: the gateway's own resets are `CANCEL` (a call dropped)
//!   and the resets h2 makes for malformed frames `PROTOCOL_ERROR`, so this is a stream past the
//!   count (`stream_limit`);
//! - a HEADERS frame on a stream the gateway has not accepted: the service answers only the
//!   streams it accepted (in the order of their ids), and after it accepted them, so a response
//!   on a stream above the last one accepted is h2's `431` (`header_list_too_large`). A 431 that
//!   h2 could not write before the gateway accepted a later stream (the client's socket full,
//!   the two requests read together) is not counted: a count that can miss a refusal under
//!   back-pressure, never one that counts a call answered;
//! - an RST_STREAM or a GOAWAY with another error code than `NO_ERROR`, `CANCEL`,
//!   `REFUSED_STREAM` or `ENHANCE_YOUR_CALM`: h2 ended a stream or the connection for the
//!   client's breach of HTTP/2 (a malformed request, a frame on a closed stream, a flow-control
//!   or compression error; `protocol_error`). The reset h2 sends after its 431, when the client
//!   had not ended its stream, is part of the 431 and not counted again.
//!
//! A few comparisons per frame written, nothing copied or held (`frame_heads`).

use super::frame_heads::FrameHeads;
use super::frame_heads::kind::{GOAWAY, HEADERS, RST_STREAM};

/// HTTP/2 error codes (RFC 9113, section 7) the gateway writes for other reasons than a
/// client's breach: a stream or connection ended in order (`NO_ERROR`), a call dropped
/// (`CANCEL`), a stream past the count (`REFUSED_STREAM`), an abusive client (`ENHANCE_YOUR_CALM`,
/// counted where the gateway or h2 decides it).
const NO_ERROR: u32 = 0x0;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame the gateway wrote that can be one of h2's refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// A HEADERS frame on the stream with this id (a 431 if the gateway did not accept it).
    Headers(u32),
    /// An RST_STREAM with `REFUSED_STREAM`: a stream past the connection's count.
    RefusedStream,
    /// An RST_STREAM on the stream with this id, or (stream 0) a GOAWAY, with an error code
    /// for the client's breach of HTTP/2 (`PROTOCOL_ERROR`, `FLOW_CONTROL_ERROR`,
    /// `COMPRESSION_ERROR`, ...).
    Breach(u32),
}

/// Reads the frames of the byte stream the gateway writes to a client, across writes.
#[derive(Debug)]
pub(crate) struct SentFrames {
    heads: FrameHeads,
    /// Within an RST_STREAM's or a GOAWAY's payload: the bytes read of it up to its error code.
    code: Option<ErrorCode>,
}

/// The error code of an RST_STREAM (the payload's first four bytes) or a GOAWAY (the four after
/// the last stream id), read across writes.
#[derive(Debug, Clone, Copy)]
struct ErrorCode {
    stream: u32,
    /// Payload bytes to read, the error code's the last four.
    left: usize,
    value: u32,
}

impl SentFrames {
    pub(crate) fn new() -> Self {
        Self { heads: FrameHeads::after(0), code: None }
    }

    /// Reads `data`, the next bytes written to the client, telling `seen` of each frame that
    /// can be a refusal.
    pub(crate) fn feed(&mut self, mut data: &[u8], mut seen: impl FnMut(Sent)) {
        loop {
            if let Some(code) = &mut self.code {
                let taken = self.heads.payload(&mut data, code.left);
                // The last stream id of a GOAWAY shifts out.
                code.value = taken.iter().fold(code.value, |v, &b| v << 8 | u32::from(b));
                code.left -= taken.len();
                if code.left > 0 {
                    return;
                }
                match code.value {
                    REFUSED_STREAM if code.stream != 0 => seen(Sent::RefusedStream),
                    NO_ERROR | REFUSED_STREAM | CANCEL | ENHANCE_YOUR_CALM => {}
                    _ => seen(Sent::Breach(code.stream)),
                }
                self.code = None;
            }
            let Some(head) = self.heads.next(&mut data) else { return };
            let stream = head.stream;
            match head.kind {
                HEADERS => seen(Sent::Headers(stream)),
                RST_STREAM if head.len == 4 => self.code = Some(ErrorCode { stream, left: 4, value: 0 }),
                GOAWAY if head.len >= 8 => self.code = Some(ErrorCode { stream: 0, left: 8, value: 0 }),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, 0]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn seen_in(chunks: &[&[u8]]) -> Vec<Sent> {
        let (mut frames, mut seen) = (SentFrames::new(), Vec::new());
        for chunk in chunks {
            frames.feed(chunk, |s| seen.push(s));
        }
        seen
    }

    #[test]
    fn refusals_and_breaches_are_seen_whole_or_split_at_every_byte() {
        let mut wire = frame(0x4, 0, &[0; 12]); // SETTINGS
        wire.extend(frame(HEADERS, 1, &[0x88]));
        // DATA whose payload looks like a HEADERS frame and an RST_STREAM: skipped.
        let lookalike = [frame(HEADERS, 9, &[]), frame(RST_STREAM, 9, &7u32.to_be_bytes())].concat();
        wire.extend(frame(0x0, 1, &lookalike));
        wire.extend(frame(RST_STREAM, 3, &REFUSED_STREAM.to_be_bytes()));
        wire.extend(frame(RST_STREAM, 5, &CANCEL.to_be_bytes())); // the gateway's own
        wire.extend(frame(RST_STREAM, 5, &NO_ERROR.to_be_bytes()));
        wire.extend(frame(0x9, 7, &[0x82])); // CONTINUATION: not a response's start
        wire.extend(frame(HEADERS, 0x8000_0007, &[0x48, 0x82, 0x64, 0x3f])); // reserved bit
        wire.extend(frame(RST_STREAM, 7, &0x1u32.to_be_bytes())); // PROTOCOL_ERROR
        wire.extend(frame(RST_STREAM, 11, &REFUSED_STREAM.to_be_bytes()));
        // GOAWAY: last stream id (REFUSED_STREAM's value, not a code), code, debug data.
        let goaway = |code: u32| [7u32.to_be_bytes(), code.to_be_bytes(), *b"data"].concat();
        wire.extend(frame(GOAWAY, 0, &goaway(NO_ERROR)));
        wire.extend(frame(GOAWAY, 0, &goaway(ENHANCE_YOUR_CALM)));
        wire.extend(frame(GOAWAY, 0, &goaway(0x9))); // COMPRESSION_ERROR
        wire.extend(frame(HEADERS, 13, &[]));
        let expected = vec![
            Sent::Headers(1),
            Sent::RefusedStream,
            Sent::Headers(7),
            Sent::Breach(7),
            Sent::RefusedStream,
            Sent::Breach(0),
            Sent::Headers(13),
        ];
        assert_eq!(seen_in(&[&wire]), expected);
        let bytes: Vec<&[u8]> = wire.iter().map(std::slice::from_ref).collect();
        assert_eq!(seen_in(&bytes), expected);
        for at in [3, 40, wire.len() - 20] {
            let (head, tail) = wire.split_at(at);
            assert_eq!(seen_in(&[head, tail]), expected, "split at {at}");
        }
    }
}
