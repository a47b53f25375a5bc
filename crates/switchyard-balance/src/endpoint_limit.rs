//! Per-endpoint concurrency limits: each endpoint's own limit, learnt by a `switchyard-limit`
//! algorithm from the balancer's own tracking of it.
//!
//! With [`Balance::with_endpoint_limit`](crate::Balance::with_endpoint_limit), every endpoint
//! gets an algorithm of its own (built by an [`EndpointLimit`]). It is fed from the endpoint's
//! [`EndpointState`](crate::EndpointState), the one count of its load, when each request ends:
//! the time to the first byte as the RTT (the latency the balancer already samples), the
//! requests in flight there when it was sent, and its [`Outcome`](switchyard_core::Outcome)
//! (classified by [`Signal::of`](switchyard_limit::Signal::of)). There is no second count.
//!
//! The limit in force is on the endpoint's state ([`EndpointState::limit`](crate::EndpointState::limit))
//! and in its [`Load`](switchyard_core::Load) on the board (hence in the gateway's admin API).
//! Policies see only the endpoints below their limit; when every eligible endpoint is at its
//! limit, the balancer is not ready (`poll_ready` waits until a request ends), so that the
//! request waits in the queue in front of it (`switchyard-shed`'s) rather than overloading a
//! replica.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

use switchyard_core::{Spec, SpecError};
use switchyard_limit::LimitAlgorithm;

/// How the balancer builds each endpoint's limit algorithm.
///
/// ```
/// use switchyard_balance::EndpointLimit;
/// use switchyard_core::Spec;
///
/// let vegas = EndpointLimit::from_spec(&Spec::named("vegas")).unwrap();
/// assert_eq!(vegas.name(), "vegas");
/// let fixed = EndpointLimit::new(|| Box::new(switchyard_limit::Fixed::new(8)));
/// assert_eq!(fixed.name(), "fixed");
/// ```
#[derive(Clone)]
pub struct EndpointLimit {
    build: Arc<dyn Fn() -> Box<dyn LimitAlgorithm> + Send + Sync>,
    name: &'static str,
}

impl EndpointLimit {
    /// Limits built by `build`, one call per endpoint.
    pub fn new(build: impl Fn() -> Box<dyn LimitAlgorithm> + Send + Sync + 'static) -> Self {
        let name = build().name();
        Self { build: Arc::new(build), name }
    }

    /// Limits of the algorithm `spec` names, with its parameters
    /// ([`switchyard_limit::algorithm_from_spec`]).
    pub fn from_spec(spec: &Spec) -> Result<Self, SpecError> {
        switchyard_limit::algorithm_from_spec(spec)?;
        let spec = spec.clone();
        Ok(Self::new(move || {
            // Checked above: the same spec builds again.
            switchyard_limit::algorithm_from_spec(&spec)
                .unwrap_or_else(|_| Box::new(switchyard_limit::Vegas::default()))
        }))
    }

    /// The algorithm's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn build(&self) -> Box<dyn LimitAlgorithm> {
        (self.build)()
    }
}

impl fmt::Debug for EndpointLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndpointLimit").field(&self.name).finish()
    }
}

/// Callers waiting for an endpoint below its limit; all are woken when a request ends.
#[derive(Debug, Default)]
pub(crate) struct LimitWaiters(Mutex<Vec<Waker>>);

impl LimitWaiters {
    pub(crate) fn register(&self, waker: &Waker) {
        let mut waiters = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    pub(crate) fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in waiters {
            waker.wake();
        }
    }
}
