//! [`CacheLayer`]: builds [`Cache`] services that share one store.

use std::sync::Arc;

use tower::Layer;

use crate::config::CacheConfig;
use crate::service::{Cache, Shared};
use crate::store::{CacheStats, Store};

/// Builds [`Cache`] services from one [`CacheConfig`]; every service it builds (and every clone
/// of them) shares one store, so a tonic server's connections, or a pool's callers, share
/// their answers.
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl CacheLayer {
    /// A layer caching as `config` says, with a new, empty store.
    pub fn new(config: CacheConfig) -> Self {
        let store = Store::new(&config);
        Self { shared: Arc::new(Shared { config, store }) }
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.shared.config
    }

    /// What the cache has done, and its size now.
    pub fn stats(&self) -> CacheStats {
        self.shared.store.stats()
    }

    /// Runs the store's pending maintenance (evictions to the byte bound, expirations) now,
    /// rather than on later calls.
    pub async fn run_pending_tasks(&self) {
        self.shared.store.cache.run_pending_tasks().await;
    }
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache::from_shared(inner, self.shared.clone())
    }
}
