//! The tower `Layer` that puts a shed queue in front of a service.

use std::sync::Arc;

use tower_layer::Layer;

use crate::config::ShedConfig;
use crate::queue::Queue;
use crate::service::Shed;
use crate::stats::ShedStats;

/// Puts one shared, bounded admission queue in front of every service it wraps: a tonic server,
/// a gateway pool. The service below says when it has room through its `poll_ready` (put
/// `switchyard-limit`'s `LimitLayer`, or tower's `ConcurrencyLimit`, under it).
#[derive(Clone)]
pub struct ShedLayer {
    queue: Arc<Queue>,
}

impl ShedLayer {
    /// A layer with a new queue set up by `config`.
    pub fn new(config: ShedConfig) -> Self {
        Self { queue: Arc::new(Queue::new(config)) }
    }

    /// The queue's figures: waiting, admitted and refused by reason and class.
    pub fn stats(&self) -> ShedStats {
        self.queue.stats()
    }

    /// The queue's settings.
    pub fn config(&self) -> &ShedConfig {
        &self.queue.config
    }
}

impl std::fmt::Debug for ShedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShedLayer").field("config", &self.queue.config).finish()
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed::new(inner, self.queue.clone())
    }
}
