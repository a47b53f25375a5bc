//! The tower `Layer` that puts a whole service under one [`Limiter`].

use tower_layer::Layer;

use crate::algorithm::LimitAlgorithm;
use crate::limiter::Limiter;
use crate::service::Limit;
use crate::track::HttpPermit;

/// Puts every service it wraps under one shared [`Limiter`]: a tonic server
/// (`Server::builder().layer(..)`), the worker, a gateway pool.
///
/// A request waits in `poll_ready` until the limit has room (backpressure, as tower's
/// `ConcurrencyLimit`); put `switchyard-shed`'s layer (or tower's `LoadShed`) in front to queue
/// boundedly or refuse instead. Its permit lives until the response body ends: a stream counts
/// until its trailers, which give the outcome that feeds the algorithm.
///
/// Responses are HTTP by default ([`HttpPermit`]); [`with_tracking`](Self::with_tracking) takes
/// another [`TrackPermit`](crate::TrackPermit) for services that answer with something else.
#[derive(Debug, Clone)]
pub struct LimitLayer<T = HttpPermit> {
    limiter: Limiter,
    tracking: T,
}

impl LimitLayer {
    /// A layer with a new limiter run by `algorithm`.
    pub fn new(algorithm: impl LimitAlgorithm + 'static) -> Self {
        Self { limiter: Limiter::new(algorithm), tracking: HttpPermit }
    }

    /// A layer over an existing limiter (to read its figures, or share it between stacks).
    pub fn with_limiter(limiter: Limiter) -> Self {
        Self { limiter, tracking: HttpPermit }
    }
}

impl<T> LimitLayer<T> {
    /// The same layer, handing permits to responses with `tracking`.
    pub fn with_tracking<T2>(self, tracking: T2) -> LimitLayer<T2> {
        LimitLayer { limiter: self.limiter, tracking }
    }

    /// The limiter the layer's services share.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S, T: Clone> Layer<S> for LimitLayer<T> {
    type Service = Limit<S, T>;

    fn layer(&self, inner: S) -> Limit<S, T> {
        Limit::with_tracking(inner, self.limiter.clone(), self.tracking.clone())
    }
}
