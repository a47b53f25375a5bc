//! An HTTP/2 client that writes frames by hand, for tests of what a client that ignores the
//! rules (more streams than allowed, streams reset as soon as opened) gets from the gateway.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Frame types.
pub(crate) const DATA: u8 = 0;
pub(crate) const HEADERS: u8 = 1;
pub(crate) const RST_STREAM: u8 = 3;
pub(crate) const SETTINGS: u8 = 4;
pub(crate) const PING: u8 = 6;
pub(crate) const GOAWAY: u8 = 7;

/// Error codes.
pub(crate) const CANCEL: u32 = 8;
pub(crate) const PROTOCOL_ERROR: u32 = 1;
pub(crate) const REFUSED_STREAM: u32 = 7;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 11;

/// One frame read.
#[derive(Debug)]
pub(crate) struct RawFrame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: Vec<u8>,
}

impl RawFrame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub(crate) fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        Some(u32::from_be_bytes(self.payload.get(at..at + 4)?.try_into().ok()?))
    }
}

/// Reads one frame; `None` at the end of the connection (or an error on it).
pub(crate) async fn read_frame(read: &mut (impl AsyncRead + Unpin)) -> Option<RawFrame> {
    let mut head = [0u8; 9];
    read.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    read.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some(RawFrame { kind: head[3], flags: head[4], stream, payload })
}

/// Appends a frame to `out`.
pub(crate) fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with a 7-bit prefix.
fn hpack_int(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 128);
        n /= 128;
    }
    out.push(n as u8);
}

/// A gRPC request's header block for `path`: every field a literal, never indexed.
pub(crate) fn request_headers(path: &str) -> Vec<u8> {
    let fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "gateway"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0);
        hpack_int(&mut block, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_int(&mut block, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Appends a HEADERS frame opening stream `id` for `block`, its body left open.
pub(crate) fn open_stream(out: &mut Vec<u8>, id: u32, block: &[u8]) {
    const END_HEADERS: u8 = 0x4;
    frame(out, HEADERS, END_HEADERS, id, block);
}

/// Appends a RST_STREAM frame for stream `id`.
pub(crate) fn reset_stream(out: &mut Vec<u8>, id: u32, code: u32) {
    frame(out, RST_STREAM, 0, id, &code.to_be_bytes());
}

/// Connects, sends the preface and empty SETTINGS, and acknowledges the server's SETTINGS once
/// they come (so that its limits are in force); `None` if the connection ends first.
pub(crate) async fn connect(addr: SocketAddr) -> Option<(OwnedReadHalf, OwnedWriteHalf)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    write.write_all(&hello).await.ok()?;
    loop {
        let frame = read_frame(&mut read).await?;
        if frame.kind == SETTINGS && frame.flags & 1 == 0 {
            let mut ack = Vec::new();
            self::frame(&mut ack, SETTINGS, 1, 0, &[]);
            write.write_all(&ack).await.ok()?;
            return Some((read, write));
        }
    }
}
