//! Prefix block identities computed as the prompt's bytes stream by, and the `prefix_hashes`
//! parameter parsed the same way: neither needs the text or the list in one piece.
//!
//! [`BlockHasher`] gives exactly the ids of [`PrefixBlocks::from_text`]: a chained FNV-1a over
//! each full block of `block_tokens` × [`BYTES_PER_TOKEN`] bytes, finished with SplitMix64, seeded
//! with the previous block's id. FNV-1a folds one byte at a time, so a block split across frames
//! needs no copy: the running state is carried over. The test `matches_from_text` pins the two
//! together, so that a gateway and a replica that calls `from_text` agree on every id.

use switchyard_core::{BYTES_PER_TOKEN, PrefixBlocks};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The most ids kept from a `prefix_hashes` parameter: 4096 blocks (2 M tokens of 512-token
/// blocks; the longest Mooncake prompts have a few hundred). Prefix routing reads the leading
/// blocks; the bound keeps a long list of 1-digit ids from turning a 1 MiB peek into 4 MiB of
/// ids that travel with the request, outside the connection's budget: at most 32 KiB.
pub(crate) const MAX_PREFIX_IDS: usize = 4096;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ids of a prompt's full blocks, fed a piece at a time.
#[derive(Debug, Clone)]
pub(crate) struct BlockHasher {
    block_bytes: usize,
    /// FNV state of the block being read, seeded with the previous id.
    state: u64,
    /// Bytes of the current block read so far.
    filled: usize,
    ids: Vec<u64>,
}

impl BlockHasher {
    /// A hasher for blocks of `block_tokens` tokens (0 is taken as 1, as `from_text` does).
    pub(crate) fn new(block_tokens: u32) -> Self {
        let block_bytes = (block_tokens.max(1) as usize).saturating_mul(BYTES_PER_TOKEN);
        Self { block_bytes, state: FNV_OFFSET, filled: 0, ids: Vec::new() }
    }

    /// Folds in the next bytes of the prompt.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.block_bytes - self.filled).min(bytes.len());
            let (block, rest) = bytes.split_at(take);
            let mut h = self.state;
            for b in block {
                h ^= u64::from(*b);
                h = h.wrapping_mul(FNV_PRIME);
            }
            self.state = h;
            self.filled += take;
            if self.filled == self.block_bytes {
                let id = splitmix64(h);
                self.ids.push(id);
                self.state = id;
                self.filled = 0;
            }
            bytes = rest;
        }
    }

    /// The ids of the full blocks fed so far.
    pub(crate) fn finish(self) -> PrefixBlocks {
        PrefixBlocks::new(self.ids)
    }
}

/// A `prefix_hashes` value (comma-separated unsigned integers, blanks around each allowed, empty
/// parts ignored: what the worker accepts), parsed as its bytes stream by.
#[derive(Debug, Clone, Default)]
pub(crate) struct HashListParser {
    ids: Vec<u64>,
    /// The number being read, if any digit of it was seen.
    current: Option<u64>,
    /// A blank followed the current number: only blanks or a comma may come next.
    closed: bool,
    invalid: bool,
}

impl HashListParser {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.invalid {
            return;
        }
        for &b in bytes {
            match b {
                b'0'..=b'9' => {
                    let digit = u64::from(b - b'0');
                    let next = if self.closed {
                        None
                    } else {
                        self.current.unwrap_or(0).checked_mul(10).and_then(|n| n.checked_add(digit))
                    };
                    match next {
                        Some(n) => self.current = Some(n),
                        None => {
                            self.invalid = true;
                            return;
                        }
                    }
                }
                b',' => self.push(),
                b' ' | b'\t' | b'\n' | b'\r' => self.closed = self.current.is_some(),
                _ => {
                    self.invalid = true;
                    return;
                }
            }
        }
    }

    fn push(&mut self) {
        if let Some(id) = self.current.take()
            && self.ids.len() < MAX_PREFIX_IDS
        {
            self.ids.push(id);
        }
        self.closed = false;
    }

    /// The whole value was read: its ids, or `None` if it is not a list of integers.
    pub(crate) fn finish(mut self) -> Option<PrefixBlocks> {
        self.push();
        (!self.invalid).then(|| PrefixBlocks::new(self.ids))
    }

    /// Reading stopped inside the value: the ids completed so far (the last number may be cut),
    /// or `None` if what was read is not a list of integers.
    pub(crate) fn finish_cut(self) -> Option<PrefixBlocks> {
        (!self.invalid).then(|| PrefixBlocks::new(self.ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_from_text() {
        let text: String = (0..5000u32).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
        for block_tokens in [0, 1, 3, 16, 512] {
            for len in [0, 1, 3, 4, 63, 64, 65, 2048, 4999, 5000] {
                let want = PrefixBlocks::from_text(&text[..len], block_tokens);
                for piece in [1, 2, 7, 64, 5000] {
                    let mut h = BlockHasher::new(block_tokens);
                    for chunk in text.as_bytes()[..len].chunks(piece) {
                        h.feed(chunk);
                    }
                    assert_eq!(h.finish(), want, "block_tokens {block_tokens} len {len} piece {piece}");
                }
            }
        }
    }

    fn parse(pieces: &[&str]) -> Option<Vec<u64>> {
        let mut p = HashListParser::default();
        for piece in pieces {
            p.feed(piece.as_bytes());
        }
        p.finish().map(|b| b.ids().to_vec())
    }

    #[test]
    fn parses_what_the_worker_accepts() {
        assert_eq!(parse(&["4, 5,6"]), Some(vec![4, 5, 6]));
        assert_eq!(parse(&["1", "2", "3,", "45"]), Some(vec![123, 45]));
        assert_eq!(parse(&[" 7 ,, 8 ,"]), Some(vec![7, 8]));
        assert_eq!(parse(&[""]), Some(vec![]));
        assert_eq!(parse(&["1,x"]), None);
        assert_eq!(parse(&["1 2"]), None);
        assert_eq!(parse(&["-1"]), None);
        assert_eq!(parse(&["18446744073709551616"]), None, "past u64");
        assert_eq!(parse(&["18446744073709551615"]), Some(vec![u64::MAX]));
    }

    #[test]
    fn a_cut_list_keeps_its_complete_ids_and_a_long_one_is_bounded() {
        let mut p = HashListParser::default();
        p.feed(b"10,20,3");
        assert_eq!(p.finish_cut().unwrap().ids(), &[10, 20]);
        let mut p = HashListParser::default();
        for _ in 0..MAX_PREFIX_IDS + 10 {
            p.feed(b"1,");
        }
        assert_eq!(p.finish().unwrap().len(), MAX_PREFIX_IDS);
    }
}
