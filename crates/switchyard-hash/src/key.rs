//! Which key a hash policy routes a request by.

use switchyard_balance::policy::RequestInfo;
use switchyard_core::{PrefixBlocks, RoutingKey, stable_hash};

/// Prefix blocks a request without a session key is keyed by, by default: 2.
///
/// A block's identity names the whole prefix up to it, so keying by the `k`-th block sends
/// prompts that share their first `k` blocks to one endpoint. The first block alone is often a
/// system prompt every request shares (every request of the Mooncake conversation trace opens
/// with block 0), which would send everything to one endpoint; the second tells conversations
/// apart while every turn of a conversation still shares it.
pub const DEFAULT_KEY_BLOCKS: usize = 2;

/// The request's position on a hash ring: its [`RoutingKey`] (a session, user or conversation
/// id, which the key layer reads from a header such as `x-session-id`), hashed with
/// [`RoutingKey::hash64`]; or, without one, the identity of its [`PrefixBlocks`] block number
/// `key_blocks` (or its last block, if it has fewer), so that prompts sharing that prefix meet
/// on one endpoint. `None` when the request has neither.
pub fn request_key(request: &RequestInfo<'_>, key_blocks: usize) -> Option<u64> {
    let extensions = request.extensions?;
    if let Some(key) = extensions.get::<RoutingKey>() {
        return Some(key.hash64());
    }
    let ids = extensions.get::<PrefixBlocks>()?.ids();
    let id = ids.get(key_blocks.max(1).min(ids.len()).checked_sub(1)?)?;
    // Block ids from the key layer are hashes already, but a trace's are small integers: spread
    // them over the ring.
    Some(stable_hash(&id.to_le_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn the_session_key_wins_then_the_first_block() {
        let mut ext = http::Extensions::new();
        let now = Instant::now();
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now), 2), None);
        assert_eq!(request_key(&RequestInfo::new(None, now), 2), None);
        ext.insert(PrefixBlocks::new(vec![]));
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now), 2), None);
        ext.insert(PrefixBlocks::new(vec![7, 8, 9]));
        let block = |id: u64| Some(stable_hash(&id.to_le_bytes()));
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now), 2), block(8));
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now), 0), block(7));
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now), 9), block(9));
        ext.insert(RoutingKey::new("s"));
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now), 2), Some(RoutingKey::new("s").hash64()));
    }
}
