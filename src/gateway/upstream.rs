//! The gateway's side of an endpoint: per serving thread, one HTTP/2 connection (prior knowledge,
//! no TLS) that the thread's requests to the endpoint share, opened on first use and opened again
//! after it closes.
//!
//! Each serving thread keeps its own connection to each endpoint, run by that thread's runtime, so
//! a request goes from the client's stream to the endpoint's connection without waking another
//! thread (as Envoy's workers each keep their own connection pools), and without a pool lookup or
//! a buffer task (tonic's `Channel` has one): the service holds hyper's `SendRequest` for the
//! connection. It points each request at its endpoint (the balancer has picked it) by giving the
//! request's URI the endpoint's scheme and authority, and leaves every header as the client sent
//! it.
//!
//! Every connection's socket is under the endpoint's [`ConnectionDrain`]: when discovery removes
//! the endpoint, [`close`](EndpointClient::close) retires it, and whatever is still open on its
//! connections (a stream that outlives the pool's drain timeout) is cut once that timeout has
//! passed, so the connections and their tasks end.

use std::cell::Cell;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard_core::{Error, ErrorKind};
use switchyard_discovery::ConnectionDrain;
use switchyard_discovery::drain::DEFAULT_DRAIN_TIMEOUT;
use tokio::net::TcpStream;
use tower::BoxError;

use super::body::RequestBody;

/// Longest wait for a TCP connection to an endpoint before its requests fail with `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a connection to an endpoint with requests in flight is pinged, so a dead peer is
/// found before the requests wait on it for long.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

thread_local! {
    /// The index of the gateway's serving thread running here; `usize::MAX` on other threads.
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the current thread as the gateway's serving thread `index`: its requests to an endpoint
/// use connection `index` of the endpoint.
pub(crate) fn set_thread_index(index: usize) {
    THREAD.with(|t| t.set(index));
}

type Connecting = Shared<BoxFuture<'static, Result<SendRequest<RequestBody>, Arc<str>>>>;

/// One thread's connection to an endpoint.
#[derive(Default)]
enum Connection {
    #[default]
    Closed,
    Connecting(Connecting),
    Open(SendRequest<RequestBody>),
}

/// Sends requests to one endpoint, over the calling thread's connection to it.
#[derive(Clone)]
pub(crate) struct EndpointClient {
    scheme: Scheme,
    authority: Authority,
    connections: Arc<[Mutex<Connection>]>,
    /// Retired by `close`: cuts what is left open on the connections after the drain timeout.
    drain: ConnectionDrain,
}

/// An endpoint's address that is not `http://HOST:PORT`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an http://HOST:PORT address")]
pub(crate) struct BadAddress(String);

impl EndpointClient {
    /// A client for the endpoint at `address` (`http://HOST[:PORT]`, port 80 by default) with one
    /// connection for each of `threads` serving threads, and one more for calls from any other
    /// thread, each opened on first use.
    pub(crate) fn new(address: &str, threads: usize) -> Result<Self, BadAddress> {
        let uri: Uri = address.parse().map_err(|_| BadAddress(address.to_owned()))?;
        let parts = uri.into_parts();
        match (parts.scheme, parts.authority) {
            (Some(scheme), Some(authority)) if scheme == Scheme::HTTP => Ok(Self {
                scheme,
                authority,
                connections: (0..=threads).map(|_| Mutex::default()).collect(),
                drain: ConnectionDrain::new(DEFAULT_DRAIN_TIMEOUT),
            }),
            _ => Err(BadAddress(address.to_owned())),
        }
    }

    /// The same client, whose connections are cut `timeout` after [`close`](Self::close) if
    /// anything is still open on them.
    pub(crate) fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain = ConnectionDrain::new(timeout);
        self
    }

    /// Whether this client sends to `address`.
    pub(crate) fn is_for(&self, address: &str) -> bool {
        address
            .parse::<Uri>()
            .is_ok_and(|u| u.scheme() == Some(&self.scheme) && u.authority() == Some(&self.authority))
    }

    /// Lets go of every connection to the endpoint (discovery removed it): each closes once its
    /// requests in flight have ended, as a connection does when nothing can send on it any more,
    /// or once the drain timeout has passed, cutting what is still open. A request still sent
    /// through this client opens a new one, cut at the same time.
    pub(crate) fn close(&self) {
        self.drain.retire();
        for connection in self.connections.iter() {
            *connection.lock().unwrap_or_else(PoisonError::into_inner) = Connection::Closed;
        }
    }

    /// The connection of the calling thread (the last one for threads that are not serving
    /// threads).
    fn connection(&self) -> &Mutex<Connection> {
        let last = self.connections.len() - 1;
        &self.connections[THREAD.with(Cell::get).min(last)]
    }
}

/// Opens a connection to `authority`, its socket under `drain`, and starts its task on the
/// calling thread's runtime.
async fn connect(authority: Authority, drain: ConnectionDrain) -> Result<SendRequest<RequestBody>, Arc<str>> {
    let address = authority.as_str();
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host_port(&authority))).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}").into()),
        Err(_) => return Err(format!("cannot connect to {address}: no answer in {CONNECT_TIMEOUT:?}").into()),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .handshake(TokioIo::new(drain.wrap(stream)))
        .await
        .map_err(|e| Arc::<str>::from(format!("HTTP/2 handshake with {address} failed: {e}")))?;
    let address = address.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection to {address} ended: {e}");
        }
    });
    Ok(sender)
}

/// The host and port to connect to: port 80 when the address has none (as for any `http://` URI),
/// and an IPv6 host without the brackets a URI writes it in.
fn host_port(authority: &Authority) -> (&str, u16) {
    let host = authority.host();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host, authority.port_u16().unwrap_or(80))
}

impl tower::Service<Request<RequestBody>> for EndpointClient {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The connection is opened (or found closed) by the request itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        match Uri::from_parts(uri) {
            Ok(uri) => head.uri = uri,
            Err(e) => return Box::pin(futures::future::ready(Err(e.into()))),
        }
        let req = Request::from_parts(head, body);

        let mut connection = self.connection().lock().unwrap_or_else(PoisonError::into_inner);
        if let Connection::Open(sender) = &mut *connection
            && !sender.is_closed()
        {
            let response = sender.send_request(req);
            return Box::pin(async move { response.await.map_err(Into::into) });
        }
        // Closed (or never opened): this request opens it, or waits for the one being opened.
        let connecting = match &*connection {
            Connection::Connecting(connecting) => connecting.clone(),
            _ => {
                let connecting = connect(self.authority.clone(), self.drain.clone()).boxed().shared();
                *connection = Connection::Connecting(connecting.clone());
                connecting
            }
        };
        drop(connection);
        let this = self.clone();
        Box::pin(async move {
            let opened = connecting.clone().await;
            let mut sender = {
                let mut connection = this.connection().lock().unwrap_or_else(PoisonError::into_inner);
                // The first request to see the outcome records it (the others find it recorded,
                // or a newer attempt in its place, which they leave alone).
                if matches!(&*connection, Connection::Connecting(c) if c.ptr_eq(&connecting)) {
                    *connection = match &opened {
                        Ok(sender) => Connection::Open(sender.clone()),
                        Err(_) => Connection::Closed,
                    };
                }
                // Typed at the source: the request never reached the endpoint.
                opened.map_err(|e| {
                    BoxError::from(Error::new(ErrorKind::ConnectFailed).with_source(e.to_string()))
                })?
            };
            sender.send_request(req).await.map_err(Into::into)
        })
    }
}

impl std::fmt::Debug for EndpointClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClient")
            .field("authority", &self.authority)
            .field("connections", &self.connections.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_means_port_80() {
        let host_port_of = |a: &str| {
            let authority: Authority = a.parse().unwrap();
            let (host, port) = host_port(&authority);
            (host.to_owned(), port)
        };
        assert_eq!(host_port_of("worker"), ("worker".into(), 80));
        assert_eq!(host_port_of("10.0.0.1:9001"), ("10.0.0.1".into(), 9001));
        assert_eq!(host_port_of("[::1]:9001"), ("::1".into(), 9001));
        assert_eq!(host_port_of("[::1]"), ("::1".into(), 80));
    }

    #[test]
    fn only_plain_http_addresses_are_endpoints() {
        assert!(EndpointClient::new("http://worker", 2).is_ok());
        assert!(EndpointClient::new("https://worker:443", 2).is_err());
        assert!(EndpointClient::new("worker:9001", 2).is_err());
    }
}
