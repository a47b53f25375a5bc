//! The RPC metrics' handles, made once per method and status and shared by its calls.
//!
//! The request path touches no lock and no cache line another thread writes: each thread finds
//! a method's handles in its own cache ([`RpcMetrics::path`]), holding its own copy (so that the
//! copy's reference count stays on the thread), and counts the calls in flight in its own shard
//! of [`ActiveCalls`], summed when the registry is scraped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use metrics::{Gauge, Histogram, Key, Label, Recorder};
use switchyard_core::Code;

use super::Side;
use crate::histogram::{SHARDS, shard};
use crate::names;
use crate::registry::{METADATA, MetricsRegistry, ScrapeSource, WeakRegistry};

/// Distinct paths that get their own series; the rest share `rpc_method="_OTHER"`, so that a
/// client sending arbitrary paths cannot grow the registry without bound.
const MAX_PATHS: usize = 256;

/// Entries a thread's cache holds (over every [`RpcMetrics`] the thread has served) before it
/// starts over: bounds what the caches of layers dropped since keep alive.
const MAX_CACHED: usize = 4 * MAX_PATHS;

/// [`RpcMetrics`] a thread's cache holds before it starts over.
const MAX_LAYERS: usize = 64;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Handles by path (foldhash: the thread's own map, hashed on every call, needs no defence
/// against flooding more than the bound gives).
type ByPath = foldhash::HashMap<Box<str>, Arc<PathMetrics>>;

thread_local! {
    /// This thread's handles, by [`RpcMetrics`] id (few: searched in turn), then path.
    static CACHE: RefCell<Vec<(u64, ByPath)>> = RefCell::default();
}

/// A count on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicI64);

/// Calls in flight of one method, counted per thread shard: a call's start and end each add to
/// the shard of the thread they run on (not always the same one), so only the sum is the count.
#[derive(Debug, Default)]
pub(crate) struct ActiveCalls {
    shards: [Padded; SHARDS],
}

impl ActiveCalls {
    pub(crate) fn add(&self, n: i64) {
        self.shards[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    fn sum(&self) -> i64 {
        self.shards.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// The RPC metrics of one side (server or client) in one registry.
#[derive(Debug)]
pub(crate) struct RpcMetrics {
    id: u64,
    table: Arc<PathTable>,
}

/// Every method's shared handles; published at each scrape (the calls in flight).
#[derive(Debug)]
struct PathTable {
    side: Side,
    /// Weak: the registry holds this table as a source.
    registry: WeakRegistry,
    paths: RwLock<HashMap<Box<str>, Arc<PathMetrics>>>,
    other: Arc<PathMetrics>,
}

impl RpcMetrics {
    pub(crate) fn new(side: Side, registry: MetricsRegistry) -> Self {
        let other = Arc::new(PathMetrics::new(side, &registry, "_OTHER", "_OTHER", Arc::default()));
        let table =
            Arc::new(PathTable { side, registry: registry.downgrade(), paths: RwLock::default(), other });
        registry.add_source(table.clone());
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), table }
    }

    /// The handles of the RPC at `path` (`/package.Service/Method`): this thread's copy, from its
    /// cache, no lock taken once the thread has seen the path.
    pub(crate) fn path(&self, path: &str) -> Arc<PathMetrics> {
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let index = match cache.iter().position(|(id, _)| *id == self.id) {
                Some(index) => {
                    if let Some(found) = cache[index].1.get(path) {
                        return found.clone();
                    }
                    index
                }
                None => {
                    if cache.len() >= MAX_LAYERS {
                        cache.clear();
                    }
                    cache.push((self.id, ByPath::default()));
                    cache.len() - 1
                }
            };
            if cache.iter().map(|(_, paths)| paths.len()).sum::<usize>() >= MAX_CACHED {
                cache.iter_mut().for_each(|(_, paths)| paths.clear());
            }
            let copy = Arc::new(self.table.path(path).thread_copy());
            cache[index].1.insert(path.into(), copy.clone());
            copy
        })
    }
}

impl PathTable {
    /// The shared handles of `path`, registered on its first call.
    fn path(&self, path: &str) -> Arc<PathMetrics> {
        if let Some(found) = self.paths.read().unwrap_or_else(PoisonError::into_inner).get(path) {
            return found.clone();
        }
        let mut paths = self.paths.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = paths.get(path) {
            return found.clone();
        }
        if paths.len() >= MAX_PATHS {
            return self.other.clone();
        }
        let Some(registry) = self.registry.upgrade() else { return self.other.clone() };
        let (service, method) = split_path(path);
        let metrics = Arc::new(PathMetrics::new(self.side, &registry, service, method, Arc::default()));
        paths.insert(path.into(), metrics.clone());
        metrics
    }
}

impl ScrapeSource for PathTable {
    fn publish(&self, _recorder: &dyn Recorder) {
        let paths = self.paths.read().unwrap_or_else(PoisonError::into_inner);
        for metrics in paths.values().chain(std::iter::once(&self.other)) {
            metrics.active_gauge.set(metrics.active.sum() as f64);
        }
    }
}

/// `/package.Service/Method` as (`package.Service`, `Method`); `unknown` for what is not.
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) if !service.is_empty() && !method.is_empty() && !method.contains('/') => {
            (service, method)
        }
        _ => ("unknown", "unknown"),
    }
}

/// One method's handles: in flight, request and response size, and a duration histogram per status code
/// (registered on the status's first use, so that only statuses seen have series).
#[derive(Debug)]
pub(crate) struct PathMetrics {
    side: Side,
    /// Weak: the registry holds the paths' table as a source.
    registry: WeakRegistry,
    labels: [Label; 3],
    /// The calls in flight, shared by the threads' copies; set on `active_gauge` at the scrape.
    pub(crate) active: Arc<ActiveCalls>,
    active_gauge: Gauge,
    pub(crate) response_size: Histogram,
    pub(crate) request_size: Histogram,
    durations: [OnceLock<Histogram>; 17],
}

impl PathMetrics {
    fn new(
        side: Side,
        registry: &MetricsRegistry,
        service: &str,
        method: &str,
        active: Arc<ActiveCalls>,
    ) -> Self {
        let labels = [
            Label::from_static_parts(names::RPC_SYSTEM, "grpc"),
            Label::new(names::RPC_SERVICE, service.to_owned()),
            Label::new(names::RPC_METHOD, method.to_owned()),
        ];
        let (active_name, size, request_size) = match side {
            Side::Server => {
                (names::RPC_SERVER_ACTIVE, names::RPC_SERVER_RESPONSE_SIZE, names::RPC_SERVER_REQUEST_SIZE)
            }
            Side::Client => {
                (names::RPC_CLIENT_ACTIVE, names::RPC_CLIENT_RESPONSE_SIZE, names::RPC_CLIENT_REQUEST_SIZE)
            }
        };
        Self {
            side,
            registry: registry.downgrade(),
            active_gauge: registry.register_gauge(&Key::from_parts(active_name, labels.to_vec()), &METADATA),
            active,
            response_size: registry.register_histogram(&Key::from_parts(size, labels.to_vec()), &METADATA),
            request_size: registry
                .register_histogram(&Key::from_parts(request_size, labels.to_vec()), &METADATA),
            labels,
            durations: Default::default(),
        }
    }

    /// Other handles on the same series, for one thread.
    fn thread_copy(&self) -> Self {
        Self {
            side: self.side,
            registry: self.registry.clone(),
            labels: self.labels.clone(),
            active: self.active.clone(),
            active_gauge: self.active_gauge.clone(),
            response_size: self.response_size.clone(),
            request_size: self.request_size.clone(),
            durations: self.durations.clone(),
        }
    }

    /// The duration histogram of calls that ended with `code`.
    pub(crate) fn duration(&self, code: Code) -> &Histogram {
        let index = usize::try_from(code.as_i32()).unwrap_or(2).min(16);
        self.durations[index].get_or_init(|| {
            let name = match self.side {
                Side::Server => names::RPC_SERVER_DURATION,
                Side::Client => names::RPC_CLIENT_DURATION,
            };
            let mut labels = self.labels.to_vec();
            labels.push(Label::new(names::RPC_GRPC_STATUS_CODE, code.as_i32().to_string()));
            match self.registry.upgrade() {
                Some(registry) => registry.register_histogram(&Key::from_parts(name, labels), &METADATA),
                None => Histogram::noop(),
            }
        })
    }

    /// The RPC's service and method.
    #[cfg(test)]
    pub(crate) fn service_method(&self) -> (&str, &str) {
        (self.labels[1].value(), self.labels[2].value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_path_splits_into_service_and_method_and_anything_else_is_unknown() {
        assert_eq!(
            split_path("/inference.GRPCInferenceService/ModelInfer"),
            ("inference.GRPCInferenceService", "ModelInfer")
        );
        assert_eq!(split_path("/"), ("unknown", "unknown"));
        assert_eq!(split_path("/a/b/c"), ("unknown", "unknown"));
        assert_eq!(split_path("nope"), ("unknown", "unknown"));
    }

    #[test]
    fn paths_beyond_the_bound_share_one_series() {
        let registry = MetricsRegistry::new();
        let metrics = RpcMetrics::new(Side::Server, registry.clone());
        for i in 0..MAX_PATHS + 10 {
            metrics.path(&format!("/s/m{i}"));
        }
        assert_eq!(metrics.table.paths.read().unwrap_or_else(PoisonError::into_inner).len(), MAX_PATHS);
        assert_eq!(metrics.path("/s/another").service_method(), ("_OTHER", "_OTHER"));
        assert_eq!(metrics.path("/s/m3").service_method(), ("s", "m3"));
    }

    #[test]
    fn calls_in_flight_are_summed_over_threads_at_the_scrape() {
        let registry = MetricsRegistry::new();
        let metrics = Arc::new(RpcMetrics::new(Side::Server, registry.clone()));
        // Three calls start on three threads; one of them ends on a fourth.
        for _ in 0..3 {
            let metrics = metrics.clone();
            std::thread::spawn(move || metrics.path("/s/m").active.add(1)).join().unwrap();
        }
        let other = metrics.clone();
        std::thread::spawn(move || other.path("/s/m").active.add(-1)).join().unwrap();
        let text = registry.render();
        assert!(
            text.contains(
                r#"rpc_server_active_requests{rpc_system="grpc",rpc_service="s",rpc_method="m"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_threads_copy_records_into_the_shared_series() {
        let registry = MetricsRegistry::new();
        let metrics = RpcMetrics::new(Side::Server, registry.clone());
        let first = metrics.path("/s/m");
        assert!(Arc::ptr_eq(&first, &metrics.path("/s/m")), "the thread's cache answers the second call");
        first.duration(Code::Ok).record(0.002);
        std::thread::scope(|s| {
            s.spawn(|| metrics.path("/s/m").duration(Code::Ok).record(0.003));
        });
        let text = registry.render();
        assert!(
            text.contains(
                r#"rpc_server_duration_seconds_count{rpc_system="grpc",rpc_service="s",rpc_method="m",rpc_grpc_status_code="0"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn the_registry_is_freed_when_its_last_handle_goes_though_it_holds_the_paths_table() {
        let registry = MetricsRegistry::new();
        let weak = registry.downgrade();
        let metrics = RpcMetrics::new(Side::Server, registry.clone());
        metrics.path("/s/m").duration(Code::Ok).record(0.001);
        drop((metrics, registry));
        assert!(weak.upgrade().is_none(), "a reference cycle keeps the registry alive");
    }
}
