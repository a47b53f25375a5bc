//! Counting the gRPC messages of a response body, whatever the data frames' boundaries.

/// Counts complete gRPC messages in a body's bytes: each is a 5-byte prefix (a compression flag
/// and a big-endian length) followed by that many bytes, and a message or its prefix may be
/// split across data frames. Holds five bytes at most.
#[derive(Debug, Clone, Default)]
pub(crate) struct GrpcMessages {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes still owed to the message whose prefix was read.
    remaining: Option<u64>,
}

impl GrpcMessages {
    /// Reads `bytes`; returns how many messages they completed.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> u32 {
        let mut complete = 0u32;
        loop {
            match self.remaining {
                Some(0) => {
                    complete = complete.saturating_add(1);
                    self.remaining = None;
                }
                Some(n) => {
                    let take = (bytes.len() as u64).min(n);
                    self.remaining = Some(n - take);
                    bytes = &bytes[take as usize..];
                    if bytes.is_empty() && self.remaining != Some(0) {
                        return complete;
                    }
                }
                None => {
                    if bytes.is_empty() {
                        return complete;
                    }
                    let take = (5 - self.prefix_len).min(bytes.len());
                    self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&bytes[..take]);
                    self.prefix_len += take;
                    bytes = &bytes[take..];
                    if self.prefix_len == 5 {
                        let len = u32::from_be_bytes([
                            self.prefix[1],
                            self.prefix[2],
                            self.prefix[3],
                            self.prefix[4],
                        ]);
                        self.remaining = Some(u64::from(len));
                        self.prefix_len = 0;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn messages_are_counted_when_complete_across_any_frame_boundaries() {
        let mut bytes = message(b"hello");
        bytes.extend(message(b""));
        bytes.extend(message(&[7; 300]));
        // Every way of cutting the bytes into two frames, and byte by byte.
        for cut in 0..=bytes.len() {
            let mut counter = GrpcMessages::default();
            let n = counter.feed(&bytes[..cut]) + counter.feed(&bytes[cut..]);
            assert_eq!(n, 3, "cut at {cut}");
        }
        let mut counter = GrpcMessages::default();
        let per_byte: Vec<u32> = bytes.iter().map(|b| counter.feed(std::slice::from_ref(b))).collect();
        assert_eq!(per_byte.iter().sum::<u32>(), 3);
        assert_eq!(per_byte[9], 1, "the first completes with its last byte");
        assert_eq!(per_byte[14], 1, "the empty one with its prefix");
        // A message not yet complete is not counted.
        let mut counter = GrpcMessages::default();
        assert_eq!(counter.feed(&message(&[1; 10])[..12]), 0);
    }
}
