//! The frame headers of an HTTP/2 byte stream, read as its bytes pass (in either direction):
//! the nine bytes of each frame's header, its payload passed by its length, nothing copied or
//! held but the header being read. What reads the client's frames (`flood`) and the frames h2
//! writes (`sent_frames`) is built on it.

/// A frame's header: length (3 bytes), type, flags, stream id (4 bytes).
const FRAME_HEAD_LEN: usize = 9;

/// Frame types (RFC 9113, section 6).
pub(crate) mod kind {
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const PRIORITY: u8 = 0x2;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const PUSH_PROMISE: u8 = 0x5;
    pub(crate) const PING: u8 = 0x6;
    pub(crate) const GOAWAY: u8 = 0x7;
}

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHead {
    /// The payload's length.
    pub(crate) len: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    /// The stream id, its reserved bit cleared.
    pub(crate) stream: u32,
}

/// Reads frame headers across the chunks of a byte stream.
#[derive(Debug)]
pub(crate) struct FrameHeads {
    /// Bytes to pass before the next frame header (a preface, then each payload).
    skip: usize,
    head: [u8; FRAME_HEAD_LEN],
    head_len: usize,
}

impl FrameHeads {
    /// A stream whose first frame comes after `preface` bytes.
    pub(crate) fn after(preface: usize) -> Self {
        Self { skip: preface, head: [0; FRAME_HEAD_LEN], head_len: 0 }
    }

    /// Reads `data` up to the end of the next frame header, passing what comes before it,
    /// and returns the header; `None` once `data` is used up before one is whole (the rest of
    /// it is kept for the next chunk).
    pub(crate) fn next(&mut self, data: &mut &[u8]) -> Option<FrameHead> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                *data = &data[n..];
                continue;
            }
            let n = (FRAME_HEAD_LEN - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
            self.head_len += n;
            *data = &data[n..];
            if self.head_len < FRAME_HEAD_LEN {
                return None;
            }
            self.head_len = 0;
            let [a, b, c, kind, flags, s0, s1, s2, s3] = self.head;
            let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            self.skip = len;
            return Some(FrameHead { len, kind, flags, stream: u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]) });
        }
        None
    }

    /// Takes from `data` up to `max` bytes of the current frame's payload (of those not passed
    /// yet), rather than passing them.
    pub(crate) fn payload<'a>(&mut self, data: &mut &'a [u8], max: usize) -> &'a [u8] {
        let n = max.min(self.skip).min(data.len());
        let (taken, rest) = data.split_at(n);
        self.skip -= n;
        *data = rest;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_whole_or_split_and_payloads_passed_or_taken() {
        let mut wire = b"PREFACE".to_vec();
        wire.extend_from_slice(&[0, 0, 3, 0x0, 0x1, 0x80, 0, 0, 5, 9, 9, 9]); // DATA, 3 bytes
        wire.extend_from_slice(&[0, 0, 2, 0x3, 0x0, 0, 0, 0, 7, 1, 2]); // RST_STREAM (short)
        for chunk in [wire.len(), 1, 4, 29] {
            let mut heads = FrameHeads::after(7);
            let mut seen = Vec::new();
            for mut data in wire.chunks(chunk) {
                while let Some(head) = heads.next(&mut data) {
                    let payload =
                        if head.kind == 0x3 { heads.payload(&mut data, 4).to_vec() } else { vec![] };
                    seen.push((head, payload));
                }
            }
            let data = FrameHead { len: 3, kind: 0x0, flags: 0x1, stream: 5 };
            let reset = FrameHead { len: 2, kind: 0x3, flags: 0x0, stream: 7 };
            // The payload taken is what the header's chunk held of it: all of it when whole,
            // its first byte in chunks of 29, none where the header ends its chunk (1 and 4).
            let expected: Vec<u8> = match chunk {
                29 => vec![1],
                1 | 4 => vec![],
                _ => vec![1, 2],
            };
            assert_eq!(seen, vec![(data, vec![]), (reset, expected)], "chunks of {chunk}");
        }
    }
}
