//! The LoadBoard: every endpoint's load, in one place.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use switchyard_core::{Endpoint, EndpointId, Load};
use tokio::time::Instant;

use crate::EndpointState;

/// Every endpoint's live load, published by the balancers that track it.
///
/// The balancer is the one source of truth for load: it adds an endpoint's [`EndpointState`] here
/// when discovery inserts it, and takes it away when discovery removes it (once its requests in
/// flight have ended: until then it shows as draining) or the balancer is dropped. The gateway's
/// admin API reads snapshots (as the coming autoscaler and telemetry will); nobody keeps a second
/// count. Several balancers (one per pool of a gateway) may share one board,
/// provided their endpoint ids differ.
/// Cloning gives another handle on the same board.
#[derive(Clone, Default, Debug)]
pub struct LoadBoard {
    endpoints: Arc<RwLock<BTreeMap<EndpointId, Arc<EndpointState>>>>,
}

/// One endpoint's entry in a [`LoadBoard`] snapshot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct EndpointLoad {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its load at the time of the snapshot.
    pub load: Load,
    /// Whether outlier detection has ejected it.
    pub ejected: bool,
    /// Whether discovery removed it while requests were in flight: it takes no new request and
    /// leaves the board when they end.
    pub draining: bool,
}

impl LoadBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every endpoint's load now, ordered by endpoint id.
    pub fn snapshot(&self) -> Vec<EndpointLoad> {
        let now = Instant::now();
        self.read().values().map(|s| entry(s, now)).collect()
    }

    /// One endpoint's load now.
    pub fn get(&self, id: &EndpointId) -> Option<EndpointLoad> {
        self.read().get(id).map(|s| entry(s, Instant::now()))
    }

    /// One endpoint's live state, for readers that poll it often.
    pub fn state(&self, id: &EndpointId) -> Option<Arc<EndpointState>> {
        self.read().get(id).cloned()
    }

    /// How many endpoints are on the board.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the board is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub(crate) fn insert(&self, state: Arc<EndpointState>) {
        self.endpoints.write().unwrap_or_else(PoisonError::into_inner).insert(state.id().clone(), state);
    }

    pub(crate) fn remove(&self, id: &EndpointId, state: &Arc<EndpointState>) {
        let mut map = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        // Only if it is still the same endpoint: a newer one may have replaced it.
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, state)) {
            map.remove(id);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<EndpointId, Arc<EndpointState>>> {
        self.endpoints.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry(state: &EndpointState, now: Instant) -> EndpointLoad {
    EndpointLoad {
        endpoint: (*state.endpoint()).clone(),
        load: state.load(now),
        ejected: state.is_ejected(now),
        draining: state.is_draining(),
    }
}
