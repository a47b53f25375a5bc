//! Routing facts that travel in request extensions: session keys and prompt prefix blocks.

use std::fmt;
use std::sync::Arc;

/// Approximate bytes of text per token, used where no tokenizer is at hand.
///
/// English text with a BPE tokenizer (Llama 3, GPT-4) averages about four bytes per token; the
/// worker and the routing layers both use this figure, so they agree on block boundaries.
pub const BYTES_PER_TOKEN: usize = 4;

/// A 64-bit hash that is the same on every platform, process and Rust version.
///
/// Hash routing must agree across gateway replicas and restarts, so it cannot use `std`'s
/// `DefaultHasher` (whose algorithm may change) or a randomly keyed one. This is FNV-1a over the
/// bytes, finished with the SplitMix64 finaliser so that nearby inputs spread over the whole ring.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    stable_hash_with(FNV_OFFSET, bytes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn stable_hash_with(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    splitmix64(h)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key that pins a request to an endpoint under hash routing: a session, user or
/// conversation id.
///
/// A key-extraction layer inserts it into the request's extensions (for example from the
/// `x-session-id` header); hash policies read it from there.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingKey(Arc<str>);

impl RoutingKey {
    /// A key from any string.
    pub fn new(key: impl AsRef<str>) -> Self {
        Self(Arc::from(key.as_ref()))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's position on a hash ring: [`stable_hash`] of its bytes.
    pub fn hash64(&self) -> u64 {
        stable_hash(self.0.as_bytes())
    }
}

impl fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RoutingKey").field(&&*self.0).finish()
    }
}

/// The identities of a prompt's leading KV-cache blocks, in order.
///
/// An engine caches attention keys and values in fixed-size blocks of tokens (512 in the traces
/// Switchyard replays). Block `i`'s identity covers every token up to the end of block `i`, so two
/// prompts share their first `n` ids exactly when they share their first `n` blocks of tokens.
/// Only full blocks have identities: a partial last block is never shared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixBlocks(Arc<[u64]>);

impl PrefixBlocks {
    /// Block identities given directly, for example the `hash_ids` of a Mooncake trace record.
    pub fn new(ids: impl Into<Arc<[u64]>>) -> Self {
        Self(ids.into())
    }

    /// Identities of the full blocks of `text`, taking [`BYTES_PER_TOKEN`] bytes per token and
    /// `block_tokens` tokens per block (a `block_tokens` of 0 is taken as 1).
    ///
    /// Each identity is a chained [`stable_hash`]: the hash of the previous identity and this
    /// block's bytes, so it names the whole prefix, not just the block.
    pub fn from_text(text: &str, block_tokens: u32) -> Self {
        let mut hasher = PrefixHasher::new(block_tokens);
        hasher.feed(text.as_bytes());
        hasher.finish()
    }

    /// The identities, first block first.
    pub fn ids(&self) -> &[u64] {
        &self.0
    }

    /// How many full blocks the prompt has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the prompt has no full block.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many leading blocks `self` and `other` share.
    pub fn common_prefix(&self, other: &PrefixBlocks) -> usize {
        self.0.iter().zip(other.0.iter()).take_while(|(a, b)| a == b).count()
    }
}

/// The identities of a prompt's full blocks, computed as its bytes stream by: the same ids as
/// [`PrefixBlocks::from_text`] over the whole text, however the bytes are split. FNV-1a folds one
/// byte at a time, so a block split across pieces needs no copy: the running state is carried
/// over.
#[derive(Debug, Clone)]
pub struct PrefixHasher {
    block_bytes: usize,
    /// FNV state of the block being read, seeded with the previous block's identity.
    state: u64,
    /// Bytes of the current block read so far.
    filled: usize,
    ids: Vec<u64>,
}

impl PrefixHasher {
    /// A hasher for blocks of `block_tokens` tokens of [`BYTES_PER_TOKEN`] bytes (0 is taken as 1).
    pub fn new(block_tokens: u32) -> Self {
        let block_bytes = (block_tokens.max(1) as usize).saturating_mul(BYTES_PER_TOKEN);
        Self { block_bytes, state: FNV_OFFSET, filled: 0, ids: Vec::new() }
    }

    /// Folds in the next bytes of the prompt.
    pub fn feed(&mut self, mut bytes: &[u8]) {
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

    /// The identities of the full blocks fed so far.
    pub fn finish(self) -> PrefixBlocks {
        PrefixBlocks::new(self.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_pinned_by_golden_values() {
        // Part of the contract between gateways (two gateways must send a key to the same
        // endpoint): these values must never change. They are FNV-1a 64 then the SplitMix64
        // finaliser, computed independently of this code.
        assert_eq!(stable_hash(b""), 0xc381_7c01_6ba4_ff30);
        assert_eq!(stable_hash(b"session-1"), 0xdf01_6efc_657a_36d2);
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
    }

    #[test]
    fn shared_text_prefix_gives_shared_leading_blocks() {
        let system = "s".repeat(4 * 16 * 3); // three blocks of 16 tokens
        let a = PrefixBlocks::from_text(&format!("{system}question one, rather long {}", "x".repeat(64)), 16);
        let b = PrefixBlocks::from_text(&format!("{system}another question {}", "y".repeat(64)), 16);
        assert_eq!(a.len(), 4);
        assert_eq!(a.common_prefix(&b), 3);
        // The same block content at another position has another identity.
        let shifted = PrefixBlocks::from_text(&format!("{}{system}", "z".repeat(64)), 16);
        assert_eq!(a.common_prefix(&shifted), 0);
        assert!(!shifted.ids().contains(&a.ids()[1]));
    }

    #[test]
    fn block_ids_chain_the_stable_hash_and_do_not_depend_on_how_the_bytes_are_split() {
        // Block 1 is the stable hash of its bytes; block 2 the same hash seeded with block 1's id.
        let ids = PrefixBlocks::from_text("abcdefgh", 1);
        assert_eq!(ids.ids(), [stable_hash(b"abcd"), stable_hash_with(stable_hash(b"abcd"), b"efgh")]);

        let text: String = (0..5000u32).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
        for block_tokens in [0, 1, 3, 16, 512] {
            for len in [0, 1, 3, 4, 63, 64, 65, 2048, 4999, 5000] {
                let want = PrefixBlocks::from_text(&text[..len], block_tokens);
                for piece in [1, 2, 7, 64, 5000] {
                    let mut h = PrefixHasher::new(block_tokens);
                    for chunk in text.as_bytes()[..len].chunks(piece) {
                        h.feed(chunk);
                    }
                    assert_eq!(h.finish(), want, "block_tokens {block_tokens} len {len} piece {piece}");
                }
            }
        }
    }

    #[test]
    fn partial_blocks_have_no_identity() {
        assert!(PrefixBlocks::from_text("short", 512).is_empty());
        assert_eq!(PrefixBlocks::from_text("abcd", 0).len(), 1);
    }

    #[test]
    fn routing_key_hash_is_its_stable_hash() {
        let k = RoutingKey::new("user-7");
        assert_eq!(k.hash64(), stable_hash(b"user-7"));
        assert_eq!(k.as_str(), "user-7");
    }
}
