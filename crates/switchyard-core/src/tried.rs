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
