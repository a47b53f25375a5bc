//! The RPC metrics' handles, made once per method and status and shared by its calls.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use metrics::{Gauge, Histogram, Key, Label, Recorder};
use switchyard_core::Code;

use super::Side;
use crate::names;
use crate::registry::{METADATA, MetricsRegistry};

/// Distinct paths that get their own series; the rest share `rpc_method="_OTHER"`, so that a
/// client sending arbitrary paths cannot grow the registry without bound.
const MAX_PATHS: usize = 256;

/// The RPC metrics of one side (server or client) in one registry.
#[derive(Debug)]
pub(crate) struct RpcMetrics {
    side: Side,
    registry: MetricsRegistry,
    paths: RwLock<HashMap<Box<str>, Arc<PathMetrics>>>,
    other: Arc<PathMetrics>,
}

impl RpcMetrics {
    pub(crate) fn new(side: Side, registry: MetricsRegistry) -> Self {
        let other = Arc::new(PathMetrics::new(side, &registry, "_OTHER", "_OTHER"));
        Self { side, registry, paths: RwLock::default(), other }
    }

    /// The handles of the RPC at `path` (`/package.Service/Method`).
    pub(crate) fn path(&self, path: &str) -> Arc<PathMetrics> {
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
        let (service, method) = split_path(path);
        let metrics = Arc::new(PathMetrics::new(self.side, &self.registry, service, method));
        paths.insert(path.into(), metrics.clone());
        metrics
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

/// One method's handles: in flight, response size, and a duration histogram per status code
/// (registered on the status's first use, so that only statuses seen have series).
#[derive(Debug)]
pub(crate) struct PathMetrics {
    side: Side,
    registry: MetricsRegistry,
    labels: [Label; 3],
    pub(crate) active: Gauge,
    pub(crate) response_size: Histogram,
    durations: [OnceLock<Histogram>; 17],
}

impl PathMetrics {
    fn new(side: Side, registry: &MetricsRegistry, service: &str, method: &str) -> Self {
        let labels = [
            Label::from_static_parts(names::RPC_SYSTEM, "grpc"),
            Label::new(names::RPC_SERVICE, service.to_owned()),
            Label::new(names::RPC_METHOD, method.to_owned()),
        ];
        let (active, size) = match side {
            Side::Server => (names::RPC_SERVER_ACTIVE, names::RPC_SERVER_RESPONSE_SIZE),
            Side::Client => (names::RPC_CLIENT_ACTIVE, names::RPC_CLIENT_RESPONSE_SIZE),
        };
        Self {
            side,
            registry: registry.clone(),
            active: registry.register_gauge(&Key::from_parts(active, labels.to_vec()), &METADATA),
            response_size: registry.register_histogram(&Key::from_parts(size, labels.to_vec()), &METADATA),
            labels,
            durations: Default::default(),
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
            self.registry.register_histogram(&Key::from_parts(name, labels), &METADATA)
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
        let metrics = RpcMetrics::new(Side::Server, MetricsRegistry::new());
        for i in 0..MAX_PATHS + 10 {
            metrics.path(&format!("/s/m{i}"));
        }
        assert_eq!(metrics.paths.read().unwrap_or_else(PoisonError::into_inner).len(), MAX_PATHS);
        assert_eq!(metrics.path("/s/another").service_method(), ("_OTHER", "_OTHER"));
        assert_eq!(metrics.path("/s/m3").service_method(), ("s", "m3"));
    }
}
