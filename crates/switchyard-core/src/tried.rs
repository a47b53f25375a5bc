//! The endpoints a request has already been sent to, as a request key.

use crate::EndpointId;

/// The endpoints earlier attempts of this request went to, oldest first: a retry layer
/// (`switchyard-retry`) puts it in the extensions of each new attempt, and the balancer then picks
/// among the eligible endpoints not in it, when there is one (else among all, as without it).
///
/// A request carries it only when it is retried; a balancer that finds none pays one extension
/// lookup. It holds at most as many ids as a request has attempts (five at most under gRPC's
/// retry policy, gRFC A6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriedEndpoints(pub Vec<EndpointId>);

impl TriedEndpoints {
    /// Whether `endpoint` was tried.
    pub fn contains(&self, endpoint: &EndpointId) -> bool {
        self.0.iter().any(|tried| tried == endpoint)
    }

    /// Records that `endpoint` was tried (once).
    pub fn push(&mut self, endpoint: EndpointId) {
        if !self.contains(&endpoint) {
            self.0.push(endpoint);
        }
    }
}

impl Extend<EndpointId> for TriedEndpoints {
    fn extend<I: IntoIterator<Item = EndpointId>>(&mut self, endpoints: I) {
        for endpoint in endpoints {
            self.push(endpoint);
        }
    }
}
