//! The observer: told once about every request the balancer placed, when it ends.

use std::fmt;
use std::time::Duration;

use switchyard_core::{EndpointId, Outcome};

/// What the balancer learnt about one request when it ended.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Observation<'a> {
    /// The balancer's name, if it was given one (a gateway's pool name).
    pub pool: Option<&'a str>,
    /// The endpoint that served the request.
    pub endpoint: &'a EndpointId,
    /// How the request ended.
    pub outcome: Outcome,
    /// From sending the request to the first byte of its response (for a stream, its first
    /// message: the time to first token), if a byte came.
    pub first_byte: Option<Duration>,
    /// From sending the request to its end (for a stream, its trailers).
    pub latency: Duration,
    /// The request's work, in the units the balancer counts (prompt tokens, or 1).
    pub work: u64,
}

/// Told once per request, when the request ends, with its endpoint, timing and outcome.
///
/// Telemetry and limiters (crates to come) implement it to see every request without wrapping its
/// response body a second time: the balancer already tracks the body to its end. Set it with
/// [`Balance::with_observer`](crate::Balance::with_observer); a balancer without an observer
/// pays one branch per request. `on_end` runs on the task that ended the request (the one
/// polling the response body): keep it short and never block.
pub trait Observer: Send + Sync + fmt::Debug + 'static {
    /// One request ended.
    fn on_end(&self, observation: &Observation<'_>);
}

/// The endpoint the balancer picked, in the request's extensions (as the endpoint's service sees
/// it) and in the response's (as the caller sees it), for layers that report per endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PickedEndpoint(pub EndpointId);

impl fmt::Display for PickedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
