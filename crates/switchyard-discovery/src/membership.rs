//! The set a source has announced, and the changes that move it to a new set.
//!
//! Every source keeps one [`Membership`]: it is what makes the sources agree on their semantics.
//! A new snapshot ([`Membership::replace`]) yields a removal for each endpoint that vanished and
//! an insert for each that is new or changed (address, weight or labels), and nothing for an
//! endpoint that is the same as before; a single insert or removal ([`Membership::insert`],
//! [`Membership::remove`]) yields a change only if it changes the set.

use std::collections::BTreeMap;

use switchyard_core::{Endpoint, EndpointId};
use tower::discover::Change;

/// One change of a pool's endpoints, as every source announces it.
pub type EndpointChange = Change<EndpointId, Endpoint>;

/// The endpoints a source has announced so far, keyed by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    endpoints: BTreeMap<EndpointId, Endpoint>,
}

impl Membership {
    /// No endpoints.
    pub fn new() -> Self {
        Self::default()
    }

    /// The changes that make the set `next` (ids are taken from the endpoints; a later
    /// duplicate id wins): removals first, in id order, then inserts in id order.
    pub fn replace(&mut self, next: impl IntoIterator<Item = Endpoint>) -> Vec<EndpointChange> {
        let next: BTreeMap<EndpointId, Endpoint> = next.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut changes: Vec<EndpointChange> = self
            .endpoints
            .keys()
            .filter(|id| !next.contains_key(*id))
            .map(|id| Change::Remove(id.clone()))
            .collect();
        for (id, endpoint) in &next {
            if self.endpoints.get(id) != Some(endpoint) {
                changes.push(Change::Insert(id.clone(), endpoint.clone()));
            }
        }
        self.endpoints = next;
        changes
    }

    /// The change that adds or updates `endpoint`, if it is new or differs from what was
    /// announced.
    pub fn insert(&mut self, endpoint: Endpoint) -> Option<EndpointChange> {
        if self.endpoints.get(&endpoint.id) == Some(&endpoint) {
            return None;
        }
        self.endpoints.insert(endpoint.id.clone(), endpoint.clone());
        Some(Change::Insert(endpoint.id.clone(), endpoint))
    }

    /// The change that removes `id`, if it was announced.
    pub fn remove(&mut self, id: &EndpointId) -> Option<EndpointChange> {
        self.endpoints.remove(id).map(|_| Change::Remove(id.clone()))
    }

    /// The endpoints announced, in id order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// How many endpoints are announced.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(changes: &[EndpointChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Insert(id, _) => format!("+{id}"),
                Change::Remove(id) => format!("-{id}"),
            })
            .collect()
    }

    #[test]
    fn a_snapshot_yields_only_what_changed() {
        let mut m = Membership::new();
        let a = Endpoint::new("a", "http://10.0.0.1:1");
        let b = Endpoint::new("b", "http://10.0.0.2:1");
        assert_eq!(ids(&m.replace([a.clone(), b.clone()])), ["+a", "+b"]);
        assert!(m.replace([b.clone(), a.clone()]).is_empty(), "unchanged is not re-announced");
        let a2 = a.clone().with_weight(3);
        let c = Endpoint::new("c", "http://10.0.0.3:1");
        assert_eq!(ids(&m.replace([a2.clone(), c])), ["-b", "+a", "+c"]);
        assert!(m.insert(a2).is_none(), "no duplicate insert");
        assert_eq!(ids(&m.remove(&"b".into()).into_iter().collect::<Vec<_>>()), Vec::<String>::new());
        assert_eq!(ids(&m.remove(&"c".into()).into_iter().collect::<Vec<_>>()), ["-c"]);
        assert_eq!(m.len(), 1);
    }
}
