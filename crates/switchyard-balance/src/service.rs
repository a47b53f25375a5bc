//! `Balance`: the balancer service.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use switchyard_core::{Endpoint, EndpointId};
use tokio::time::{Instant, Sleep};
use tower::discover::{Change, Discover};
use tower::{BoxError, Service, ServiceExt};

use crate::board::LoadBoard;
use crate::completion::{Completion, HttpCompletion, TrackCompletion};
use crate::discover::{self, StaticDiscover};
use crate::endpoint::{EndpointState, TrackingConfig};
use crate::error::NoEndpoints;
use crate::future::ResponseFuture;
use crate::outlier::{OutlierConfig, PoolState};
use crate::policy::{PolicyHandle, RequestInfo};

/// An endpoint as discovery hands it to the balancer: what it is, and the service that reaches it
/// (a tonic `Channel`, an in-process service, ...).
#[derive(Debug, Clone)]
pub struct Backend<S> {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The service that sends requests to it.
    pub service: S,
}

impl<S> Backend<S> {
    /// An endpoint and its service.
    pub fn new(endpoint: Endpoint, service: S) -> Self {
        Self { endpoint, service }
    }
}

/// Gives policies access to a request's extensions (where routing keys travel).
///
/// Implemented for `http::Request<B>`; implement it for other request types, returning `None`
/// when they have no extensions.
pub trait RequestExtensions {
    /// The request's extensions, if it has any.
    fn extensions(&self) -> Option<&http::Extensions>;
}

impl<B> RequestExtensions for http::Request<B> {
    fn extensions(&self) -> Option<&http::Extensions> {
        Some(http::Request::extensions(self))
    }
}

/// How long a balancer with no endpoints holds `poll_ready` before it lets requests fail with
/// [`NoEndpoints`]: long enough for discovery's first answer, short enough to fail fast.
pub const DEFAULT_NO_ENDPOINT_WAIT: Duration = Duration::from_secs(3);

struct Slot<S> {
    state: Arc<EndpointState>,
    service: S,
}

/// A tower service that sends each request to one endpoint picked by a [`Policy`](crate::Policy).
///
/// Endpoints come from `D`, a [`Discover`] stream of [`Change`]s keyed by [`EndpointId`] whose
/// services are [`Backend`]s. Every call: the endpoints not ejected (in discovery order) are shown
/// to the current policy with the request's extensions; the pick's in-flight count goes up; the
/// request goes to a clone of that endpoint's service (which must be `Clone`, as tonic channels
/// are), driven to readiness in the response future; and `C` ([`HttpCompletion`] by default)
/// keeps the request counted until its response ends, then records its latency, outcome and
/// load report. See the crate documentation for an example.
///
/// `poll_ready` applies discovery's changes. With no endpoint at all it waits (at most
/// [`DEFAULT_NO_ENDPOINT_WAIT`]) for discovery, then reports ready and fails calls with
/// [`NoEndpoints`]. If every endpoint is ejected, it picks among all of them (Envoy's panic mode)
/// rather than fail.
pub struct Balance<D, S, Req, C = HttpCompletion> {
    discover: Option<D>,
    endpoints: Vec<Slot<S>>,
    /// Endpoints the policy may pick, and their index in `endpoints`.
    active: Vec<Arc<EndpointState>>,
    active_slots: Vec<usize>,
    /// Every endpoint, for panic mode.
    all: Vec<Arc<EndpointState>>,
    next_return: Option<Instant>,
    seen_generation: u64,
    dirty: bool,
    no_endpoint_wait: Duration,
    empty_timer: Option<Pin<Box<Sleep>>>,
    policy: PolicyHandle,
    board: LoadBoard,
    pool: Arc<PoolState>,
    tracking: TrackingConfig,
    completion: C,
    _req: PhantomData<fn(Req)>,
}

/// A dropped balancer takes its endpoints off its board: a board shared with other balancers, the
/// autoscaler or the admin API shows no endpoint that nothing balances to any more.
impl<D, S, Req, C> Drop for Balance<D, S, Req, C> {
    fn drop(&mut self) {
        for slot in &self.endpoints {
            self.board.remove(slot.state.id(), &slot.state);
        }
    }
}

impl<D, S, Req> Balance<D, S, Req, HttpCompletion> {
    /// A balancer over `discover` with the default policy ([`PolicyKind::DEFAULT`]), its own
    /// [`LoadBoard`], default load tracking and outlier detection, and [`HttpCompletion`].
    ///
    /// [`PolicyKind::DEFAULT`]: crate::PolicyKind::DEFAULT
    pub fn new(discover: D) -> Self {
        Self {
            discover: Some(discover),
            endpoints: Vec::new(),
            active: Vec::new(),
            active_slots: Vec::new(),
            all: Vec::new(),
            next_return: None,
            seen_generation: 0,
            dirty: false,
            no_endpoint_wait: DEFAULT_NO_ENDPOINT_WAIT,
            empty_timer: None,
            policy: PolicyHandle::default(),
            board: LoadBoard::new(),
            pool: Arc::new(PoolState::new(OutlierConfig::default())),
            tracking: TrackingConfig::default(),
            completion: HttpCompletion::default(),
            _req: PhantomData,
        }
    }
}

impl<S, Req> Balance<StaticDiscover<S>, S, Req, HttpCompletion> {
    /// A balancer over a fixed list of endpoints, inserted at once: they are on the
    /// [`board`](Self::board) before the first request (a discovery stream is read only when the
    /// balancer is polled).
    pub fn from_backends(backends: impl IntoIterator<Item = Backend<S>>) -> Self {
        let mut balancer = Self::new(discover::from_backends(Vec::new()));
        balancer.discover = None;
        for backend in backends {
            balancer.insert(backend.endpoint.id.clone(), backend);
        }
        balancer
    }
}

impl<D, S, Req, C> Balance<D, S, Req, C> {
    /// The same balancer, picking with the policy in `policy` (keep a clone of the handle to
    /// switch it later).
    pub fn with_policy(mut self, policy: PolicyHandle) -> Self {
        self.policy = policy;
        self
    }

    /// The same balancer, publishing its endpoints on `board` (shared with other readers).
    pub fn with_board(mut self, board: LoadBoard) -> Self {
        // Endpoints already inserted move to the new board.
        for slot in &self.endpoints {
            self.board.remove(slot.state.id(), &slot.state);
            board.insert(slot.state.clone());
        }
        self.board = board;
        self
    }

    /// The same balancer with these outlier-ejection settings.
    pub fn with_outlier(mut self, outlier: OutlierConfig) -> Self {
        self.pool = Arc::new(PoolState::new(outlier));
        self
    }

    /// The same balancer with these latency-tracking settings (for endpoints discovered later).
    pub fn with_tracking(mut self, tracking: TrackingConfig) -> Self {
        self.tracking = tracking;
        self
    }

    /// The same balancer, waiting at most `wait` for a first endpoint before failing requests.
    pub fn with_no_endpoint_wait(mut self, wait: Duration) -> Self {
        self.no_endpoint_wait = wait;
        self
    }

    /// The same balancer, tracking responses with `completion`.
    pub fn with_completion<C2>(mut self, completion: C2) -> Balance<D, S, Req, C2> {
        // The endpoints move to the new balancer; `self`, dropped empty, takes nothing off the
        // board.
        Balance {
            discover: self.discover.take(),
            endpoints: std::mem::take(&mut self.endpoints),
            active: std::mem::take(&mut self.active),
            active_slots: std::mem::take(&mut self.active_slots),
            all: std::mem::take(&mut self.all),
            next_return: self.next_return,
            seen_generation: self.seen_generation,
            dirty: self.dirty,
            no_endpoint_wait: self.no_endpoint_wait,
            empty_timer: self.empty_timer.take(),
            policy: self.policy.clone(),
            board: self.board.clone(),
            pool: self.pool.clone(),
            tracking: self.tracking,
            completion,
            _req: PhantomData,
        }
    }

    /// A handle on the balancer's policy, to switch it while the balancer runs.
    pub fn policy(&self) -> PolicyHandle {
        self.policy.clone()
    }

    /// The board the balancer publishes its endpoints' load on.
    pub fn board(&self) -> LoadBoard {
        self.board.clone()
    }

    /// How many endpoints the balancer knows (ejected ones included).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the balancer knows no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn insert(&mut self, id: EndpointId, backend: Backend<S>) {
        let mut endpoint = backend.endpoint;
        endpoint.id = id;
        let state = Arc::new(EndpointState::new(endpoint, self.tracking));
        self.board.insert(state.clone());
        let slot = Slot { state, service: backend.service };
        match self.endpoints.iter().position(|s| s.state.id() == slot.state.id()) {
            Some(i) => {
                let old = std::mem::replace(&mut self.endpoints[i], slot);
                self.forget(&old);
            }
            None => self.endpoints.push(slot),
        }
        self.pool.size.store(self.endpoints.len(), Ordering::Release);
        self.dirty = true;
    }

    fn remove(&mut self, id: &EndpointId) {
        if let Some(i) = self.endpoints.iter().position(|s| s.state.id() == id) {
            // `remove`, not `swap_remove`: the order policies see stays stable.
            let old = self.endpoints.remove(i);
            self.board.remove(id, &old.state);
            self.forget(&old);
            self.pool.size.store(self.endpoints.len(), Ordering::Release);
            self.dirty = true;
        }
    }

    /// Releases what a departing endpoint held in the pool. Its requests in flight keep their
    /// own handle on its state and service, and finish.
    fn forget(&self, old: &Slot<S>) {
        // Its ejection may have run out without `refresh` seeing it yet: it holds a slot until
        // then, so ask the outlier state, not the clock.
        if old.state.outlier.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retire() {
            self.pool.release_ejection();
        }
    }

    /// Applies ejections and returns since the last call, and discovery changes.
    fn refresh(&mut self, now: Instant) {
        let generation = self.pool.generation.load(Ordering::Acquire);
        let returning = self.next_return.is_some_and(|t| t <= now);
        if !self.dirty && !returning && generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        self.dirty = false;
        self.active.clear();
        self.active_slots.clear();
        self.all.clear();
        self.next_return = None;
        for (i, slot) in self.endpoints.iter().enumerate() {
            self.all.push(slot.state.clone());
            let mut outlier = slot.state.outlier.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if outlier.try_return(now) {
                self.pool.release_ejection();
                tracing::info!(endpoint = %slot.state.id(), "ejected endpoint returns");
            }
            match outlier.ejected_until {
                Some(until) => self.next_return = Some(self.next_return.map_or(until, |t| t.min(until))),
                None => {
                    self.active.push(slot.state.clone());
                    self.active_slots.push(i);
                }
            }
        }
    }
}

impl<D, S, Req, C> Balance<D, S, Req, C>
where
    D: Discover<Key = EndpointId, Service = Backend<S>> + Unpin,
    D::Error: Into<BoxError>,
{
    fn update_from_discover(&mut self, cx: &mut Context<'_>) {
        while let Some(discover) = self.discover.as_mut() {
            match Pin::new(discover).poll_discover(cx) {
                Poll::Pending => return,
                Poll::Ready(None) => {
                    // A finite list (static endpoints) has said everything.
                    self.discover = None;
                }
                Poll::Ready(Some(Ok(Change::Insert(id, backend)))) => self.insert(id, backend),
                Poll::Ready(Some(Ok(Change::Remove(id)))) => self.remove(&id),
                Poll::Ready(Some(Err(e))) => {
                    // Keep serving the endpoints known so far; poll discovery again next time.
                    let e: BoxError = e.into();
                    tracing::warn!("endpoint discovery failed: {e}");
                    return;
                }
            }
        }
    }
}

impl<D, S, Req, C> Service<Req> for Balance<D, S, Req, C>
where
    D: Discover<Key = EndpointId, Service = Backend<S>> + Unpin,
    D::Error: Into<BoxError>,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: RequestExtensions,
    C: TrackCompletion<S::Response> + Clone,
{
    type Response = C::Output;
    type Error = BoxError;
    type Future = ResponseFuture<tower::util::Oneshot<S, Req>, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.update_from_discover(cx);
        if !self.endpoints.is_empty() || self.discover.is_none() {
            self.empty_timer = None;
            return Poll::Ready(Ok(()));
        }
        // No endpoint yet: give discovery a bounded time, then fail fast.
        let wait = self.no_endpoint_wait;
        let timer = self.empty_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = Instant::now();
        self.refresh(now);
        let panic_mode = self.active.is_empty();
        let candidates = if panic_mode { &self.all } else { &self.active };
        if candidates.is_empty() {
            return ResponseFuture::failed(NoEndpoints.into(), self.completion.clone());
        }
        let info = RequestInfo::new(req.extensions(), now);
        let pick = self.policy.pick(&info, candidates);
        let slot = &self.endpoints[if panic_mode { pick } else { self.active_slots[pick] }];
        let completion = Completion::new(slot.state.start(now, info.work), self.pool.clone());
        ResponseFuture::new(slot.service.clone().oneshot(req), completion, self.completion.clone())
    }
}

impl<D, S, Req, C> fmt::Debug for Balance<D, S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("endpoints", &self.endpoints.iter().map(|s| s.state.id()).collect::<Vec<_>>())
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}
