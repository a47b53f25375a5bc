//! Pools: one balancer over the endpoints of one model or service.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use std::convert::Infallible;
use switchyard_balance::{
    Backend, Balance, HttpCompletion, LoadBoard, Observer, PolicyError, PolicyHandle, PolicySpec, Shared,
    policy,
};

use futures::StreamExt;
use switchyard_core::{Endpoint, EndpointId};
use switchyard_discovery::{HeldBack, Source};
use tower::discover::Change;

use switchyard_hash::precise::{KvFeed, KvSubscriber, PrefixAwarePrecise, SubscriberConfig};
use switchyard_retry::{RetryBody, RetryLayer};

use super::body::{ProxyBody, RequestBody};
use super::config::{ConfigError, PoolConfig};
use super::layers::{self, BoxPoolService};
use super::upstream::EndpointClient;
use super::upstream_tls::UpstreamTls;

/// The pool's TLS towards its endpoints, loaded from its `tls` files, if it has one.
fn upstream_tls(config: &PoolConfig) -> Result<Option<UpstreamTls>, ConfigError> {
    let Some(tls) = &config.tls else { return Ok(None) };
    UpstreamTls::new(tls, &format!("pool {:?} tls", config.name)).map(Some).map_err(tls_error)
}

/// The pool's TLS for the tonic clients of its side channels (health checks, out-of-band load
/// reports), if it has `tls`.
fn tonic_tls(config: &PoolConfig) -> Result<Option<tonic::transport::ClientTlsConfig>, ConfigError> {
    let Some(tls) = &config.tls else { return Ok(None) };
    super::upstream_tls::tonic_tls(tls, &format!("pool {:?} tls", config.name)).map(Some).map_err(tls_error)
}

/// A TLS file error as a config error naming the field.
fn tls_error(e: super::tls::TlsError) -> ConfigError {
    let message = if e.path.as_os_str().is_empty() {
        e.message
    } else {
        format!("{}: {}", e.path.display(), e.message)
    };
    ConfigError { file: None, line: None, field: Some(e.field), message }
}

/// A request as a pool gets it.
pub(crate) type UpstreamRequest = http::Request<RequestBody>;

/// A request on its way to an endpoint in a pool that retries: its body replayable. A pool without
/// `retry` sends the [`UpstreamRequest`] itself (its body not wrapped: nothing recorded, no
/// second body type to step through on every frame).
pub(crate) type RetryRequest = http::Request<RetryBody<RequestBody>>;

/// A pool's balancer, called in place by every stream of the gateway (no task in between).
pub(crate) type Upstream = Shared<Balance<EndpointClient, UpstreamRequest>>;

/// One pool of a running gateway: its balancer's load board and policy.
pub struct Pool {
    name: String,
    policy: PolicyHandle,
    board: LoadBoard,
    seed: u64,
    /// The pool's stack: its layers (and its retries), if any, over its balancer.
    service: PoolService,
    /// The endpoints held back by health watching, when the pool watches health.
    held: Option<HeldBack>,
    /// The sources of its layers' series (the limit in force, the shed queue's refusals).
    layer_metrics: Vec<Arc<dyn switchyard_telemetry::ScrapeSource>>,
    /// The pool's members and, when the policy is `prefix-aware-precise`, their KV-event streams.
    kv: Arc<Mutex<KvFollow>>,
    /// The keys it reads differently from the gateway's key layer (`[pool.keys]`).
    keys: switchyard_keys::PoolKeys,
    /// Its `shed` layers' queues.
    queues: Vec<switchyard_shed::ShedLayer>,
    /// Its subscriptions to the endpoints' out-of-band load reports (`load_reports`), if any.
    _load_reports: Option<crate::oob_reports::OobReports>,
}

impl Pool {
    /// Starts the pool's balancer over its configured endpoints and discovery sources (and the
    /// `extra` sources given in code), with a connection to each endpoint per serving thread
    /// (opened on first use). `picked_endpoint`: whether responses carry the
    /// [`PickedEndpoint`](switchyard_balance::PickedEndpoint) (the RPC spans read it).
    /// `observer`, if any, is told of every request's end (the telemetry's per-endpoint latency).
    pub(crate) fn start(
        config: &PoolConfig,
        threads: usize,
        picked_endpoint: bool,
        observer: Option<Arc<dyn Observer>>,
        extra: Vec<Source>,
    ) -> Result<Self, ConfigError> {
        // An address (and the pool's TLS files) is checked before anything starts, so that a bad
        // one is a config error.
        let tls = upstream_tls(config)?;
        for endpoint in &config.endpoints {
            EndpointClient::new(&endpoint.address, threads, tls.as_ref()).map_err(|e| ConfigError {
                file: None,
                line: None,
                field: Some(format!("pool {:?} endpoint {}", config.name, endpoint.id)),
                message: e.to_string(),
            })?;
        }
        if config.discovery.is_empty() && config.health.is_none() && extra.is_empty() {
            let changes =
                config.endpoints.iter().map(|e| Ok::<_, Infallible>(Change::Insert(e.id.clone(), e.clone())));
            return Self::start_with(
                config,
                threads,
                picked_endpoint,
                observer,
                futures::stream::iter(changes.collect::<Vec<_>>()),
            );
        }
        // The fixed endpoints first (ready at once), then each source's changes as they come.
        let mut sources = vec![Source::fixed(config.endpoints.iter().cloned())];
        sources.extend(extra.into_iter().map(Source::labelled));
        for (k, discovery) in config.discovery.iter().enumerate() {
            sources.push(discovery.build().map_err(|e| ConfigError {
                file: None,
                line: None,
                field: Some(format!("pool {:?} discovery[{k}]", config.name)),
                message: e.to_string(),
            })?);
        }
        let changes = Source::new("pool", futures::stream::select_all(sources));
        match &config.health {
            None => Self::start_with(config, threads, picked_endpoint, observer, changes),
            Some(health) => {
                // The health checks reach the endpoints as the requests do: over TLS in a TLS pool.
                let (changes, held) = changes.with_health_tls(health.clone(), tonic_tls(config)?);
                let mut pool = Self::start_with(config, threads, picked_endpoint, observer, changes)?;
                pool.held = Some(held);
                Ok(pool)
            }
        }
    }

    /// Starts the pool's balancer over the endpoints `changes` announces (a discovery source; the
    /// config's endpoints are a static one). An endpoint whose address is not usable is logged
    /// and left out (an endpoint of that id known before is removed): an error of that endpoint,
    /// not of the source.
    pub(crate) fn start_with<D, E>(
        config: &PoolConfig,
        threads: usize,
        picked_endpoint: bool,
        observer: Option<Arc<dyn Observer>>,
        changes: D,
    ) -> Result<Self, ConfigError>
    where
        D: futures::Stream<Item = Result<Change<EndpointId, Endpoint>, E>> + Send + 'static,
        E: Into<tower::BoxError> + Send + 'static,
    {
        // A seed of this process's own for the policy's and the retries' random draws: gateway
        // replicas started from one configuration would otherwise draw alike and send their
        // requests to the same replica in step (`switchyard_balance::fresh_seed`).
        let seed = switchyard_balance::fresh_seed();
        let policy_error = |e: PolicyError| ConfigError {
            file: None,
            line: None,
            field: Some(format!("pool {:?} policy", config.name)),
            message: e.to_string(),
        };
        // The side channels' TLS (KV events, out-of-band load reports), read from its files once.
        let side_tls = tonic_tls(config)?;
        // The precise prefix-aware policy is fed by the endpoints' KV-event streams: the pool
        // subscribes to each endpoint it has (below, as discovery inserts and removes them).
        let (policy, subscriber) = if config.policy.name() == PRECISE {
            let (precise, subscriber) =
                precise_with_streams(&config.policy, side_tls.clone()).map_err(policy_error)?;
            (PolicyHandle::new(precise), Some(subscriber))
        } else {
            (PolicyHandle::from_spec(&config.policy, seed).map_err(policy_error)?, None)
        };
        let kv =
            Arc::new(Mutex::new(KvFollow { members: HashMap::new(), subscriber, tls: side_tls.clone() }));
        let following = kv.clone();
        let pool = config.name.clone();
        let drain_timeout = config.drain_timeout;
        // Attempts no retry can save exist only under a retry layer.
        // (A program may set any duration; a config file is held to the same range.)
        let probe = config
            .retry
            .as_ref()
            .and(config.probe_timeout)
            .map(|t| t.clamp(super::liveness::MIN_PROBE_TIMEOUT, super::liveness::MAX_PROBE_TIMEOUT));
        let tls = upstream_tls(config)?;
        // The client of each endpoint the balancer has: an update in place keeps its connections,
        // and a removed endpoint's are let go of at once (a balancer's copy of its members may
        // hold the client until its next request), closing as their requests end.
        let mut clients: HashMap<EndpointId, EndpointClient> = HashMap::new();
        let backends = changes.map(
            move |change| -> Result<Change<EndpointId, Backend<EndpointClient>>, tower::BoxError> {
                let change = change.map_err(Into::into)?;
                following.lock().unwrap_or_else(PoisonError::into_inner).follow(&change);
                Ok(match change {
                    Change::Insert(id, endpoint) => {
                        if let Some(client) = clients.get(&id)
                            && client.is_for(&endpoint.address)
                        {
                            return Ok(Change::Insert(id, Backend::new(endpoint, client.clone())));
                        }
                        if let Some(old) = clients.remove(&id) {
                            old.close();
                        }
                        match EndpointClient::new(&endpoint.address, threads, tls.as_ref()) {
                            Ok(client) => {
                                let client = client.with_drain_timeout(drain_timeout).with_probe(probe);
                                clients.insert(id.clone(), client.clone());
                                Change::Insert(id, Backend::new(endpoint, client))
                            }
                            Err(e) => {
                                tracing::error!(pool = %pool, endpoint = %id, "discovered endpoint left out: {e}");
                                Change::Remove(id)
                            }
                        }
                    }
                    Change::Remove(id) => {
                        if let Some(old) = clients.remove(&id) {
                            old.close();
                        }
                        Change::Remove(id)
                    }
                })
            },
        );
        // Changes ready now (all of a static list) are applied at once, so the board shows the
        // endpoints before the first request.
        let endpoint_limit = match &config.endpoint_limit {
            None => None,
            Some(spec) => {
                Some(switchyard_balance::EndpointLimit::from_spec(spec).map_err(|e| ConfigError {
                    file: None,
                    line: None,
                    field: Some(format!("pool {:?} endpoint_limit", config.name)),
                    message: e.to_string(),
                })?)
            }
        };
        let settings = BalancerSettings {
            policy: policy.clone(),
            name: config.name.as_str(),
            // A retry reads in the response which endpoint gave a retryable status.
            picked_endpoint: picked_endpoint || config.retry.is_some(),
            endpoint_limit,
            observer,
            hold_when_empty: config.hold_when_empty,
        };
        let retry = match &config.retry {
            None => None,
            Some(retry) => Some(RetryLayer::with_seed(retry.clone(), seed).map_err(|e| ConfigError {
                file: None,
                line: None,
                field: Some(format!("pool {:?} retry.{}", config.name, e.field)),
                message: e.message,
            })?),
        };
        let mut layer_metrics = Vec::new();
        let mut queues = Vec::new();
        // The bottom of the pool's stack: its balancer directly, or under the retry layer, which
        // sits just above the balancer, below the pool's other layers (each attempt is picked,
        // counted and limited as a request of its own). Only a pool that retries has the
        // retry layer's body type below it.
        let (board, bottom) = match retry {
            None => {
                let balancer = settings.balancer::<UpstreamRequest, _>(backends);
                (balancer.board(), Bottom::Direct(Direct { upstream: Shared::new(balancer) }))
            }
            Some(retry) => {
                let balancer = settings.balancer::<RetryRequest, _>(backends);
                layer_metrics.push(Arc::new(switchyard_telemetry::RetryMetrics::new(
                    config.name.as_str(),
                    retry.clone(),
                )) as Arc<dyn switchyard_telemetry::ScrapeSource>);
                let board = balancer.board();
                let retried = BoxPoolService::new(tower::ServiceExt::map_response(
                    tower::Layer::layer(&retry, Shared::new(balancer)),
                    |response: http::Response<
                        switchyard_retry::HeldBody<
                            switchyard_balance::TrackedBody<super::h2stream::RecvBody>,
                        >,
                    >| {
                        response.map(|body| match body.into_parts() {
                            (held, Some(rest)) if held.is_empty() => ProxyBody::upstream(rest),
                            (held, rest) => {
                                switchyard_cache::ReplayBody::replay(held, rest.map(ProxyBody::upstream))
                            }
                        })
                    },
                ));
                (board, Bottom::Retried(retried))
            }
        };
        let load_reports = config.load_reports.map(|interval| {
            crate::oob_reports::OobReports::spawn_with_tls(board.clone(), interval, side_tls)
        });
        let layered = match (config.layers.as_slice(), bottom) {
            ([], Bottom::Direct(direct)) => PoolService::Direct(direct),
            (specs, bottom) => {
                let bottom = match bottom {
                    Bottom::Direct(direct) => BoxPoolService::new(direct),
                    Bottom::Retried(retried) => retried,
                };
                let (stacked, sources) =
                    layers::stack(specs, bottom, &config.name, &mut queues).map_err(|e| ConfigError {
                        file: None,
                        line: None,
                        field: Some(format!("pool {:?} layers", config.name)),
                        message: format!("layer {e}"),
                    })?;
                layer_metrics.extend(sources);
                // A layer's typed error names the pool it happened in (the layers do not know it).
                PoolService::Layered(stacked, config.name.as_str().into())
            }
        };
        Ok(Self {
            name: config.name.clone(),
            policy,
            board,
            seed,
            service: layered,
            held: None,
            layer_metrics,
            kv,
            keys: config.keys.clone(),
            queues,
            _load_reports: load_reports,
        })
    }

    /// The pool's service: its layers, then its balancer.
    pub(crate) fn service(&self) -> PoolService {
        self.service.clone()
    }

    /// The sources of the pool's layers' series, for the gateway's metrics registry.
    pub(crate) fn layer_metrics(&self) -> &[Arc<dyn switchyard_telemetry::ScrapeSource>] {
        &self.layer_metrics
    }

    /// The keys the pool reads differently from the gateway's key layer, applied to each request
    /// once it is routed here.
    pub fn keys(&self) -> &switchyard_keys::PoolKeys {
        &self.keys
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The board on which the pool's balancer publishes its endpoints' load.
    pub fn board(&self) -> &LoadBoard {
        &self.board
    }

    /// The endpoints its discovery announced that health watching holds back (not SERVING);
    /// empty if the pool does not watch health.
    pub fn held_back(&self) -> Vec<Endpoint> {
        self.held.as_ref().map(HeldBack::snapshot).unwrap_or_default()
    }

    /// Requests waiting now in the pool's `shed` queues for a place below them: with no endpoint
    /// (a pool scaled to zero that holds its requests, `hold_when_empty`), the demand that
    /// should wake it. They are not on the board (no endpoint was picked for them), so an
    /// autoscaler adds them to the board's figures without counting a request twice
    /// (`switchyard_autoscale::WithHeld`).
    pub fn held_requests(&self) -> u64 {
        self.queues.iter().map(|q| q.stats().waiting as u64).sum()
    }

    /// [`held_requests`](Self::held_requests) as a function that outlives the borrow of the
    /// pool: what an autoscaler's `WithHeld` signal source calls at each sample.
    pub fn held_requests_reader(&self) -> impl FnMut() -> u64 + Send + Sync + 'static {
        let queues = self.queues.clone();
        move || queues.iter().map(|q| q.stats().waiting as u64).sum()
    }

    /// The exact KV-cache index its endpoints' event streams feed, while its policy is
    /// `prefix-aware-precise` (configured so, or switched to through
    /// [`set_policy`](Self::set_policy), which subscribes to every endpoint the pool has).
    pub fn kv_feed(&self) -> Option<Arc<KvFeed>> {
        let follow = self.kv.lock().unwrap_or_else(PoisonError::into_inner);
        follow.subscriber.as_ref().map(|subscriber| subscriber.feed().clone())
    }

    /// The pool's policy; [`set_policy`](Self::set_policy) switches it.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Switches the pool to a new policy built from `spec` by the policy registry, atomically:
    /// requests already sent stay where they are. Returns the name of the previous policy.
    ///
    /// Switching to `prefix-aware-precise` subscribes to the KV-event stream of every endpoint
    /// the pool has (and of those discovery adds later); switching away ends the streams.
    pub fn set_policy(&self, spec: &PolicySpec) -> Result<&'static str, PolicyError> {
        if spec.name() == PRECISE {
            let mut follow = self.kv.lock().unwrap_or_else(PoisonError::into_inner);
            let (precise, subscriber) = precise_with_streams(spec, follow.tls.clone())?;
            for (id, address) in &follow.members {
                subscriber.insert(id.clone(), address);
            }
            follow.subscriber = Some(subscriber);
            return Ok(self.policy.set(precise).name());
        }
        let next = policy::registry().build(spec, self.seed)?;
        let previous = self.policy.set(next).name();
        self.kv.lock().unwrap_or_else(PoisonError::into_inner).subscriber = None;
        Ok(previous)
    }
}

/// The policy whose pool subscribes to its endpoints' KV-event streams.
const PRECISE: &str = "prefix-aware-precise";

/// A precise prefix-aware policy built from `spec`, and the subscriber that feeds its index.
/// Its streams go over TLS with `tls` (a pool with `tls`).
fn precise_with_streams(
    spec: &PolicySpec,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<(Arc<PrefixAwarePrecise>, Arc<KvSubscriber>), PolicyError> {
    let precise = Arc::new(PrefixAwarePrecise::from_spec(spec)?);
    let subscriber = KvSubscriber::new(precise.feed().clone(), SubscriberConfig::default());
    let subscriber = match tls {
        Some(tls) => subscriber.with_tls(tls),
        None => subscriber,
    };
    Ok((precise, Arc::new(subscriber)))
}

/// The pool's members as discovery announced them, and the KV-event subscriber that follows
/// them while the policy is `prefix-aware-precise`. Touched on membership changes and policy
/// switches only, never per request.
struct KvFollow {
    members: HashMap<EndpointId, String>,
    subscriber: Option<Arc<KvSubscriber>>,
    /// The TLS of the pool's side channels, for a subscriber made on a policy switch.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl KvFollow {
    fn follow(&mut self, change: &Change<EndpointId, Endpoint>) {
        match change {
            Change::Insert(id, endpoint) => {
                let address = &endpoint.address;
                if let Some(subscriber) = &self.subscriber {
                    subscriber.insert(id.clone(), address);
                }
                self.members.insert(id.clone(), address.clone());
            }
            Change::Remove(id) => {
                if let Some(subscriber) = &self.subscriber {
                    subscriber.remove(id);
                }
                self.members.remove(id);
            }
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("policy", &self.policy.name())
            .field("endpoints", &self.board.len())
            .finish_non_exhaustive()
    }
}

/// The bottom of a pool's stack, under its layers.
enum Bottom {
    /// The balancer, requests passed as they are.
    Direct(Direct),
    /// The retry layer over the balancer.
    Retried(BoxPoolService),
}

/// How a pool's balancer is set up, whatever its request type (a pool that retries sends its
/// endpoints [`RetryRequest`]s, one that does not [`UpstreamRequest`]s).
struct BalancerSettings<'a> {
    policy: PolicyHandle,
    name: &'a str,
    /// Whether responses carry the picked endpoint.
    picked_endpoint: bool,
    endpoint_limit: Option<switchyard_balance::EndpointLimit>,
    observer: Option<Arc<dyn Observer>>,
    hold_when_empty: bool,
}

impl BalancerSettings<'_> {
    /// The balancer over `backends`.
    fn balancer<Req, D>(self, backends: D) -> Balance<EndpointClient, Req>
    where
        D: futures::Stream<Item = Result<Change<EndpointId, Backend<EndpointClient>>, tower::BoxError>>
            + Send
            + 'static,
    {
        let balancer = Balance::new(backends)
            .with_policy(self.policy)
            .with_name(self.name)
            // Nothing reads the picked endpoint in the requests' extensions: the endpoint
            // clients below do not. Only the RPC spans (and a retry) read it in the responses'.
            // (The observer is told the endpoint.)
            .with_picked_endpoint_in_requests(false)
            .with_completion(HttpCompletion::new().with_picked_endpoint(self.picked_endpoint));
        let balancer = match self.endpoint_limit {
            Some(limit) => balancer.with_endpoint_limit(limit),
            None => balancer,
        };
        let balancer = match self.observer {
            Some(observer) => balancer.with_observer(observer),
            None => balancer,
        };
        // A pool that scales to zero holds its requests (in its shed queue) until an endpoint
        // comes, instead of failing them after discovery's first few seconds.
        if self.hold_when_empty { balancer.with_no_endpoint_wait(std::time::Duration::MAX) } else { balancer }
    }
}

/// A pool's stack as one service: the request to its endpoint, the response as the proxy sends it
/// back. Without layers, the balancer directly (nothing boxed); with layers, their boxed stack
/// and the pool's name, which a layer's typed error gets when it fails (the layers do not know it).
#[derive(Clone, Debug)]
pub(crate) enum PoolService {
    Direct(Direct),
    Layered(BoxPoolService, Arc<str>),
}

pin_project_lite::pin_project! {
    /// A layered pool's response future: a typed error that names no pool gets this one's name.
    /// (One wrapper of this type rather than one more boxed layer: a boxed service is cloned, and
    /// its future boxed, on every call.)
    pub(crate) struct InPool<F> {
        #[pin]
        inner: F,
        pool: Arc<str>,
    }
}

impl<F, T> std::future::Future for InPool<F>
where
    F: std::future::Future<Output = Result<T, tower::BoxError>>,
{
    type Output = Result<T, tower::BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        this.inner.poll(cx).map_err(|e| match e.downcast::<switchyard_core::Error>() {
            Ok(typed) if typed.pool().is_none() => tower::BoxError::from(typed.in_pool(this.pool.clone())),
            Ok(typed) => typed,
            Err(other) => other,
        })
    }
}

/// The balancer as the bottom of a pool's stack.
#[derive(Clone, Debug)]
pub(crate) struct Direct {
    upstream: Upstream,
}

type DirectFuture = futures::future::MapOk<
    <Upstream as tower::Service<UpstreamRequest>>::Future,
    fn(
        http::Response<switchyard_balance::TrackedBody<super::h2stream::RecvBody>>,
    ) -> http::Response<ProxyBody>,
>;

impl tower::Service<UpstreamRequest> for Direct {
    type Response = http::Response<ProxyBody>;
    type Error = tower::BoxError;
    type Future = DirectFuture;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.upstream.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        use futures::TryFutureExt;
        self.upstream.call(req).map_ok(|response| response.map(ProxyBody::upstream))
    }
}

impl tower::Service<UpstreamRequest> for PoolService {
    type Response = http::Response<ProxyBody>;
    type Error = tower::BoxError;
    type Future = futures::future::Either<
        DirectFuture,
        InPool<<BoxPoolService as tower::Service<UpstreamRequest>>::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            PoolService::Direct(s) => s.poll_ready(cx),
            PoolService::Layered(s, _) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        match self {
            PoolService::Direct(s) => futures::future::Either::Left(s.call(req)),
            PoolService::Layered(s, pool) => {
                futures::future::Either::Right(InPool { inner: s.call(req), pool: pool.clone() })
            }
        }
    }
}
