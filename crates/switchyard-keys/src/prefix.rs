//! Prefix block identities computed as the prompt's bytes stream by, and the `prefix_hashes`
//! parameter parsed the same way: neither needs the text or the list in one piece.
//!
//! The prompt's block ids come from [`switchyard_core::PrefixHasher`], which folds the bytes in
//! as they come, with the ids of [`PrefixBlocks::from_text`](switchyard_core::PrefixBlocks::from_text).

use switchyard_core::PrefixBlocks;

/// The most ids kept from a `prefix_hashes` parameter: 4096 blocks (2 M tokens of 512-token
/// blocks; the longest Mooncake prompts have a few hundred). Prefix routing reads the leading
/// blocks; the bound keeps a long list of 1-digit ids from turning a 1 MiB peek into 4 MiB of
/// ids that travel with the request, outside the connection's budget: at most 32 KiB.
pub(crate) const MAX_PREFIX_IDS: usize = 4096;

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
