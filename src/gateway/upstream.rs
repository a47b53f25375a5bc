//! The gateway's side of an endpoint: per serving thread, one HTTP/2 connection (prior knowledge,
//! no TLS) that the thread's requests to the endpoint share, opened on first use and opened again
//! after it fails.
//!
//! hyper's pooled client does the connection keeping; this service only points each request at
//! its endpoint (the balancer has picked it) by giving the request's URI the endpoint's scheme and
//! authority, and leaves every header as the client sent it. It has no buffer task of its own
//! (tonic's `Channel` has one), and each serving thread has its own client, whose connections
//! run on that thread: a request goes from the client's stream to the endpoint's connection
//! without waking another thread (as Envoy's workers each keep their own connection pools).

use std::cell::Cell;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::BoxError;

use super::body::RequestBody;

/// Longest wait for a TCP connection to an endpoint before its requests fail with `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often an idle connection to an endpoint is pinged, so a dead peer is found before a request
/// waits on it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

thread_local! {
    /// The index of the gateway thread running here (0 on other threads).
    static THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as the gateway's serving thread `index`: its requests go through
/// client `index` of every [`Clients`].
pub(crate) fn set_thread_index(index: usize) {
    THREAD.with(|t| t.set(index));
}

/// One HTTP/2 client per serving thread, shared by every endpoint of every pool (a client keeps
/// one connection per endpoint address).
#[derive(Clone, Debug)]
pub(crate) struct Clients(Arc<[Client<HttpConnector, RequestBody>]>);

impl Clients {
    /// Clients for `threads` serving threads.
    pub(crate) fn new(threads: usize) -> Self {
        Self((0..threads.max(1)).map(|_| client()).collect())
    }

    /// The client of the current thread.
    fn current(&self) -> &Client<HttpConnector, RequestBody> {
        let index = THREAD.with(Cell::get);
        &self.0[index % self.0.len()]
    }
}

fn client() -> Client<HttpConnector, RequestBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .http2_keep_alive_while_idle(false)
        .build(connector)
}

/// Sends requests to one endpoint.
#[derive(Clone, Debug)]
pub(crate) struct EndpointClient {
    clients: Clients,
    scheme: Scheme,
    authority: Authority,
}

/// An endpoint's address that is not `http://HOST:PORT`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an http://HOST:PORT address")]
pub(crate) struct BadAddress(String);

impl EndpointClient {
    /// A client for the endpoint at `address` (`http://HOST:PORT`); connects on first use.
    pub(crate) fn new(clients: Clients, address: &str) -> Result<Self, BadAddress> {
        let uri: Uri = address.parse().map_err(|_| BadAddress(address.to_owned()))?;
        let parts = uri.into_parts();
        match (parts.scheme, parts.authority) {
            (Some(scheme), Some(authority)) if scheme == Scheme::HTTP => {
                Ok(Self { clients, scheme, authority })
            }
            _ => Err(BadAddress(address.to_owned())),
        }
    }
}

/// The response future of [`EndpointClient`].
pub(crate) type EndpointFuture = Either<Ready<Result<Response<Incoming>, BoxError>>, ErrInto>;

impl tower::Service<Request<RequestBody>> for EndpointClient {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = EndpointFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The connection is opened (or found broken) by the request itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        match Uri::from_parts(uri) {
            Ok(uri) => {
                head.uri = uri;
                let inner = self.clients.current().request(Request::from_parts(head, body));
                Either::Right(ErrInto { inner })
            }
            Err(e) => Either::Left(futures::future::ready(Err(e.into()))),
        }
    }
}

pin_project_lite::pin_project! {
    /// hyper's response future, with its error boxed.
    pub(crate) struct ErrInto {
        #[pin]
        inner: ResponseFuture,
    }
}

impl Future for ErrInto {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Into::into)
    }
}
