//! How a response holds its request's permit until it ends.

use http_body::Body;

use crate::body::LimitBody;
use crate::limiter::Permit;
use crate::pace::{PaceBudget, PaceCheck, PaceParams};

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

/// [`TrackPermit`] for HTTP and gRPC responses that paces streams: as [`HttpPermit`], and a
/// response carrying a [`PaceBudget`] in its extensions (put there by
/// [`PaceBudgetLayer`](crate::PaceBudgetLayer) for requests with a
/// [`RequestSize`](switchyard_core::RequestSize)) has its gRPC messages judged by a
/// [`PaceCheck`] with these parameters; its permit is settled as a drop when it falls behind.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacedHttpPermit {
    params: PaceParams,
}

impl PacedHttpPermit {
    /// Paces with `params`.
    pub fn new(params: PaceParams) -> Self {
        Self { params }
    }
}

impl<B: Body> TrackPermit<http::Response<B>> for PacedHttpPermit {
    type Output = http::Response<LimitBody<B>>;

    fn track(&self, response: http::Response<B>, permit: Permit) -> Self::Output {
        match response.extensions().get::<PaceBudget>().copied() {
            Some(budget) => {
                LimitBody::wrap_paced(response, Some(permit), PaceCheck::new(self.params, budget))
            }
            None => LimitBody::wrap(response, Some(permit)),
        }
    }
}
