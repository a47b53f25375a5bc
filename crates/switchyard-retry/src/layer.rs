//! `RetryLayer`: wraps a service in [`Retry`].

use std::sync::Arc;

use tower::Layer;

use crate::config::{ConfigError, RetryConfig};
use crate::service::{Policy, Retry};
use crate::stats::RetryStats;

/// Retries the requests of the service it wraps by a [`RetryConfig`], sharing one budget among
/// every clone.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: Arc<Policy>,
}

impl RetryLayer {
    /// A layer retrying by `config` (checked: an error names the field out of range), with its
    /// jitter drawn from seed 0.
    pub fn new(config: RetryConfig) -> Result<Self, ConfigError> {
        Self::with_seed(config, 0)
    }

    /// The same, drawing its backoff jitter from `seed`.
    pub fn with_seed(config: RetryConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self { policy: Arc::new(Policy::new(config, seed)) })
    }

    /// What the layer has done so far: calls, retries, and retries refused by the budget.
    pub fn stats(&self) -> RetryStats {
        self.policy.stats()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.policy.clone())
    }
}
