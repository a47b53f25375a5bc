//! Which key a hash policy routes a request by.

use switchyard_balance::policy::RequestInfo;
use switchyard_core::{PrefixBlocks, RoutingKey};

/// The request's position on a hash ring: its [`RoutingKey`] (a session, user or conversation
/// id, which the key layer reads from a header such as `x-session-id`), hashed with
/// [`RoutingKey::hash64`]; or, without one, the identity of its first [`PrefixBlocks`] block, so
/// that prompts opening with the same block (a conversation's earlier turns, a shared system
/// prompt) meet on one endpoint. `None` when the request has neither.
pub fn request_key(request: &RequestInfo<'_>) -> Option<u64> {
    let extensions = request.extensions?;
    if let Some(key) = extensions.get::<RoutingKey>() {
        return Some(key.hash64());
    }
    extensions.get::<PrefixBlocks>().and_then(|p| p.ids().first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn the_session_key_wins_then_the_first_block() {
        let mut ext = http::Extensions::new();
        let now = Instant::now();
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now)), None);
        assert_eq!(request_key(&RequestInfo::new(None, now)), None);
        ext.insert(PrefixBlocks::new(vec![7, 8]));
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now)), Some(7));
        ext.insert(RoutingKey::new("s"));
        assert_eq!(request_key(&RequestInfo::new(Some(&ext), now)), Some(RoutingKey::new("s").hash64()));
    }
}
