//! How a response holds its request's permit until it ends.

use http_body::Body;

use crate::body::LimitBody;
use crate::limiter::Permit;

/// Hands a request's [`Permit`] to its response, which finishes it when the response ends (as
/// the balancer's `TrackCompletion` does with its completions). [`HttpPermit`] does this for
/// HTTP and gRPC responses; a service whose response is something else (the lab's simulated
/// token streams) brings its own.
pub trait TrackPermit<Rsp> {
    /// The response handed back to the caller.
    type Output;

    /// Wraps `response` so that `permit` is finished when it ends.
    fn track(&self, response: Rsp, permit: Permit) -> Self::Output;
}

/// [`TrackPermit`] for HTTP and gRPC responses: the body ([`LimitBody`]) holds the permit until
/// its end, the RTT taken at its first frame, the outcome read from its trailers.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpPermit;

impl<B: Body> TrackPermit<http::Response<B>> for HttpPermit {
    type Output = http::Response<LimitBody<B>>;

    fn track(&self, response: http::Response<B>, permit: Permit) -> Self::Output {
        LimitBody::wrap(response, Some(permit))
    }
}
