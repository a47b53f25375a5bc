//! The tower `Layer` that puts a whole service under one [`Limiter`].

use tower_layer::Layer;

use crate::algorithm::LimitAlgorithm;
use crate::limiter::Limiter;
use crate::service::Limit;

/// Puts every service it wraps under one shared [`Limiter`]: a tonic server
/// (`Server::builder().layer(..)`), the worker, a gateway pool.
///
/// A request waits in `poll_ready` until the limit has room (backpressure, as tower's
/// `ConcurrencyLimit`); put `switchyard-shed`'s layer (or tower's `LoadShed`) in front to queue
/// boundedly or refuse instead. Its permit lives until the response body ends: a stream counts
/// until its trailers, which give the outcome that feeds the algorithm.
#[derive(Debug, Clone)]
pub struct LimitLayer {
    limiter: Limiter,
}

impl LimitLayer {
    /// A layer with a new limiter run by `algorithm`.
    pub fn new(algorithm: impl LimitAlgorithm + 'static) -> Self {
        Self { limiter: Limiter::new(algorithm) }
    }

    /// A layer over an existing limiter (to read its figures, or share it between stacks).
    pub fn with_limiter(limiter: Limiter) -> Self {
        Self { limiter }
    }

    /// The limiter the layer's services share.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit::new(inner, self.limiter.clone())
    }
}
