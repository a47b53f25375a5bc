//! The drain on shutdown, without a call that races it ending `CANCELLED`.
//!
//! An HTTP/2 server drains by sending GOAWAY, finishing the streams it has, and closing. A gRPC
//! client that learns of the GOAWAY while a call of its own is on the way (tonic checks a
//! connection's readiness before it sends, then sends) gets that call back as `CANCELLED`, which
//! callers must not retry blindly, though it never reached a replica. So the gateway drains in two
//! steps, as Envoy's drain manager does:
//!
//! 1. From the signal on, each connection stays open, and a call that arrives is refused at once
//!    with `UNAVAILABLE` ("the gateway is shutting down"): retryable, and the client may retry on
//!    another address. Calls already in flight go on to their end.
//! 2. When no serving thread has a call in flight any more, every connection sends GOAWAY (the
//!    graceful two-step one: streams the client opened before it heard are still answered, with
//!    `UNAVAILABLE`), and closes. Calls are counted per thread (no shared counter on the request
//!    path); each thread reports once to the gateway-wide [`DrainGate`] when its count reaches
//!    zero, which it then keeps, as new calls are refused.
//!
//! The drain timeout bounds the whole, as before.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{Notify, watch};

use super::downstream::{ConnectionError, ServeConnection};

/// The calls in flight on one serving thread, counted from the request to the end of its
/// response body.
#[derive(Debug, Default)]
pub(crate) struct CallsInFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl CallsInFlight {
    fn start(self: &Arc<Self>) -> CallGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// Returns once no call is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so an end between the two is not missed.
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The gateway-wide end of the drain: open until every serving thread has reported that its
/// calls in flight have ended.
#[derive(Debug)]
pub(crate) struct DrainGate {
    busy_threads: AtomicUsize,
    open: Notify,
}

impl DrainGate {
    /// A gate for `threads` serving threads.
    pub(crate) fn new(threads: usize) -> Self {
        Self { busy_threads: AtomicUsize::new(threads), open: Notify::new() }
    }

    /// One serving thread has no call in flight any more (call once per thread).
    pub(crate) fn thread_drained(&self) {
        if self.busy_threads.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.notify_waiters();
        }
    }

    /// Returns once every serving thread has drained.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.open.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.busy_threads.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One call in flight; dropping it ends the call.
#[derive(Debug)]
pub(crate) struct CallGuard(Arc<CallsInFlight>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The proxy of one connection: forwards calls to `inner` while serving, refuses them with
/// `UNAVAILABLE` once the drain has begun, and counts the calls it forwards.
///
/// The drain's start is read from an atomic flag (set once, read by every call: its cache line
/// stays shared between the cores), and the call's future is `inner`'s, wrapped without a box.
#[derive(Clone, Debug)]
pub(crate) struct Draining<S> {
    inner: S,
    calls: Arc<CallsInFlight>,
    draining: Arc<AtomicBool>,
}

impl<S> Draining<S> {
    pub(crate) fn new(inner: S, calls: Arc<CallsInFlight>, draining: Arc<AtomicBool>) -> Self {
        Self { inner, calls, draining }
    }
}

impl<S, Req, B> hyper::service::Service<Req> for Draining<S>
where
    S: hyper::service::Service<Req, Response = http::Response<B>>,
    B: Default,
{
    type Response = http::Response<Counted<B>>;
    type Error = S::Error;
    type Future = DrainingFuture<S::Future, B>;

    fn call(&self, req: Req) -> Self::Future {
        if self.draining.load(Ordering::Acquire) {
            return DrainingFuture::Refused { body: std::marker::PhantomData };
        }
        let call = self.calls.start();
        DrainingFuture::Forward { inner: self.inner.call(req), call: Some(call) }
    }
}

pin_project! {
    /// The future of [`Draining`]: the refusal (built when polled, so that the future stays
    /// the size of the call's), or the inner call with its guard.
    #[project = DrainingProj]
    pub(crate) enum DrainingFuture<F, B> {
        Refused { body: std::marker::PhantomData<fn() -> B> },
        Forward { #[pin] inner: F, call: Option<CallGuard> },
    }
}

impl<F, B, E> Future for DrainingFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Default,
{
    type Output = Result<http::Response<Counted<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DrainingProj::Refused { .. } => {
                let refused = switchyard_core::Status {
                    code: switchyard_core::Code::Unavailable,
                    message: "the gateway is shutting down; retry elsewhere".into(),
                    retry_after: None,
                }
                .to_http::<B>()
                .map(|body| Counted { inner: body, _call: None });
                Poll::Ready(Ok(refused))
            }
            DrainingProj::Forward { inner, call } => {
                let response = std::task::ready!(inner.poll(cx))?;
                let call = call.take();
                Poll::Ready(Ok(response.map(|body| Counted { inner: body, _call: call })))
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its call counted in flight until it is dropped.
    #[derive(Debug)]
    pub(crate) struct Counted<B> {
        #[pin]
        inner: B,
        _call: Option<CallGuard>,
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `connection` until it ends; once `draining` turns true, waits until `gate` opens (no
/// serving thread has a call in flight), then shuts the connection down gracefully (GOAWAY) and
/// lets it finish.
pub(crate) async fn serve_connection<S, I>(
    mut connection: ServeConnection<S, I>,
    gate: Arc<DrainGate>,
    mut draining: watch::Receiver<bool>,
) -> Result<(), ConnectionError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    ServeConnection<S, I>: Future<Output = Result<(), ConnectionError>> + Unpin,
{
    tokio::select! {
        result = &mut connection => return result,
        () = async { drop(draining.wait_for(|d| *d).await) } => {}
    }
    tokio::select! {
        result = &mut connection => return result,
        () = gate.drained() => {}
    }
    connection.graceful_shutdown();
    connection.await
}
