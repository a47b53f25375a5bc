//! The endpoints a request has already been sent to, as a request key, and where a balancer
//! says which one it picks for an attempt still under way.

use std::sync::{Arc, OnceLock};

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

/// Where a balancer records the endpoint it picked for a request, for a layer above it that has
/// to know before any response comes: a retry layer puts one in the first attempt of a call it
/// may hedge, and the hedge, sent while that attempt is still out, carries the endpoint in its
/// [`TriedEndpoints`] so that the balancer sends it elsewhere (gRFC A6: a hedge goes to another
/// backend).
///
/// Clones share the record; only the first pick is kept. A balancer that finds none in a
/// request pays one extension lookup.
#[derive(Clone, Debug, Default)]
pub struct PickRecorder(Arc<OnceLock<EndpointId>>);

impl PickRecorder {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `endpoint` as picked, unless one was already.
    pub fn record(&self, endpoint: &EndpointId) {
        if self.0.get().is_none() {
            let _ = self.0.set(endpoint.clone());
        }
    }

    /// The endpoint picked, once one was.
    pub fn picked(&self) -> Option<&EndpointId> {
        self.0.get()
    }
}

/// Marks an attempt whose failure at its endpoint goes back to the caller: nothing above will
/// send it again once it has reached a replica. A retry layer (`switchyard-retry`) puts it in
/// every attempt of a method not marked idempotent, and in the last attempt of one that is.
///
/// The balancer keeps such an attempt off an endpoint under suspicion (its last calls failed, or
/// it stalled at many times its speed, within the outlier detector's base ejection time) while
/// another eligible endpoint is not, so that a failing or slowed replica is tried again by calls
/// a retry can save, not by the ones it cannot. A request without it is balanced as before: a
/// balancer with no retry layer above it sees none, and pays one extension lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FinalAttempt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_keeps_the_first_pick_and_its_clones_see_it() {
        let recorder = PickRecorder::new();
        let seen_by = recorder.clone();
        assert_eq!(seen_by.picked(), None);
        recorder.record(&EndpointId::from("a"));
        recorder.record(&EndpointId::from("b"));
        assert_eq!(seen_by.picked(), Some(&EndpointId::from("a")));
    }
}
