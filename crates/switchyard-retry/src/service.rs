//! `Retry`: the service that sends a call again when that is safe.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use switchyard_core::{Deadline, FinalAttempt, PickRecorder, TriedEndpoints, parse_grpc_timeout};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Service, ServiceExt};

use crate::backoff::Backoff;
use crate::body::{Replayable, RetryBody};
use crate::classify::{Verdict, verdict};
use crate::config::RetryConfig;
use crate::hold::{HeldBody, hold};
use crate::stats::{Counters, RetryStats};

/// What every clone of a retry layer shares: its config, budget, counters and seed.
pub(crate) struct Policy {
    config: RetryConfig,
    budget: TpsBudget,
    counters: Counters,
    seed: u64,
}

impl Policy {
    pub(crate) fn new(config: RetryConfig, seed: u64) -> Self {
        let budget = TpsBudget::new(config.budget.ttl, config.budget.min_per_second, config.budget.ratio);
        Self { config, budget, counters: Counters::default(), seed }
    }

    pub(crate) fn stats(&self) -> RetryStats {
        self.counters.snapshot()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy").field("config", &self.config).field("stats", &self.stats()).finish()
    }
}

/// Sends each call to the service below and, when the attempt's result allows it (see the crate
/// docs), again, up to the policy's attempts, within the budget and the call's deadline, with
/// the request body replayed ([`RetryBody`]) and the endpoints tried so far in the request's
/// [`TriedEndpoints`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, policy: Arc<Policy>) -> Self {
        Self { inner, policy }
    }
}

impl<S, B, RB> Service<http::Request<B>> for Retry<S>
where
    S: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = http::Response<HeldBody<RB>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<HeldBody<RB>>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The service made ready goes with this call; the layer keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        Box::pin(attempts(inner, policy, req))
    }
}

/// The head of a request, to send again.
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = http::Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy.extensions = parts.extensions.clone();
    copy
}

async fn attempts<S, B, RB>(
    mut inner: S,
    policy: Arc<Policy>,
    req: http::Request<B>,
) -> Result<http::Response<HeldBody<RB>>, BoxError>
where
    S: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    RB: http_body::Body<Data = bytes::Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let config = &policy.config;
    let counters = &policy.counters;
    // The call's number: each call draws its own jitter from the layer's seed.
    let number = counters.calls.fetch_add(1, Ordering::Relaxed);
    policy.budget.deposit();
    let (parts, body) = req.into_parts();
    let deadline = parts.extensions.get::<Deadline>().map(|d| d.0).or_else(|| {
        let timeout = parse_grpc_timeout(parts.headers.get("grpc-timeout")?.as_bytes())?;
        Some(Deadline::after(Instant::now(), timeout).0)
    });
    let idempotent = config.is_idempotent(parts.uri.path());
    // A response held to its trailers is committed only once it has all come.
    let held = config.hold_limit(parts.uri.path());
    let call = Replayable::new(body, config.buffer_bytes);
    let seed = policy.seed ^ number.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut backoff = Backoff::new(config, seed);
    let mut tried = TriedEndpoints::default();
    let mut parts = parts;
    // A failure at its endpoint of a call that will not be retried reaches the caller: the
    // balancer keeps such attempts off endpoints under suspicion.
    if !idempotent || config.attempts <= 1 {
        parts.extensions.insert(FinalAttempt);
    }
    let head = copy_head(&parts);
    // A call that may be hedged learns from the balancer where its first attempt went, so that
    // the hedge goes elsewhere.
    let hedge = config.hedge_after.filter(|_| idempotent).map(|delay| {
        let recorder = PickRecorder::new();
        parts.extensions.insert(recorder.clone());
        (delay, recorder)
    });
    let first = inner.call(http::Request::from_parts(parts, call.first()));
    let first = hold(async move { first.await.map_err(Into::into) }, held, &counters.held_cut);
    let mut result = match hedge {
        Some((delay, recorder)) => {
            hedged(first, delay, &mut inner, &policy, &call, &head, &recorder, held).await
        }
        None => first.await,
    };
    for attempt in 1..config.attempts {
        let Verdict::Retry { endpoint, pushback } = verdict(&result, idempotent, config) else { break };
        if !call.is_replayable() {
            Counters::bump(&counters.not_replayable);
            break;
        }
        let wait = backoff.next(config, pushback);
        if deadline.is_some_and(|deadline| Instant::now() + wait >= deadline) {
            break;
        }
        if !policy.budget.withdraw() {
            Counters::bump(&counters.budget_exhausted);
            break;
        }
        let Some(body) = call.retry() else { break };
        // The earlier attempt is let go of (its stream reset) before the next one starts.
        drop(result);
        tried.extend(endpoint);
        Counters::bump(&counters.retries);
        tracing::debug!(path = head.uri.path(), ?wait, tried = ?tried.0, "retrying");
        tokio::time::sleep(wait).await;
        let mut req = http::Request::from_parts(copy_head(&head), body);
        req.extensions_mut().insert(tried.clone());
        if attempt + 1 == config.attempts {
            req.extensions_mut().insert(FinalAttempt);
        }
        let ready: Result<&mut S, BoxError> = inner.ready().await.map_err(Into::into);
        result = match ready {
            Ok(ready) => {
                let attempt = ready.call(req);
                hold(async move { attempt.await.map_err(Into::into) }, held, &counters.held_cut).await
            }
            Err(e) => Err(e),
        };
    }
    // The response has begun (or the call is over): nothing more is recorded.
    call.commit();
    result
}

/// The first attempt of an idempotent call, raced after `delay` by a hedge when its request has
/// been sent whole and the budget allows: the first answer wins, unless it is a failure a retry
/// would take while the other attempt is still out; the other is dropped, which cancels it (its
/// stream is reset, and its endpoint counts it as cancelled, not failed). The hedge carries the
/// first attempt's endpoint, as `recorder` got it from the balancer, in its [`TriedEndpoints`].
/// A held response (`held`) answers when it has all come.
#[allow(clippy::too_many_arguments)]
async fn hedged<S, B, RB>(
    first: impl Future<Output = Result<http::Response<HeldBody<RB>>, BoxError>>,
    delay: std::time::Duration,
    inner: &mut S,
    policy: &Policy,
    call: &Replayable<B>,
    head: &http::request::Parts,
    recorder: &PickRecorder,
    held: Option<usize>,
) -> Result<http::Response<HeldBody<RB>>, BoxError>
where
    S: Service<http::Request<RetryBody<B>>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    RB: http_body::Body<Data = bytes::Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    let mut first = std::pin::pin!(first);
    tokio::select! {
        result = &mut first => return result,
        () = tokio::time::sleep(delay) => {}
    }
    // A stream still sending, or a call past its buffer: no hedge.
    let Some(body) = call.hedge() else { return first.await };
    if !policy.budget.withdraw() {
        Counters::bump(&policy.counters.budget_exhausted);
        return first.await;
    }
    Counters::bump(&policy.counters.hedges);
    tracing::debug!(path = head.uri.path(), ?delay, "hedging");
    let mut req = http::Request::from_parts(copy_head(head), body);
    if let Some(first_endpoint) = recorder.picked() {
        req.extensions_mut().insert(TriedEndpoints(vec![first_endpoint.clone()]));
    }
    let second = async move {
        let ready: Result<&mut S, BoxError> = inner.ready().await.map_err(Into::into);
        let attempt = ready?.call(req);
        hold(async move { attempt.await.map_err(Into::into) }, held, &policy.counters.held_cut).await
    };
    let mut second = std::pin::pin!(second);
    let config = &policy.config;
    tokio::select! {
        result = &mut first => match verdict(&result, true, config) {
            Verdict::Done => result,
            Verdict::Retry { .. } => second.await,
        },
        result = &mut second => match verdict(&result, true, config) {
            Verdict::Done => result,
            Verdict::Retry { .. } => first.await,
        },
    }
}
