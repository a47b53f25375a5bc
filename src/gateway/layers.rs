//! Pool layers: tower layers a pool's config names, between routing and the pool's balancer.
//!
//! A pool's service is a tower stack built from its config: the layers its `layers` list names, in
//! order (the first is outermost), then the balancer.
//!
//! ```toml
//! [[pool]]
//! name = "llama"
//! layers = [{ name = "timeout", after = "30s" }]
//! endpoints = [{ address = "http://127.0.0.1:9001" }]
//! ```
//!
//! Layers are named and parameterised by a [`Spec`] and built by the [`LayerRegistry`]; the
//! gateway registers the layers of the crates it links (`timeout`, `shed`, `limit`, and `cache`
//! with the parameters its module documents), and a program that embeds the gateway registers its
//! own in [`registry()`] before it starts one. A layer fails a
//! request with a typed [`switchyard_core::Error`], which the client receives as its gRPC status.
//! A pool with no layers calls its balancer directly, with nothing boxed.
//!
//! Overload protection is two layers, the queue in front of the limit:
//!
//! ```toml
//! layers = [
//!   { name = "shed", max_queue = 128, target = "50ms", interval = "500ms" },
//!   { name = "limit", algorithm = "vegas" },   # or { name = "gradient2", min_limit = 4 }, ...
//! ]
//! ```
//!
//! `limit` takes `pace = {}` to count a streamed generation as a drop as soon as its pace
//! cannot make its deadline (see `limit` below).
//!
//! `load-shed` (tower's `LoadShed`) in front of a `limit` instead of `shed` refuses at once what
//! finds the limit full, with no queue, no priority and no deadline: the classic pairing, kept
//! for comparison (bench `overload`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use switchyard_core::{Error, ErrorKind, Spec, SpecError};
use tower::util::BoxCloneSyncService;
use tower::util::BoxCloneSyncServiceLayer;
use tower::{BoxError, ServiceBuilder};

use switchyard_telemetry::ScrapeSource;

use super::body::{ProxyBody, RequestBody};

/// A request as a pool's layers see it.
pub type PoolRequest = http::Request<RequestBody>;
/// A response as a pool's layers see it.
pub type PoolResponse = http::Response<ProxyBody>;
/// A pool's stack below a layer, boxed.
pub type BoxPoolService = BoxCloneSyncService<PoolRequest, PoolResponse, BoxError>;
/// A layer of a pool's stack, boxed.
pub type PoolLayer = BoxCloneSyncServiceLayer<BoxPoolService, PoolRequest, PoolResponse, BoxError>;

/// What telemetry reads of a built layer: given the pool's name and the layer's position in the
/// pool's `layers` list (0 the outermost; the `layer` label, which keeps two layers of one kind
/// apart), the source of the layer's series, published at each scrape of the gateway's
/// `/metrics` (see [`LayerRegistry::register_with_metrics`]).
pub type LayerMetrics = Box<dyn FnOnce(&str, usize) -> Arc<dyn ScrapeSource> + Send>;

type Factory = Arc<dyn Fn(&Spec) -> Result<(PoolLayer, Option<LayerMetrics>), SpecError> + Send + Sync>;

/// Pool layers by name.
///
/// ```
/// use switchyard::gateway::layers::{self, PoolLayer};
/// use tower::util::BoxCloneSyncServiceLayer;
///
/// // A layer that adds a header to every request of the pools that name it.
/// layers::registry().register("tag", "adds x-tag", |spec| {
///     #[derive(serde::Deserialize)]
///     struct Params { value: String }
///     let value = http::HeaderValue::try_from(spec.params::<Params>()?.value)
///         .map_err(|e| switchyard_core::SpecError { name: spec.name().into(), message: e.to_string() })?;
///     Ok::<_, switchyard_core::SpecError>(BoxCloneSyncServiceLayer::new(
///         tower::util::MapRequestLayer::new(move |mut req: layers::PoolRequest| {
///             req.headers_mut().insert("x-tag", value.clone());
///             req
///         }),
///     ))
/// })?;
/// assert!(layers::registry().names().contains(&"tag".to_string()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LayerRegistry {
    entries: Arc<RwLock<BTreeMap<String, (String, Factory)>>>,
}

/// The process-wide registry, holding the gateway's layers from the start.
pub fn registry() -> &'static LayerRegistry {
    static REGISTRY: OnceLock<LayerRegistry> = OnceLock::new();
    REGISTRY.get_or_init(LayerRegistry::with_builtins)
}

impl LayerRegistry {
    /// A registry with the gateway's layers: `timeout`, `shed`, `limit`, `load-shed`, `cache`.
    pub fn with_builtins() -> Self {
        let registry = Self { entries: Arc::default() };
        let _ = registry.register(
            "timeout",
            "fails a request whose response has not begun after `after`",
            timeout,
        );
        let _ = registry.register_with_metrics(
            "shed",
            "admits requests through a bounded queue by priority and deadline (switchyard-shed)",
            shed,
        );
        let _ = registry.register_with_metrics(
            "limit",
            "an adaptive concurrency limit over the whole pool (switchyard-limit)",
            limit,
        );
        let _ = registry.register(
            "load-shed",
            "refuses at once what finds the layer below it not ready (tower's LoadShed)",
            load_shed,
        );
        let _ = registry.register(
            "cache",
            "answers repeated requests of the named methods from memory; coalesces identical ones in flight",
            super::cache::cache,
        );
        registry
    }

    /// Registers a layer under `name` (normalised as [`Spec`] names are); an error if the name is
    /// taken.
    pub fn register<F>(&self, name: &str, description: &str, factory: F) -> Result<(), SpecError>
    where
        F: Fn(&Spec) -> Result<PoolLayer, SpecError> + Send + Sync + 'static,
    {
        self.register_with_metrics(name, description, move |spec| Ok((factory(spec)?, None)))
    }

    /// Registers a layer under `name` whose factory also says how telemetry reads the built
    /// layer's figures (as `shed` and `limit` do); an error if the name is taken.
    pub fn register_with_metrics<F>(&self, name: &str, description: &str, factory: F) -> Result<(), SpecError>
    where
        F: Fn(&Spec) -> Result<(PoolLayer, Option<LayerMetrics>), SpecError> + Send + Sync + 'static,
    {
        let name = Spec::named(name).name().to_string();
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.contains_key(&name) {
            return Err(SpecError { name, message: "a layer of this name is registered already".into() });
        }
        entries.insert(name, (description.to_string(), Arc::new(factory)));
        Ok(())
    }

    /// Builds the layer `spec` names.
    pub fn build(&self, spec: &Spec) -> Result<PoolLayer, SpecError> {
        Ok(self.build_with_metrics(spec)?.0)
    }

    /// Builds the layer `spec` names, with what telemetry reads of it, if anything.
    pub fn build_with_metrics(&self, spec: &Spec) -> Result<(PoolLayer, Option<LayerMetrics>), SpecError> {
        let factory = {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            match entries.get(spec.name()) {
                Some((_, factory)) => factory.clone(),
                None => {
                    let known = entries.keys().cloned().collect::<Vec<_>>().join(", ");
                    return Err(SpecError {
                        name: spec.name().to_string(),
                        message: format!("unknown layer; expected one of: {known}"),
                    });
                }
            }
        };
        factory(spec)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }
}

impl fmt::Debug for LayerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LayerRegistry").field(&self.names()).finish()
    }
}

/// Wraps `service` in the layers `specs` name, the first outermost; with the sources of the
/// layers' series, labelled `pool`.
pub(crate) fn stack(
    specs: &[Spec],
    service: BoxPoolService,
    pool: &str,
    queues: &mut Vec<switchyard_shed::ShedLayer>,
) -> Result<(BoxPoolService, Vec<Arc<dyn ScrapeSource>>), SpecError> {
    let mut service = service;
    let mut sources = Vec::new();
    for (position, spec) in specs.iter().enumerate().rev() {
        // The pool keeps a handle on its shed queues: their waiting requests are the demand a
        // pool scaled to zero wakes for.
        let (layer, metrics) = if spec.name() == "shed" {
            let layer = shed_layer(spec)?;
            queues.push(layer.clone());
            shed_with_metrics(layer)
        } else {
            registry().build_with_metrics(spec)?
        };
        sources.extend(metrics.map(|metrics| metrics(pool, position)));
        service = ServiceBuilder::new().layer(layer).service(service);
    }
    Ok((service, sources))
}

/// `timeout`: `{ name = "timeout", after = "30s" }`. A request whose response has not begun after
/// `after` fails with `DEADLINE_EXCEEDED` (a stream that has begun is not cut).
fn timeout(spec: &Spec) -> Result<PoolLayer, SpecError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        after: String,
    }
    let params: Params = spec.params()?;
    let after: Duration = humantime::parse_duration(&params.after).map_err(|e| SpecError {
        name: spec.name().to_string(),
        message: format!("`after` = {:?}: {e} (e.g. \"30s\")", params.after),
    })?;
    if after.is_zero() {
        return Err(SpecError {
            name: spec.name().to_string(),
            message: "`after` must be above zero".into(),
        });
    }
    Ok(BoxCloneSyncServiceLayer::new(
        ServiceBuilder::new()
            .map_err(|e: BoxError| {
                if e.is::<tower::timeout::error::Elapsed>() {
                    BoxError::from(Error::new(ErrorKind::DeadlineExceeded).with_source(e))
                } else {
                    e
                }
            })
            .timeout(after),
    ))
}

/// `load-shed`: `{ name = "load-shed" }` (no parameters). tower's `LoadShed`: a request that finds
/// the layer below it not ready (a `limit` full) is refused at once with `RESOURCE_EXHAUSTED`,
/// whatever its priority or deadline. Put `shed` there instead to queue by priority and deadline.
fn load_shed(spec: &Spec) -> Result<PoolLayer, SpecError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {}
    let _: Params = spec.params()?;
    Ok(BoxCloneSyncServiceLayer::new(
        ServiceBuilder::new()
            .map_err(|e: BoxError| {
                if e.is::<tower::load_shed::error::Overloaded>() {
                    BoxError::from(Error::new(ErrorKind::Shed { retry_after: None }).with_source(e))
                } else {
                    e
                }
            })
            .load_shed(),
    ))
}

/// A duration parameter such as `"50ms"`, above zero.
fn duration_param(spec: &Spec, field: &str, value: &str) -> Result<Duration, SpecError> {
    let parsed = humantime::parse_duration(value).map_err(|e| SpecError {
        name: spec.name().to_string(),
        message: format!("`{field}` = {value:?}: {e} (e.g. \"50ms\")"),
    })?;
    if parsed.is_zero() {
        return Err(SpecError {
            name: spec.name().to_string(),
            message: format!("`{field}` must be above zero"),
        });
    }
    Ok(parsed)
}

/// `shed`: `{ name = "shed", max_queue = 128, target = "50ms", interval = "500ms" }` (these are
/// the defaults). A bounded admission queue by priority class and deadline
/// ([`switchyard_shed::ShedLayer`]); put `limit` after it, which says when the pool has room.
fn shed(spec: &Spec) -> Result<(PoolLayer, Option<LayerMetrics>), SpecError> {
    Ok(shed_with_metrics(shed_layer(spec)?))
}

fn shed_with_metrics(layer: switchyard_shed::ShedLayer) -> (PoolLayer, Option<LayerMetrics>) {
    let metrics = layer.clone();
    let metrics: LayerMetrics = Box::new(move |pool, position| {
        Arc::new(switchyard_telemetry::ShedMetrics::new(pool, metrics).with_layer(position.to_string()))
    });
    (BoxCloneSyncServiceLayer::new(layer), Some(metrics))
}

fn shed_layer(spec: &Spec) -> Result<switchyard_shed::ShedLayer, SpecError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        max_queue: Option<usize>,
        target: Option<String>,
        interval: Option<String>,
    }
    let params: Params = spec.params()?;
    let mut config = switchyard_shed::ShedConfig::default();
    if let Some(max_queue) = params.max_queue {
        if max_queue == 0 {
            return Err(SpecError {
                name: spec.name().to_string(),
                message: "`max_queue` must be at least 1".into(),
            });
        }
        config.max_queue = max_queue;
    }
    if let Some(target) = &params.target {
        config.target = duration_param(spec, "target", target)?;
    }
    if let Some(interval) = &params.interval {
        config.interval = duration_param(spec, "interval", interval)?;
    }
    Ok(switchyard_shed::ShedLayer::new(config))
}

/// `limit`: `{ name = "limit", algorithm = "vegas" }` (the default), or an algorithm with its
/// parameters: `algorithm = { name = "aimd", initial_limit = 40 }` (see
/// [`switchyard_limit::algorithm_from_spec`]). A bare `"gradient2"` or `"vegas"` gets the
/// parameters that find a replica's knee with no hand-set limit (`Gradient2Params::knee`,
/// `VegasParams::knee`), and a bare `"aimd"` backs off at an RTT above 1.5 × the no-load one
/// (`AimdParams::knee`); these assume a per-request RTT that is steady at no load, and sink under
/// LLM requests of very different sizes (lab `overload`), where `{ name = "aimd", rtt_tolerance
/// = 0, per_rtt_increase = false }` or Netflix's own defaults, a table away, do better (see the
/// modules [`switchyard_limit::aimd`], [`switchyard_limit::gradient2`] and
/// [`switchyard_limit::vegas`]). The pool's requests in flight, each counted until
/// its response's last frame, stay within the limit; the rest wait in `poll_ready` (in the `shed`
/// queue, when the pool has one in front).
///
/// `pace = { min_tokens = 16, tpot_objective_ms = 100 }` (these are the defaults; `pace = {}`
/// takes them) also judges each streamed generate call while it runs: its gRPC messages count as
/// tokens, and once it is slower than the objective and, at its pace, past its `grpc-timeout`
/// if it ran to its `max_tokens` (both from `switchyard-keys`), it counts as a drop for the
/// algorithm at once ([`switchyard_limit::pace`]). Without `pace` only its trailers count.
fn limit(spec: &Spec) -> Result<(PoolLayer, Option<LayerMetrics>), SpecError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        algorithm: Option<Spec>,
        pace: Option<switchyard_limit::PaceParams>,
    }
    let params: Params = spec.params()?;
    if let Some(pace) = &params.pace
        && (pace.min_tokens < 2 || pace.tpot_objective_ms == 0)
    {
        return Err(SpecError {
            name: spec.name().to_string(),
            message: format!(
                "`pace` needs `min_tokens` ≥ 2 and `tpot_objective_ms` > 0, got {} and {}",
                pace.min_tokens, pace.tpot_objective_ms
            ),
        });
    }
    let algorithm = params.algorithm.unwrap_or_else(|| Spec::named("vegas"));
    let algorithm = switchyard_limit::algorithm_from_spec(&algorithm)
        .map_err(|e| SpecError { name: spec.name().to_string(), message: format!("algorithm {e}") })?;
    let layer = switchyard_limit::LimitLayer::with_limiter(switchyard_limit::Limiter::from_boxed(algorithm));
    let limiter = layer.limiter().clone();
    let metrics: LayerMetrics = Box::new(move |pool, position| {
        Arc::new(switchyard_telemetry::LimitMetrics::new(pool, limiter).with_layer(position.to_string()))
    });
    let to_proxy =
        |response: http::Response<switchyard_limit::LimitBody<ProxyBody>>| response.map(ProxyBody::limited);
    let layer = match params.pace {
        None => BoxCloneSyncServiceLayer::new(ServiceBuilder::new().map_response(to_proxy).layer(layer)),
        Some(pace) => BoxCloneSyncServiceLayer::new(
            ServiceBuilder::new()
                .map_response(to_proxy)
                .layer(layer.with_tracking(switchyard_limit::PacedHttpPermit::new(pace)))
                .layer(switchyard_limit::PaceBudgetLayer),
        ),
    };
    Ok((layer, Some(metrics)))
}
