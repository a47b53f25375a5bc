//! The frames a client sends for nothing but the gateway's answer, counted as they are read:
//! a flood of PING or SETTINGS frames ends the connection.
//!
//! h2 answers each PING and SETTINGS frame (one ACK at a time, nothing read until it is written),
//! so a flood queues nothing but costs the gateway a frame written for every frame read, for as
//! long as the client reads the answers. [`FrameWatch`] sits between the socket and h2 and reads
//! the frame headers as the bytes pass (the nine-byte header of each frame, the payload skipped
//! by its length: a few comparisons per frame, nothing copied or held); past
//! [`MAX_CONTROL_FRAMES_PER_SECOND`] in one second it fails the read, which ends the connection,
//! and counts the refusal (`control_flood`). gRPC clients send a PING per keepalive interval
//! (seconds) and, estimating bandwidth, about one per window of data: far below it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::frame_heads::FrameHeads;
use super::frame_heads::kind::{GOAWAY, PING, PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS};
use super::limits::{ConnectionWatch, Refusal};
use super::sent_frames::{Sent, SentFrames};

/// PING and SETTINGS frames (not their ACKs) a client may send in one second.
pub(crate) const MAX_CONTROL_FRAMES_PER_SECOND: u32 = 1000;

/// The client connection preface, before the first frame.
const PREFACE_LEN: usize = 24;
/// The flag of a PING's or SETTINGS' acknowledgement.
const ACK: u8 = 0x1;

/// Counts control frames in a byte stream, across reads.
#[derive(Debug)]
pub(crate) struct ControlFrames {
    heads: FrameHeads,
    window_start: Option<Instant>,
    in_window: u32,
    /// Frames read that can end a stream (RST_STREAM, GOAWAY, and PRIORITY and PUSH_PROMISE,
    /// which h2 may answer with a stream's or the connection's error), wrapping.
    stream_ends: u32,
}

impl ControlFrames {
    pub(crate) fn new() -> Self {
        Self { heads: FrameHeads::after(PREFACE_LEN), window_start: None, in_window: 0, stream_ends: 0 }
    }

    /// Reads `data`, the next bytes from the client: false once the client has sent more than
    /// the allowed control frames in a second.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> bool {
        while let Some(head) = self.heads.next(&mut data) {
            match head.kind {
                PING | SETTINGS if head.flags & ACK == 0 && !self.count() => return false,
                RST_STREAM | GOAWAY | PRIORITY | PUSH_PROMISE => {
                    self.stream_ends = self.stream_ends.wrapping_add(1);
                }
                _ => {}
            }
        }
        true
    }

    /// The frames read so far that can end a stream (wrapping).
    pub(crate) fn stream_ends(&self) -> u32 {
        self.stream_ends
    }

    /// Counts one control frame in the current second: false past the limit.
    fn count(&mut self) -> bool {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                self.in_window += 1;
                self.in_window <= MAX_CONTROL_FRAMES_PER_SECOND
            }
            _ => {
                self.window_start = Some(now);
                self.in_window = 1;
                true
            }
        }
    }
}

/// A client's socket as h2 reads it, its control frames counted (see the module docs). It also
/// moves the connection's count of stream events
/// ([`ConnectionWatch::stream_events`]) before h2 reads a frame that can end a stream, the
/// socket's end or error, or resumes after a write the socket held back; and counts the
/// refusals h2 writes on its own (see `sent_frames`).
#[derive(Debug)]
pub(crate) struct FrameWatch<T> {
    io: T,
    frames: ControlFrames,
    sent: SentFrames,
    /// The last stream h2 answered 431 (0: none).
    last_431: u32,
    connection: Arc<ConnectionWatch>,
    flooded: bool,
    /// A write (or flush) the socket held back, not yet gone through.
    write_held: bool,
}

impl<T> FrameWatch<T> {
    pub(crate) fn new(io: T, connection: Arc<ConnectionWatch>) -> Self {
        Self {
            io,
            frames: ControlFrames::new(),
            sent: SentFrames::new(),
            last_431: 0,
            connection,
            flooded: false,
            write_held: false,
        }
    }

    /// Reads the `written` bytes of `bufs` as frames sent to the client, counting h2's refusals.
    fn sent(&mut self, bufs: &[io::IoSlice<'_>], mut written: usize) {
        let (connection, last_431) = (&self.connection, &mut self.last_431);
        let mut seen = |sent| match sent {
            Sent::Headers(stream) if !connection.is_accepted(stream) => {
                tracing::debug!(stream, "h2 answered 431 to headers over the limit");
                connection.refused(Refusal::HeaderListTooLarge);
                *last_431 = stream;
            }
            Sent::Headers(_) => {}
            Sent::RefusedStream => {
                tracing::debug!("h2 refused a stream past the connection's limit");
                connection.refused(Refusal::StreamLimit);
            }
            // The reset that follows a 431 on a stream the client had not ended.
            Sent::Breach(stream) if stream != 0 && stream == *last_431 => {}
            Sent::Breach(stream) => {
                tracing::debug!(stream, "h2 ended a stream (0: the connection) for a protocol error");
                connection.refused(Refusal::ProtocolError);
            }
        };
        for buf in bufs {
            if written == 0 {
                break;
            }
            let n = written.min(buf.len());
            self.sent.feed(&buf[..n], &mut seen);
            written -= n;
        }
    }

    /// Notes how a write went: once one the socket held back goes through, h2 may decode frames
    /// it had read but left while it waited.
    fn wrote<R>(&mut self, result: Poll<R>) -> Poll<R> {
        match result {
            Poll::Pending => self.write_held = true,
            Poll::Ready(_) if self.write_held => {
                self.write_held = false;
                self.connection.stream_event();
            }
            Poll::Ready(_) => {}
        }
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flooded {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "control frame flood")));
        }
        let before = buf.filled().len();
        let read = match std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf)) {
            Ok(()) => &buf.filled()[before..],
            Err(error) => {
                this.connection.stream_event();
                return Poll::Ready(Err(error));
            }
        };
        let ends = this.frames.stream_ends();
        let fed = this.frames.feed(read);
        if read.is_empty() || this.frames.stream_ends() != ends {
            // The socket's end, or a frame that can end a stream.
            this.connection.stream_event();
        }
        if !fed {
            tracing::debug!("closing a connection that floods PING or SETTINGS frames");
            this.connection.refused(Refusal::ControlFlood);
            this.flooded = true;
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "control frame flood")));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameWatch<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = result {
            self.sent(&[io::IoSlice::new(buf)], written);
        }
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = result {
            self.sent(bufs, written);
        }
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = (payload as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        f.resize(f.len() + payload, 0);
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn pings_past_the_limit_in_one_second_are_a_flood_split_or_whole() {
        let mut wire = preface();
        wire.extend(frame(0x0, 0, 20_000)); // DATA: its payload is skipped, PING bytes or not
        for _ in 0..MAX_CONTROL_FRAMES_PER_SECOND {
            wire.extend(frame(PING, 0, 8));
            wire.extend(frame(PING, ACK, 8)); // ACKs are not counted
        }
        // Whole, then one byte at a time: the limit is met, not passed.
        let mut frames = ControlFrames::new();
        assert!(frames.feed(&wire));
        assert!(!frames.feed(&frame(SETTINGS, 0, 0)), "one more in the same second");
        let mut frames = ControlFrames::new();
        assert!(wire.iter().all(|b| frames.feed(std::slice::from_ref(b))));
        // A second later, the count starts again.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(frames.feed(&frame(PING, 0, 8)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_under_the_limit_is_no_flood() {
        let mut frames = ControlFrames::new();
        assert!(frames.feed(&preface()));
        for _ in 0..10 * MAX_CONTROL_FRAMES_PER_SECOND {
            assert!(frames.feed(&frame(PING, 0, 8)));
            tokio::time::advance(Duration::from_micros(
                1_000_000 / u64::from(MAX_CONTROL_FRAMES_PER_SECOND) + 1,
            ))
            .await;
        }
    }
}
