//! Fixtures the prefix-aware policies' unit tests share.

use std::sync::Arc;

use switchyard_balance::EndpointState;
use switchyard_core::{Endpoint, PrefixBlocks};

/// `n` idle endpoints `e0`, `e1`, ...
pub(crate) fn states(n: usize) -> Vec<Arc<EndpointState>> {
    (0..n)
        .map(|i| Arc::new(EndpointState::new(Endpoint::new(format!("e{i}"), "http://e"), Default::default())))
        .collect()
}

/// A request's extensions: the prefix blocks `ids` and a prompt of 512 tokens a block.
pub(crate) fn blocks(ids: &[u64]) -> http::Extensions {
    let mut e = http::Extensions::new();
    e.insert(PrefixBlocks::new(ids.to_vec()));
    e.insert(switchyard_core::RequestSize::new(512 * ids.len() as u32, 10));
    e
}
