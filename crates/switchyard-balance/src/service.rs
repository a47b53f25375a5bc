//! `Balance`: the balancer service.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use switchyard_core::{Endpoint, EndpointId, Error, ErrorKind, FinalAttempt, PickRecorder, TriedEndpoints};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tower::discover::{Change, Discover as _};
use tower::{BoxError, Service, ServiceExt};

use crate::board::LoadBoard;
use crate::completion::{Completion, HttpCompletion, TrackCompletion};
use crate::directory::{self, Directory, Slot, Writer};
use crate::endpoint::{EndpointState, TrackingConfig};
use crate::future::ResponseFuture;
use crate::observer::{Observer, PickedEndpoint};
use crate::outlier::{OutlierConfig, PoolState};
use crate::policy::{Endpoints, PolicyHandle, RequestInfo};

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

/// Gives policies access to a request's extensions (where routing keys travel), and the
/// balancer a place to record the endpoint it picked.
///
/// Implemented for `http::Request<B>`; implement it for other request types, returning `None`
/// when they have no extensions.
pub trait RequestExtensions {
    /// The request's extensions, if it has any.
    fn extensions(&self) -> Option<&http::Extensions>;

    /// The request's extensions, to write into, if it has any.
    fn extensions_mut(&mut self) -> Option<&mut http::Extensions> {
        None
    }

    /// The method the request calls, as its HTTP/2 `:path` (`/package.Service/Method` for gRPC),
    /// if it has one: each method's first bytes are read against that method's own speed to tell
    /// a slowed endpoint (a unary call's first byte takes its whole generation, a stream's only
    /// its prefill). `None` reads them against the speed over every request.
    fn method_path(&self) -> Option<&str> {
        None
    }
}

impl<B> RequestExtensions for http::Request<B> {
    fn extensions(&self) -> Option<&http::Extensions> {
        Some(http::Request::extensions(self))
    }

    fn extensions_mut(&mut self) -> Option<&mut http::Extensions> {
        Some(http::Request::extensions_mut(self))
    }

    fn method_path(&self) -> Option<&str> {
        Some(self.uri().path())
    }
}

/// How long a balancer with no endpoints holds `poll_ready` before it lets requests fail with
/// [`NoEndpoint`](switchyard_core::ErrorKind::NoEndpoint): long enough for discovery's first answer, short enough to fail fast.
pub const DEFAULT_NO_ENDPOINT_WAIT: Duration = Duration::from_secs(3);

/// A tower service that sends each request to one endpoint picked by a [`Policy`](crate::Policy).
///
/// Endpoints come from a [`Discover`](tower::discover::Discover) stream of [`Change`]s keyed by [`EndpointId`] whose services
/// are [`Backend`]s, applied by a task of the balancer's own, off the request path (see
/// [`Balance::new`]); or from a fixed list ([`Balance::from_backends`]). Every call: the current
/// members are shown to the policy with the request's extensions (see
/// [`Endpoints`](crate::policy::Endpoints): the eligible ones, every member, the membership
/// generation); the pick's in-flight count goes up; the request, with the [`PickedEndpoint`] in
/// its extensions, goes to a clone of that endpoint's service (which must be `Clone`, as tonic
/// channels are), driven to readiness in the response future; and `C` ([`HttpCompletion`] by
/// default) keeps the request counted until its response ends, then records its latency,
/// [`Outcome`](switchyard_core::Outcome) and load report, and tells the [`Observer`].
///
/// Errors are [`switchyard_core::Error`]s naming the balancer ([`with_name`](Self::with_name))
/// and the endpoint: [`NoEndpoint`](ErrorKind::NoEndpoint) when there is no member (after waiting
/// at most [`DEFAULT_NO_ENDPOINT_WAIT`] for discovery's first answer),
/// [`NoneFits`](ErrorKind::NoneFits) when the policy finds none fit, and the endpoint's own
/// failure (its cause kept for the log). If every member is ejected, the policy picks among all
/// of them (Envoy's panic mode) rather than fail.
///
/// A retried request (`switchyard-retry`) carries the endpoints it was sent to before in its
/// [`TriedEndpoints`]: the policy is then shown the eligible endpoints not among them, when
/// there is one. An attempt no retry can save carries a [`FinalAttempt`]: the policy is then
/// shown the eligible endpoints not under suspicion (see
/// [`EndpointState::is_suspect`](crate::EndpointState::is_suspect)), when there is one.
pub struct Balance<S, Req, C = HttpCompletion> {
    owner: Owner<S>,
    /// The members, as of directory version `version`, and their generation.
    slots: Vec<Slot<S>>,
    version: u64,
    generation: u64,
    /// Endpoints the policy may pick, and their index in the snapshot.
    eligible: Vec<Arc<EndpointState>>,
    eligible_slots: Vec<usize>,
    /// Every member, and its index in `eligible` if it has one.
    members: Vec<Arc<EndpointState>>,
    member_eligible: Vec<Option<usize>>,
    /// With per-endpoint limits: the eligible endpoints below their limit, per call (reused).
    open: Vec<Arc<EndpointState>>,
    open_slots: Vec<usize>,
    member_open: Vec<Option<usize>>,
    next_return: Option<Instant>,
    seen_ejections: u64,
    dirty: bool,
    no_endpoint_wait: Duration,
    empty_timer: Option<Pin<Box<Sleep>>>,
    /// Whether the request going to the endpoint carries the [`PickedEndpoint`].
    pick_in_requests: bool,
    policy: PolicyHandle,
    pool: Arc<PoolState>,
    completion: C,
    _req: PhantomData<fn(Req)>,
}

/// The balancer's hold on its directory and discovery task: when the balancer is dropped, the
/// task stops and its endpoints leave the board (a board shared with other balancers, the
/// autoscaler or the admin API shows no endpoint that nothing balances to any more).
struct Owner<S> {
    directory: Arc<Directory<S>>,
    task: Option<AbortHandle>,
}

impl<S> Drop for Owner<S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.directory.clear_board();
    }
}

impl<S, Req> Balance<S, Req, HttpCompletion>
where
    S: Clone + Send + 'static,
{
    /// A balancer over `discover`, with the default policy ([`PolicyKind::DEFAULT`], its random
    /// draws seeded on their own: [`PolicyHandle::default`](crate::PolicyHandle)), its own
    /// [`LoadBoard`], default load tracking and outlier detection, and [`HttpCompletion`].
    ///
    /// The changes `discover` has ready now are applied at once (a static list is on the board
    /// before this returns, and no task is needed for it); the rest are applied by a task spawned
    /// here on the current tokio runtime, as they come, whether or not requests flow (as tower's
    /// `Buffer`, this panics outside a runtime when a task is needed). The task ends when the
    /// stream ends or the balancer is dropped.
    ///
    /// [`PolicyKind::DEFAULT`]: crate::PolicyKind::DEFAULT
    pub fn new<D, E>(discover: D) -> Self
    where
        D: futures::Stream<Item = Result<Change<EndpointId, Backend<S>>, E>> + Send + 'static,
        E: Into<BoxError> + Send,
    {
        let mut balancer = Self::empty();
        let mut discover = Box::pin(discover);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let directory = &balancer.owner.directory;
        loop {
            match discover.as_mut().poll_discover(&mut cx) {
                Poll::Ready(Some(Ok(change))) => directory.apply(change),
                Poll::Ready(None) => {
                    directory.end();
                    return balancer;
                }
                // Pending, or an error: the task takes over (and logs the error).
                Poll::Ready(Some(Err(_))) | Poll::Pending => break,
            }
        }
        let weak = Arc::downgrade(directory);
        let task = tokio::spawn(directory::run(discover, weak));
        balancer.owner.task = Some(task.abort_handle());
        balancer
    }

    /// A balancer over a fixed list of endpoints, inserted at once: they are on the
    /// [`board`](Self::board) before the first request. No task is spawned. The same as
    /// [`new`](Self::new) over [`discover::from_backends`](crate::discover::from_backends).
    pub fn from_backends(backends: impl IntoIterator<Item = Backend<S>>) -> Self {
        Self::new(crate::discover::from_backends(backends))
    }

    fn empty() -> Self {
        let pool = Arc::new(PoolState::new(OutlierConfig::default()));
        let directory = Arc::new(Directory::new(Writer {
            slots: Vec::new(),
            generation: 0,
            board: LoadBoard::new(),
            tracking: TrackingConfig::default(),
            pool: pool.clone(),
        }));
        Self {
            owner: Owner { directory, task: None },
            slots: Vec::new(),
            version: 0,
            generation: 0,
            eligible: Vec::new(),
            eligible_slots: Vec::new(),
            members: Vec::new(),
            member_eligible: Vec::new(),
            open: Vec::new(),
            open_slots: Vec::new(),
            member_open: Vec::new(),
            next_return: None,
            seen_ejections: 0,
            dirty: true,
            no_endpoint_wait: DEFAULT_NO_ENDPOINT_WAIT,
            empty_timer: None,
            pick_in_requests: true,
            policy: PolicyHandle::default(),
            pool,
            completion: HttpCompletion::default(),
            _req: PhantomData,
        }
    }
}

impl<S, Req, C> Balance<S, Req, C>
where
    S: Clone,
{
    /// The same balancer, picking with the policy in `policy` (keep a clone of the handle to
    /// switch it later).
    pub fn with_policy(mut self, policy: PolicyHandle) -> Self {
        self.policy = policy;
        self
    }

    /// The same balancer, publishing its endpoints on `board` (shared with other readers).
    pub fn with_board(self, board: LoadBoard) -> Self {
        // Endpoints already inserted move to the new board.
        self.owner.directory.move_to_board(board);
        self
    }

    /// The same balancer with these outlier-ejection settings.
    pub fn with_outlier(self, outlier: OutlierConfig) -> Self {
        self.with_pool(|pool| pool.outlier = outlier)
    }

    /// The same balancer, named `name` (a gateway's pool name): its errors and observations
    /// carry it.
    pub fn with_name(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.with_pool(|pool| pool.name = Some(name))
    }

    /// The same balancer with a concurrency limit per endpoint, each learnt by its own algorithm
    /// from `limit` (see [`EndpointLimit`](crate::EndpointLimit)): policies skip an endpoint at its
    /// limit, and while every endpoint is at its limit the balancer is not ready (requests wait in
    /// front of it, in a shed queue when there is one). Endpoints already inserted get one too.
    pub fn with_endpoint_limit(self, limit: crate::EndpointLimit) -> Self {
        let balancer = self.with_pool(|pool| pool.endpoint_limit = Some(limit.clone()));
        for slot in &balancer.owner.directory.writer().slots {
            slot.state.set_limit(Some(limit.build()));
        }
        balancer
    }

    /// Whether every eligible endpoint is at its limit (false without per-endpoint limits).
    fn all_at_limit(&self) -> bool {
        self.pool.endpoint_limit.is_some()
            && !self.eligible.is_empty()
            && self.eligible.iter().all(|e| e.is_at_limit())
    }

    /// The eligible endpoints below their limit, into `open`.
    fn select_open(&mut self) {
        self.open.clear();
        self.open_slots.clear();
        self.member_open.clear();
        for eligible in &self.member_eligible {
            match *eligible {
                Some(i) if !self.eligible[i].is_at_limit() => {
                    self.member_open.push(Some(self.open.len()));
                    self.open.push(self.eligible[i].clone());
                    self.open_slots.push(self.eligible_slots[i]);
                }
                _ => self.member_open.push(None),
            }
        }
    }

    /// The same balancer, telling `observer` about every request when it ends.
    pub fn with_observer(self, observer: Arc<dyn Observer>) -> Self {
        self.with_pool(|pool| pool.observer = Some(observer))
    }

    /// The pool state replaced by a changed copy, counts kept (requests already in flight keep
    /// the old one).
    fn with_pool(mut self, change: impl FnOnce(&mut PoolState)) -> Self {
        let pool = Arc::new(self.pool.with(change));
        self.owner.directory.writer().pool = pool.clone();
        self.pool = pool;
        self
    }

    /// The same balancer with these latency-tracking settings, for its endpoints now and later.
    pub fn with_tracking(self, tracking: TrackingConfig) -> Self {
        let mut writer = self.owner.directory.writer();
        writer.tracking = tracking;
        for slot in &writer.slots {
            slot.state.set_tracking(tracking);
        }
        drop(writer);
        self
    }

    /// The same balancer, waiting at most `wait` for a first endpoint before failing requests.
    pub fn with_no_endpoint_wait(mut self, wait: Duration) -> Self {
        self.no_endpoint_wait = wait;
        self
    }

    /// The same balancer, recording the [`PickedEndpoint`] in the requests it sends (the default)
    /// or not. The response carries it either way ([`HttpCompletion`]). Turn it off when nothing
    /// below the balancer reads it: it costs an extension insert per request (a gateway's own
    /// endpoint clients do not read it).
    pub fn with_picked_endpoint_in_requests(mut self, record: bool) -> Self {
        self.pick_in_requests = record;
        self
    }

    /// The same balancer, tracking responses with `completion`.
    pub fn with_completion<C2>(self, completion: C2) -> Balance<S, Req, C2> {
        Balance {
            owner: self.owner,
            slots: self.slots,
            version: self.version,
            generation: self.generation,
            eligible: self.eligible,
            eligible_slots: self.eligible_slots,
            members: self.members,
            member_eligible: self.member_eligible,
            open: self.open,
            open_slots: self.open_slots,
            member_open: self.member_open,
            next_return: self.next_return,
            seen_ejections: self.seen_ejections,
            dirty: self.dirty,
            no_endpoint_wait: self.no_endpoint_wait,
            empty_timer: self.empty_timer,
            pick_in_requests: self.pick_in_requests,
            policy: self.policy,
            pool: self.pool,
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
        self.owner.directory.writer().board.clone()
    }

    /// How many endpoints the balancer has (ejected ones included, draining ones not).
    pub fn len(&self) -> usize {
        self.owner.directory.len()
    }

    /// Whether the balancer has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The membership generation: it moves when endpoints are added or removed, not when they
    /// are ejected or updated in place.
    pub fn generation(&self) -> u64 {
        self.owner.directory.writer().generation
    }

    /// Takes discovery's latest members, and applies ejections and returns since the last call.
    fn refresh(&mut self, now: Instant) {
        if self.owner.directory.version() != self.version {
            (self.slots, self.generation, self.version) = self.owner.directory.read();
            self.dirty = true;
        }
        let ejections = self.pool.generation.load(Ordering::Acquire);
        let returning = self.next_return.is_some_and(|t| t <= now);
        if !self.dirty && !returning && ejections == self.seen_ejections {
            return;
        }
        self.seen_ejections = ejections;
        self.dirty = false;
        self.eligible.clear();
        self.eligible_slots.clear();
        self.members.clear();
        self.member_eligible.clear();
        self.next_return = None;
        for (i, slot) in self.slots.iter().enumerate() {
            self.members.push(slot.state.clone());
            let mut outlier = slot.state.outlier.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if outlier.try_return(now) {
                self.pool.release_ejection();
                tracing::info!(endpoint = %slot.state.id(), "ejected endpoint returns");
            }
            match outlier.ejected_until {
                Some(until) => {
                    self.next_return = Some(self.next_return.map_or(until, |t| t.min(until)));
                    self.member_eligible.push(None);
                }
                None => {
                    self.member_eligible.push(Some(self.eligible.len()));
                    self.eligible.push(slot.state.clone());
                    self.eligible_slots.push(i);
                }
            }
        }
        if self.eligible.is_empty() {
            // Panic mode: every member is ejected, so every member is eligible.
            self.eligible.extend(self.members.iter().cloned());
            self.eligible_slots.extend(0..self.members.len());
            self.member_eligible.clear();
            self.member_eligible.extend((0..self.members.len()).map(Some));
        }
    }

    fn error(&self, kind: ErrorKind) -> Error {
        let e = Error::new(kind);
        match &self.pool.name {
            Some(name) => e.in_pool(name.clone()),
            None => e,
        }
    }
}

impl<S, Req, C> Service<Req> for Balance<S, Req, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: RequestExtensions,
    C: TrackCompletion<S::Response> + Clone,
{
    type Response = C::Output;
    type Error = BoxError;
    type Future = ResponseFuture<tower::util::Oneshot<S, Req>, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let directory = &self.owner.directory;
        // Endpoints, or none and none to come: ready (a call without endpoints fails at once).
        let settled = || directory.len() > 0 || directory.is_ended();
        if settled() {
            self.empty_timer = None;
            if self.pool.endpoint_limit.is_some() {
                self.refresh(Instant::now());
                if self.all_at_limit() {
                    // Registered before the second look, so that a request ending in between
                    // still wakes this caller.
                    self.pool.limit_waiters.register(cx.waker());
                    if self.all_at_limit() {
                        return Poll::Pending;
                    }
                }
            }
            return Poll::Ready(Ok(()));
        }
        // No endpoint yet: give discovery a bounded time, then fail fast.
        directory.register(cx.waker());
        if settled() {
            self.empty_timer = None;
            return Poll::Ready(Ok(()));
        }
        let wait = self.no_endpoint_wait;
        let timer = self.empty_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = Instant::now();
        self.refresh(now);
        if self.eligible.is_empty() {
            return ResponseFuture::failed(self.error(ErrorKind::NoEndpoint).into(), self.completion.clone());
        }
        let info = RequestInfo::new(req.extensions(), now);
        let limited = self.pool.endpoint_limit.is_some();
        if limited {
            self.select_open();
            if self.open.is_empty() {
                // Every endpoint at its limit: called without waiting for readiness.
                let overloaded = ErrorKind::Overloaded { retry_after: None };
                return ResponseFuture::failed(self.error(overloaded).into(), self.completion.clone());
            }
        }
        let (eligible, eligible_slots, member_eligible) = if limited {
            (&self.open, &self.open_slots, &self.member_open)
        } else {
            (&self.eligible, &self.eligible_slots, &self.member_eligible)
        };
        // A retried request goes to an endpoint it has not tried, when one is eligible. Only
        // retries carry the key, so the first attempt pays one extension lookup.
        let untried;
        let (eligible, eligible_slots, member_eligible) = match req
            .extensions()
            .and_then(|e| e.get::<TriedEndpoints>())
        {
            Some(tried)
                if eligible.iter().any(|e| tried.contains(e.id()))
                    && eligible.iter().any(|e| !tried.contains(e.id())) =>
            {
                untried =
                    Subset::select(|e| !tried.contains(e.id()), eligible, eligible_slots, member_eligible);
                (&untried.eligible, &untried.slots, &untried.members)
            }
            _ => (eligible, eligible_slots, member_eligible),
        };
        // An attempt no retry can save stays off endpoints under suspicion while another is
        // eligible: calls that can be saved try them again. Only a retry layer marks attempts.
        let trusted;
        let (eligible, eligible_slots, member_eligible) =
            match req.extensions().and_then(|e| e.get::<FinalAttempt>()) {
                Some(_) => {
                    let window = self.pool.outlier.base_ejection;
                    let suspect = |e: &EndpointState| e.is_suspect(now, window);
                    if eligible.iter().any(|e| suspect(e)) && eligible.iter().any(|e| !suspect(e)) {
                        trusted = Subset::select(|e| !suspect(e), eligible, eligible_slots, member_eligible);
                        (&trusted.eligible, &trusted.slots, &trusted.members)
                    } else {
                        (eligible, eligible_slots, member_eligible)
                    }
                }
                None => (eligible, eligible_slots, member_eligible),
            };
        let endpoints = Endpoints::new(eligible, &self.members, member_eligible, self.generation);
        let pick = match self.policy.pick(&info, &endpoints) {
            Some(pick) if pick < eligible.len() => pick,
            Some(pick) => {
                tracing::error!(
                    policy = self.policy.name(),
                    pick,
                    eligible = eligible.len(),
                    "policy picked out of range"
                );
                return ResponseFuture::failed(
                    self.error(ErrorKind::NoneFits).into(),
                    self.completion.clone(),
                );
            }
            None => {
                return ResponseFuture::failed(
                    self.error(ErrorKind::NoneFits).into(),
                    self.completion.clone(),
                );
            }
        };
        let work = info.work;
        let slot: &Slot<S> = &self.slots[eligible_slots[pick]];
        // A layer above that may hedge this attempt learns where it went.
        if let Some(recorder) = req.extensions().and_then(|e| e.get::<PickRecorder>()) {
            recorder.record(slot.state.id());
        }
        if self.pick_in_requests
            && let Some(extensions) = req.extensions_mut()
        {
            extensions.insert(PickedEndpoint(slot.state.id().clone()));
        }
        let method =
            req.method_path().map_or(crate::method_speed::NO_METHOD, crate::method_speed::method_key);
        let completion = Completion::new(slot.state.start(now, work).for_method(method), self.pool.clone());
        ResponseFuture::new(slot.service.clone().oneshot(req), completion, self.completion.clone())
    }
}

/// The eligible endpoints a request may go to among those the pool could take (those a retried
/// request has not tried yet, those not under suspicion), in the shape the policy reads.
struct Subset {
    eligible: Vec<Arc<EndpointState>>,
    slots: Vec<usize>,
    members: Vec<Option<usize>>,
}

impl Subset {
    fn select(
        keep: impl Fn(&EndpointState) -> bool,
        eligible: &[Arc<EndpointState>],
        eligible_slots: &[usize],
        member_eligible: &[Option<usize>],
    ) -> Self {
        let mut untried = Self {
            eligible: Vec::with_capacity(eligible.len()),
            slots: Vec::with_capacity(eligible.len()),
            members: Vec::with_capacity(member_eligible.len()),
        };
        for index in member_eligible {
            match *index {
                Some(i) if keep(&eligible[i]) => {
                    untried.members.push(Some(untried.eligible.len()));
                    untried.eligible.push(eligible[i].clone());
                    untried.slots.push(eligible_slots[i]);
                }
                _ => untried.members.push(None),
            }
        }
        untried
    }
}

impl<S, Req, C> fmt::Debug for Balance<S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("endpoints", &self.slots.iter().map(|s| s.state.id()).collect::<Vec<_>>())
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}
