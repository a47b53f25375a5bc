//! Per-endpoint latency histograms from the balancer's [`Observer`] hook.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{Histogram, Key, Label, Recorder};
use switchyard_balance::{Observation, Observer};
use switchyard_core::{EndpointId, Outcome};

use crate::names;
use crate::registry::{METADATA, MetricsRegistry};

/// Distinct (pool, endpoint) pairs that get their own series; endpoints come and go with
/// discovery, and the registry must not grow without bound.
const MAX_ENDPOINTS: usize = 1024;

/// Entries a thread's cache holds (over every observer it has served) before it starts over.
const MAX_CACHED: usize = 4 * MAX_ENDPOINTS;

/// (Observer, pool) pairs a thread's cache holds before it starts over.
const MAX_POOLS: usize = 64;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Handles by pool, then endpoint.
type ByPool = HashMap<String, HashMap<EndpointId, Arc<EndpointHandles>>>;

/// A thread's handles of one pool, by endpoint (foldhash: the thread's own map, bounded).
type ByEndpoint = foldhash::HashMap<EndpointId, Arc<EndpointHandles>>;

thread_local! {
    /// This thread's handles, by observer id and pool (few: searched in turn), then endpoint:
    /// found without a lock or a shared write.
    static CACHE: RefCell<Vec<(u64, String, ByEndpoint)>> = RefCell::default();
}

/// An [`Observer`] that records each request the balancer placed, when it ends, into
/// `switchyard_endpoint_duration_seconds{pool, endpoint, outcome}` and (when a first byte came)
/// `switchyard_endpoint_time_to_first_byte_seconds{pool, endpoint}`: the per-replica latency
/// percentiles that the board's EWMA cannot give.
///
/// The balancer already tracks every response to its end and tells its observer once, so this
/// wraps no body and counts nothing the board counts. Per request: a lookup of the endpoint's
/// handles in the thread's own cache (a lock only the first time the thread sees the endpoint),
/// then two histogram records.
#[derive(Debug)]
pub struct EndpointObserver {
    id: u64,
    registry: MetricsRegistry,
    /// By pool name (`""` for an unnamed balancer), then endpoint.
    endpoints: RwLock<ByPool>,
}

#[derive(Debug)]
struct EndpointHandles {
    first_byte: Histogram,
    /// By outcome: ok, failed, overloaded, cancelled.
    durations: [Histogram; 4],
}

impl EndpointObserver {
    /// An observer recording into `registry`.
    pub fn new(registry: MetricsRegistry) -> Self {
        registry.describe_histogram(
            names::ENDPOINT_DURATION.into(),
            Some(metrics::Unit::Seconds),
            "Duration of requests on the endpoint, from the pick to the end of the response, by outcome."
                .into(),
        );
        registry.describe_histogram(
            names::ENDPOINT_FIRST_BYTE.into(),
            Some(metrics::Unit::Seconds),
            "Time from the pick to the first byte of the response (for a stream, the time to first token)."
                .into(),
        );
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), registry, endpoints: RwLock::default() }
    }

    /// Runs `f` on the handles of `endpoint` in `pool`, from the thread's cache.
    fn with_handles(&self, pool: Option<&str>, endpoint: &EndpointId, f: impl FnOnce(&EndpointHandles)) {
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let pool_name = pool.unwrap_or("");
            let index = match cache.iter().position(|(id, p, _)| *id == self.id && p == pool_name) {
                Some(index) => {
                    if let Some(handles) = cache[index].2.get(endpoint) {
                        return f(handles);
                    }
                    index
                }
                None => {
                    if cache.len() >= MAX_POOLS {
                        cache.clear();
                    }
                    cache.push((self.id, pool_name.to_owned(), ByEndpoint::default()));
                    cache.len() - 1
                }
            };
            let Some(handles) = self.handles(pool, endpoint) else { return };
            if cache.iter().map(|(_, _, endpoints)| endpoints.len()).sum::<usize>() >= MAX_CACHED {
                cache.iter_mut().for_each(|(_, _, endpoints)| endpoints.clear());
            }
            f(&handles);
            cache[index].2.insert(endpoint.clone(), handles);
        });
    }

    fn handles(&self, pool: Option<&str>, endpoint: &EndpointId) -> Option<Arc<EndpointHandles>> {
        let pool = pool.unwrap_or("");
        let found = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pool)
            .and_then(|endpoints| endpoints.get(endpoint).cloned());
        if found.is_some() {
            return found;
        }
        let mut endpoints = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = endpoints.get(pool).and_then(|e| e.get(endpoint)) {
            return Some(found.clone());
        }
        if endpoints.values().map(HashMap::len).sum::<usize>() >= MAX_ENDPOINTS {
            return None;
        }
        let labels =
            vec![Label::new(names::POOL, pool.to_owned()), Label::new(names::ENDPOINT, endpoint.to_string())];
        let histogram = |name: &'static str, extra: Option<&'static str>| {
            let mut labels = labels.clone();
            if let Some(outcome) = extra {
                labels.push(Label::from_static_parts("outcome", outcome));
            }
            self.registry.register_histogram(&Key::from_parts(name, labels), &METADATA)
        };
        let handles = Arc::new(EndpointHandles {
            first_byte: histogram(names::ENDPOINT_FIRST_BYTE, None),
            durations: ["ok", "failed", "overloaded", "cancelled"]
                .map(|o| histogram(names::ENDPOINT_DURATION, Some(o))),
        });
        endpoints.entry(pool.to_owned()).or_default().insert(endpoint.clone(), handles.clone());
        Some(handles)
    }
}

impl Observer for EndpointObserver {
    fn on_end(&self, observation: &Observation<'_>) {
        let outcome = match observation.outcome {
            Outcome::Ok => 0,
            Outcome::Overloaded { .. } => 2,
            Outcome::Cancelled => 3,
            _ => 1,
        };
        self.with_handles(observation.pool, observation.endpoint, |handles| {
            handles.durations[outcome].record(observation.latency.as_secs_f64());
            if let Some(first_byte) = observation.first_byte {
                handles.first_byte.record(first_byte.as_secs_f64());
            }
        });
    }
}
