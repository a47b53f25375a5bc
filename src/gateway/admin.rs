//! The admin API: HTTP/1.1 and JSON, on its own listener (loopback by default).
//!
//! - `GET /endpoints`: the gateway's state (`serving`, or `draining` from the shutdown signal to
//!   the end of the drain, during which the admin API keeps answering), every pool, its policy,
//!   and each endpoint's load as the pool's balancer tracks it:
//!   `{"state","pools":[{"name","policy","endpoints":[{"endpoint","load","ejected","draining","source","state"}]}]}`,
//!   where an endpoint's `source` is the discovery source that announced it (`config` for a
//!   pool's fixed `endpoints`) and its `state` is `healthy`, `ejected`, `draining` or `held back`
//!   (a pool with `[pool.health]`: not SERVING; such an entry has `endpoint` but no `load`).
//!   A pool with overload layers lists them in `layers`, outermost first: a `limit`'s
//!   `{"layer":"limit","position","algorithm","limit","in_flight","admitted","dropped"}` (the
//!   limit in force) and a `shed` queue's `{"layer":"shed","position","waiting","overloaded",
//!   "admitted","refused"}`.
//! - `PUT /policy` with `{"policy":"round-robin","pool":"default"}` (`pool` may be left out when
//!   there is one pool): switches the pool's policy atomically (requests in flight stay where they
//!   are) and answers `{"pool","policy","previous"}`; 400 for an unknown policy (the message lists
//!   the known ones) or a malformed body, 404 for an unknown pool.
//!
//! - `GET /metrics`: Prometheus text exposition: each pool's endpoints as its balancer tracks
//!   them (read from the load board at the scrape), the policy in force, and the RPC metrics
//!   when they are on (see `switchyard_telemetry`).
//! - `GET /debug/allocations`: `{"allocations","bytes"}`, the process's allocations since it
//!   started, when the binary counts them (`switchyard-count-allocations`, see
//!   [`crate::allocations`]); 404 from `switchyard`, which does not.
//!
//! Errors are `{"error": "..."}`. With a bearer token, changes (and, off loopback, every call)
//! are let through only with `Authorization: Bearer TOKEN`; the others are answered 401 before
//! they reach this module (see `admin_auth`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use switchyard_balance::{EndpointLoad, PolicySpec};
use switchyard_core::Endpoint;
use switchyard_discovery::SOURCE_LABEL;
use switchyard_telemetry::{LayerState, MetricsRegistry};

use super::pool::Pool;

/// The largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// The answer of `GET /endpoints`.
#[derive(Debug, Serialize)]
struct EndpointsView<'a> {
    state: &'static str,
    pools: Vec<PoolView<'a>>,
}

#[derive(Debug, Serialize)]
struct PoolView<'a> {
    name: &'a str,
    policy: &'static str,
    /// The pool's overload layers in force (its `limit`s and `shed` queues), outermost first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layers: Vec<LayerView>,
    endpoints: Vec<EndpointView>,
}

/// One of a pool's layers: its kind, position, algorithm (a limit's) and figures now.
#[derive(Debug, Serialize)]
struct LayerView {
    layer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithm: Option<&'static str>,
    #[serde(flatten)]
    figures: BTreeMap<&'static str, f64>,
}

impl From<LayerState> for LayerView {
    fn from(state: LayerState) -> Self {
        Self {
            layer: state.layer,
            position: state.label,
            algorithm: state.algorithm,
            figures: state.figures.into_iter().collect(),
        }
    }
}

/// One endpoint: its load (none when held back), where it came from, and its state.
#[derive(Debug, Serialize)]
struct EndpointView {
    #[serde(flatten)]
    load: Option<EndpointLoad>,
    /// The endpoint, when it is held back (else it is in `load`).
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<Endpoint>,
    /// The discovery source that announced it (`config` for the pool's fixed endpoints).
    source: String,
    /// `healthy`, `ejected` (by outlier detection), `draining` (removed, requests in flight) or
    /// `held back` (health watching: not SERVING).
    state: &'static str,
}

impl EndpointView {
    fn held_back(endpoint: Endpoint) -> Self {
        let source = endpoint.labels.get(SOURCE_LABEL).cloned().unwrap_or_else(|| "config".into());
        Self { load: None, endpoint: Some(endpoint), source, state: "held back" }
    }
}

impl From<EndpointLoad> for EndpointView {
    fn from(load: EndpointLoad) -> Self {
        let source = load.endpoint.labels.get(SOURCE_LABEL).cloned().unwrap_or_else(|| "config".into());
        let state = if load.draining {
            "draining"
        } else if load.ejected {
            "ejected"
        } else {
            "healthy"
        };
        Self { load: Some(load), endpoint: None, source, state }
    }
}

/// The body of `PUT /policy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyChange {
    /// A name, or `{"name": ..., parameters...}`.
    policy: PolicySpec,
    pool: Option<String>,
}

/// The answer of `PUT /policy`.
#[derive(Debug, Serialize)]
struct PolicyChanged<'a> {
    pool: &'a str,
    policy: &'static str,
    previous: &'static str,
}

/// The pool's overload layers, outermost first (by their position label).
fn layers(pool: &Pool) -> Vec<LayerView> {
    let mut layers: Vec<LayerView> =
        pool.layer_metrics().iter().filter_map(|source| source.layer_state()).map(LayerView::from).collect();
    layers.sort_by_key(|l| l.position.as_deref().and_then(|p| p.parse::<usize>().ok()).unwrap_or(usize::MAX));
    layers
}

/// Answers one admin request; `draining` once the gateway's drain has begun.
pub(crate) async fn handle(
    pools: Arc<[Pool]>,
    metrics: MetricsRegistry,
    draining: bool,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut response = http::Response::new(Full::new(Bytes::from(metrics.render())));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(switchyard_telemetry::CONTENT_TYPE),
            );
            response
        }
        (&Method::GET, "/endpoints") => {
            let view = EndpointsView {
                state: if draining { "draining" } else { "serving" },
                pools: pools
                    .iter()
                    .map(|p| PoolView {
                        name: p.name(),
                        policy: p.policy().name(),
                        layers: layers(p),
                        endpoints: p
                            .board()
                            .snapshot()
                            .into_iter()
                            .map(EndpointView::from)
                            .chain(p.held_back().into_iter().map(EndpointView::held_back))
                            .collect(),
                    })
                    .collect(),
            };
            json(StatusCode::OK, &view)
        }
        (&Method::PUT, "/policy") => match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => set_policy(&pools, &body.to_bytes()),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
        },
        (_, "/endpoints") => error(StatusCode::METHOD_NOT_ALLOWED, "use GET /endpoints"),
        (_, "/policy") => error(StatusCode::METHOD_NOT_ALLOWED, "use PUT /policy"),
        (&Method::GET, "/debug/allocations") => match crate::allocations::read() {
            Some(counts) => json(StatusCode::OK, &counts),
            None => error(
                StatusCode::NOT_FOUND,
                "this binary does not count its allocations: build switchyard-count-allocations \
                 (cargo build --release --features count-allocations --bin switchyard-count-allocations)",
            ),
        },
        (_, "/metrics") => error(StatusCode::METHOD_NOT_ALLOWED, "use GET /metrics"),
        (_, path) => error(
            StatusCode::NOT_FOUND,
            format!("no {path}: try GET /endpoints, PUT /policy or GET /metrics"),
        ),
    }
}

fn set_policy(pools: &[Pool], body: &[u8]) -> http::Response<Full<Bytes>> {
    let change: PolicyChange = match serde_json::from_slice(body) {
        Ok(change) => change,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"policy\": NAME, \"pool\": NAME (optional with one pool)}}: {e}"),
            );
        }
    };
    let pool = match (&change.pool, pools) {
        (None, [only]) => only,
        (None, _) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("several pools: say which (\"pool\": one of {})", names(pools)),
            );
        }
        (Some(name), _) => match pools.iter().find(|p| p.name() == name) {
            Some(pool) => pool,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no pool named {name:?}; pools: {}", names(pools)),
                );
            }
        },
    };
    let previous = match pool.set_policy(&change.policy) {
        Ok(previous) => previous,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let policy = pool.policy().name();
    tracing::info!(pool = pool.name(), policy = %change.policy, previous, "policy switched");
    json(StatusCode::OK, &PolicyChanged { pool: pool.name(), policy, previous })
}

fn names(pools: &[Pool]) -> String {
    pools.iter().map(Pool::name).collect::<Vec<_>>().join(", ")
}

fn json(status: StatusCode, value: &impl Serialize) -> http::Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = http::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> http::Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
