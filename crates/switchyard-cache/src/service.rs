//! [`Cache`]: answers a cached method's repeated requests from the store, and identical
//! requests in flight from one upstream call.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use switchyard_core::{Deadline, Error, ErrorKind};
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::body::{ReplayBody, read_bounded};
use crate::config::{CacheConfig, CacheRule};
use crate::error::SharedError;
use crate::grpc::{grpc_status, message_count};
use crate::store::{Counters, Key, Store, Stored, count};

/// What the services of one layer share: the settings and the store.
pub(crate) struct Shared {
    pub(crate) config: CacheConfig,
    pub(crate) store: Store,
}

/// The response cache in front of `S`; see the [crate docs](crate).
pub struct Cache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Cache<S> {
    /// `inner` behind a cache of its own, as `config` says (a [`CacheLayer`](crate::CacheLayer)
    /// shares one store among the services it builds).
    pub fn new(inner: S, config: CacheConfig) -> Self {
        let store = Store::new(&config);
        Self::from_shared(inner, Arc::new(Shared { config, store }))
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// What the cache has done, and its size now.
    pub fn stats(&self) -> crate::CacheStats {
        self.shared.store.stats()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), shared: self.shared.clone() }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("inner", &self.inner).field("stats", &self.stats()).finish()
    }
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for Cache<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Unpin + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: ReplayBody + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = http::Response<ResB>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<ResB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        // The inner service said it is ready: that one is called, perhaps later (tower's rule).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let Some(rule) = self.shared.config.rule(req.uri().path()).cloned() else {
            let mut inner = inner;
            let future = inner.call(req);
            return Box::pin(async move { future.await.map_err(Into::into) });
        };
        Box::pin(serve(self.shared.clone(), rule, inner, req))
    }
}

/// Why the one call of a coalesced group left nothing to store.
enum Uncached {
    /// A whole answer that must not be stored (an error status, a stream): every caller gets a
    /// copy.
    Answer(Arc<Stored>),
    /// The upstream call failed: every caller gets the error.
    Failed(SharedError),
    /// An answer that was not read whole (larger than the bound, or a stream): its own caller
    /// gets it; the others make their own calls.
    NotShared,
}

type Pending<S, B> = Arc<Mutex<Option<(S, http::Request<B>)>>>;
type Answer<B> = Arc<Mutex<Option<http::Response<B>>>>;

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

async fn serve<S, ReqB, ResB>(
    shared: Arc<Shared>,
    rule: CacheRule,
    mut inner: S,
    req: http::Request<ReqB>,
) -> Result<http::Response<ResB>, BoxError>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody + Unpin + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: ReplayBody + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let store = &shared.store;
    let config = &shared.config;
    let (parts, body) = req.into_parts();
    let max_messages = (!rule.streams).then_some(1);
    let deadline = parts.extensions.get::<Deadline>().map(|Deadline(own)| *own);
    // The body is read before anything else: a client that stalls it is given up on at the
    // read timeout, or at the request's own deadline if sooner.
    let mut give_up = Instant::now() + config.read_timeout;
    if let Some(own) = deadline {
        give_up = give_up.min(own);
    }
    let read =
        match tokio::time::timeout_at(give_up, read_bounded(body, config.max_request_bytes, max_messages))
            .await
        {
            Ok(read) => read.map_err(Into::into)?,
            Err(_) => {
                count(&store.counters.timed_out);
                let cause =
                    format!("response cache: the request body did not end within {:?}", config.read_timeout);
                return Err(Box::new(Error::new(ErrorKind::DeadlineExceeded).with_source(cause)));
            }
        };
    let whole = read.whole.filter(|whole| {
        rule.when.as_ref().is_none_or(|when| when(&parts, whole))
            && message_count(whole).is_some_and(|n| n == 1 || (rule.streams && n > 0))
    });
    let request = http::Request::from_parts(parts, ReqB::replay(read.frames, read.rest));
    let Some(whole) = whole else {
        count(&store.counters.bypassed);
        return inner.call(request).await.map_err(Into::into);
    };
    let key_bytes = match &rule.key {
        None => Some(whole),
        Some(canonical) => canonical(&whole),
    };
    let Some(key_bytes) = key_bytes else {
        count(&store.counters.bypassed);
        return inner.call(request).await.map_err(Into::into);
    };
    let key = Key { method: request.uri().path().to_string(), request: key_bytes };
    if let Some(stored) = store.cache.get(&key).await {
        if stored.fresh(Instant::now()) {
            count(&store.counters.hits);
            return Ok(stored.to_response());
        }
        store.cache.invalidate(&key).await;
    }

    // This caller's request and ready service, for the one call if this caller makes it, or for
    // a call of its own if the one call's answer cannot be shared.
    let pending: Pending<S, ReqB> = Arc::new(Mutex::new(Some((inner, request))));
    // The answer of the one call, whole and unchanged, for the caller that made it.
    let own: Answer<ResB> = Arc::new(Mutex::new(None));
    let mut give_up = Instant::now() + config.response_timeout;
    if let Some(own) = deadline {
        give_up = give_up.min(own);
    }
    let init = bounded_fetch(
        give_up,
        store.counters.clone(),
        config.response_timeout,
        fetch(pending.clone(), own.clone(), rule, key.clone(), config.max_response_bytes, config.ttl),
    );
    let result = store.cache.try_get_with(key, init).await;
    let own = take(&own);
    let shared_answer = match result {
        Ok(stored) => Some(stored),
        Err(e) => match &*e {
            Uncached::Answer(stored) => Some(stored.clone()),
            Uncached::Failed(error) => return Err(error.to_box()),
            Uncached::NotShared => None,
        },
    };
    if let Some(own) = own {
        count(&store.counters.misses);
        return Ok(own);
    }
    if let Some(stored) = shared_answer {
        count(&store.counters.hits);
        return Ok(stored.to_response());
    }
    // The one call's answer could not be shared: this caller makes its own, uncached.
    count(&store.counters.bypassed);
    let Some((mut inner, request)) = take(&pending) else {
        return Err("response cache: the request was handed to a call that left no answer".into());
    };
    inner.call(request).await.map_err(Into::into)
}

/// `fetch`, given up on at `give_up`: the call is dropped, nothing is stored, and every caller
/// waiting on it gets `DEADLINE_EXCEEDED` (see [`CacheConfig::response_timeout`]).
async fn bounded_fetch(
    give_up: Instant,
    counters: Arc<Counters>,
    timeout: std::time::Duration,
    fetch: impl Future<Output = Result<Arc<Stored>, Uncached>>,
) -> Result<Arc<Stored>, Uncached> {
    match tokio::time::timeout_at(give_up, fetch).await {
        Ok(done) => done,
        Err(_) => {
            count(&counters.response_timed_out);
            let cause = format!(
                "response cache: the upstream answer did not arrive whole within {timeout:?} \
                 (or the deadline of the request that made the call)"
            );
            let error: BoxError = Box::new(Error::new(ErrorKind::DeadlineExceeded).with_source(cause));
            Err(Uncached::Failed(SharedError::new(error)))
        }
    }
}

/// The one upstream call of a group of identical requests: its answer, read whole if it fits,
/// goes unchanged to `own`; what `Ok` holds is stored.
async fn fetch<S, ReqB, ResB>(
    pending: Pending<S, ReqB>,
    own: Answer<ResB>,
    rule: CacheRule,
    key: Key,
    max_response_bytes: usize,
    ttl: std::time::Duration,
) -> Result<Arc<Stored>, Uncached>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: ReplayBody + Unpin,
    ResB::Error: Into<BoxError>,
{
    let Some((mut inner, request)) = take(&pending) else { return Err(Uncached::NotShared) };
    let response = inner.call(request).await.map_err(|e| Uncached::Failed(SharedError::new(e.into())))?;
    let (parts, body) = response.into_parts();
    let max_messages = (!rule.streams).then_some(1);
    let read = read_bounded(body, max_response_bytes, max_messages)
        .await
        .map_err(|e| Uncached::Failed(SharedError::new(e.into())))?;
    let Some(data) = read.whole else {
        *own.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(http::Response::from_parts(parts, ResB::replay(read.frames, read.rest)));
        return Err(Uncached::NotShared);
    };
    let status = grpc_status(&parts.headers, read.trailers.as_ref());
    let messages = message_count(&data);
    let stored = Arc::new(Stored::new(&parts, data, read.trailers.as_ref(), Instant::now() + ttl, &key));
    *own.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(http::Response::from_parts(parts, ResB::replay(read.frames, None)));
    let storable =
        status.is_some_and(|s| s == 0 || rule.errors) && messages.is_some_and(|n| n <= 1 || rule.streams);
    if storable { Ok(stored) } else { Err(Uncached::Answer(stored)) }
}
