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
    /// found without a lock or a shared write. Each pool's handles are those of one count of the
    /// registry's retirements (see [`MetricsRegistry::retirements`]), and forgotten when it moves.
    static CACHE: RefCell<Vec<CachedPool>> = RefCell::default();
}

/// A thread's handles of one observer's pool.
struct CachedPool {
    observer: u64,
    pool: String,
    retirements: u64,
    endpoints: ByEndpoint,
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
    /// By pool name (`""` for an unnamed balancer), then endpoint; made at the registry's
    /// retirement count held beside them, and dropped when it moves (an endpoint gone from its
    /// board has had its series retired: it gets new ones if it comes back).
    endpoints: RwLock<(u64, ByPool)>,
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
        let retirements = self.registry.retirements();
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let pool_name = pool.unwrap_or("");
            let index = match cache.iter().position(|c| c.observer == self.id && c.pool == pool_name) {
                Some(index) => {
                    let cached = &mut cache[index];
                    if cached.retirements != retirements {
                        cached.endpoints.clear();
                        cached.retirements = retirements;
                    } else if let Some(handles) = cached.endpoints.get(endpoint) {
                        return f(handles);
                    }
                    index
                }
                None => {
                    if cache.len() >= MAX_POOLS {
                        cache.clear();
                    }
                    cache.push(CachedPool {
                        observer: self.id,
                        pool: pool_name.to_owned(),
                        retirements,
                        endpoints: ByEndpoint::default(),
                    });
                    cache.len() - 1
                }
            };
            let Some(handles) = self.handles(pool, endpoint, retirements) else { return };
            if cache.iter().map(|c| c.endpoints.len()).sum::<usize>() >= MAX_CACHED {
                cache.iter_mut().for_each(|c| c.endpoints.clear());
            }
            f(&handles);
            cache[index].endpoints.insert(endpoint.clone(), handles);
        });
    }

    fn handles(
        &self,
        pool: Option<&str>,
        endpoint: &EndpointId,
        retirements: u64,
    ) -> Option<Arc<EndpointHandles>> {
        let pool = pool.unwrap_or("");
        let found = {
            let shared = self.endpoints.read().unwrap_or_else(PoisonError::into_inner);
            (shared.0 == retirements)
                .then(|| shared.1.get(pool).and_then(|endpoints| endpoints.get(endpoint).cloned()))
                .flatten()
        };
        if found.is_some() {
            return found;
        }
        let mut shared = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        if shared.0 != retirements {
            // Series were retired since these handles were made: the registry gives a live
            // endpoint's series back as they are, and a retired one's anew.
            shared.1.clear();
            shared.0 = retirements;
        }
        let endpoints = &mut shared.1;
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
