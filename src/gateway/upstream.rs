//! The gateway's side of an endpoint: per serving thread, one HTTP/2 connection (prior knowledge
//! over TCP, or over TLS with ALPN `h2` for a pool with `tls` and `https://` endpoints, see
//! `upstream_tls`) that the thread's requests to the endpoint share, opened on first use and opened again
//! after it closes.
//!
//! Each serving thread keeps its own connection to each endpoint, run by that thread's runtime, so
//! a request goes from the client's stream to the endpoint's connection without waking another
//! thread (as Envoy's workers each keep their own connection pools), and without a pool lookup or
//! a buffer task (tonic's `Channel` has one): the service holds the connection's [`h2`]
//! `SendRequest`, and each request's task opens its stream and reads its response itself
//! (see `h2stream`). It points each request at its endpoint (the balancer has picked it) by giving the
//! request's URI the endpoint's scheme and authority, and leaves every header as the client sent
//! it.
//!
//! Every connection's socket is under the endpoint's [`ConnectionDrain`]: when discovery removes
//! the endpoint, [`close`](EndpointClient::close) retires it, and whatever is still open on its
//! connections (a stream that outlives the pool's drain timeout) is cut once that timeout has
//! passed, so the connections and their tasks end.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use h2::client::SendRequest;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::Body;
use switchyard_core::{Error, ErrorKind};
use switchyard_discovery::ConnectionDrain;
use switchyard_discovery::drain::DEFAULT_DRAIN_TIMEOUT;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tower::BoxError;

use super::h2stream::{Pipe, RecvBody};
use super::upstream_tls::UpstreamTls;

/// Longest wait for a TCP connection to an endpoint before its requests fail with `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a connection to an endpoint is pinged, so a dead peer is found before requests wait
/// on it for long; one that does not answer within the same time is closed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// HTTP/2 settings of a connection to an endpoint: hyper's client defaults (windows of 2 MiB a
/// stream and 5 MiB the connection, so a long answer streams without waiting for window
/// updates; 16 KiB frames and header lists; no server push).
fn h2_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(1 << 20)
        .enable_push(false);
    builder
}

thread_local! {
    /// The index of the gateway's serving thread running here; `usize::MAX` on other threads.
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks the current thread as the gateway's serving thread `index`: its requests to an endpoint
/// use connection `index` of the endpoint.
pub(crate) fn set_thread_index(index: usize) {
    THREAD.with(|t| t.set(index));
}

type Connecting = Shared<BoxFuture<'static, Result<Sender, Arc<str>>>>;

/// One thread's connection to an endpoint.
#[derive(Default)]
enum Connection {
    #[default]
    Closed,
    Connecting(Connecting),
    Open(Sender),
}

/// An open connection's handle: streams are opened through `send`; `closed` is set when the
/// connection's task ends.
#[derive(Clone)]
struct Sender {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Sender {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Sends requests to one endpoint, over the calling thread's connection to it.
///
/// The balancer clones the client into every call's future: one reference count, and a pointer
/// where the client's address, TLS and connections would be moved with the future.
#[derive(Clone)]
pub(crate) struct EndpointClient {
    inner: Arc<ClientInner>,
}

#[derive(Clone)]
struct ClientInner {
    /// The scheme requests carry: `https` over TLS.
    scheme: Scheme,
    /// The scheme of the address it was made for.
    address_scheme: Scheme,
    authority: Authority,
    connections: Arc<[Mutex<Connection>]>,
    /// The TLS its connections are made with, if any.
    tls: Option<UpstreamTls>,
    /// Retired by `close`: cuts what is left open on the connections after the drain timeout.
    drain: ConnectionDrain,
}

/// An endpoint's address that is not `http://HOST:PORT` or `https://HOST:PORT`, or whose
/// host is not a TLS server name where TLS is used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadAddress {
    /// Not an `http(s)://HOST:PORT` URI.
    #[error("{0:?} is not an http://HOST:PORT or https://HOST:PORT address")]
    Uri(String),
    /// TLS cannot be set up for it.
    #[error("{0:?}: {1}")]
    Tls(String, String),
}

impl EndpointClient {
    /// A client for the endpoint at `address` (`http://HOST[:PORT]`, port 80 by default, or
    /// `https://HOST[:PORT]`, port 443) with one connection for each of `threads` serving
    /// threads, and one more for calls from any other thread, each opened on first use. With
    /// `tls` (the pool's), its connections are TLS whatever the scheme; an `https://` address
    /// without it is verified against the system's roots.
    pub(crate) fn new(address: &str, threads: usize, tls: Option<&UpstreamTls>) -> Result<Self, BadAddress> {
        let uri: Uri = address.parse().map_err(|_| BadAddress::Uri(address.to_owned()))?;
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            return Err(BadAddress::Uri(address.to_owned()));
        };
        let tls = match (scheme.as_str(), tls) {
            (_, Some(tls)) => Some(tls.clone()),
            ("https", None) => {
                Some(UpstreamTls::system().map_err(|e| BadAddress::Tls(address.to_owned(), e.to_string()))?)
            }
            ("http", None) => None,
            _ => return Err(BadAddress::Uri(address.to_owned())),
        };
        if let Some(tls) = &tls {
            tls.server_name(&authority).map_err(|e| BadAddress::Tls(address.to_owned(), e))?;
        }
        let inner = ClientInner {
            scheme: if tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP },
            address_scheme: scheme,
            authority,
            connections: (0..=threads).map(|_| Mutex::default()).collect(),
            tls,
            drain: ConnectionDrain::new(DEFAULT_DRAIN_TIMEOUT),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The same client, whose connections are cut `timeout` after [`close`](Self::close) if
    /// anything is still open on them.
    pub(crate) fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).drain = ConnectionDrain::new(timeout);
        self
    }

    /// Whether this client sends to `address`.
    pub(crate) fn is_for(&self, address: &str) -> bool {
        address.parse::<Uri>().is_ok_and(|u| {
            u.scheme() == Some(&self.inner.address_scheme) && u.authority() == Some(&self.inner.authority)
        })
    }

    /// Lets go of every connection to the endpoint (discovery removed it): each closes once its
    /// requests in flight have ended, as a connection does when nothing can send on it any more,
    /// or once the drain timeout has passed, cutting what is still open. A request still sent
    /// through this client opens a new one, cut at the same time.
    pub(crate) fn close(&self) {
        self.inner.drain.retire();
        for connection in self.inner.connections.iter() {
            *connection.lock().unwrap_or_else(PoisonError::into_inner) = Connection::Closed;
        }
    }

    /// The connection of the calling thread (the last one for threads that are not serving
    /// threads).
    fn connection(&self) -> &Mutex<Connection> {
        let last = self.inner.connections.len() - 1;
        &self.inner.connections[THREAD.with(Cell::get).min(last)]
    }
}

/// Opens a connection to `authority` (over TLS with `tls`), its socket under `drain`, and starts
/// its task on the calling thread's runtime. The task pings the endpoint every
/// [`KEEP_ALIVE_INTERVAL`] and closes the connection when a ping goes unanswered for as long.
async fn connect(
    authority: Authority,
    tls: Option<UpstreamTls>,
    drain: ConnectionDrain,
) -> Result<Sender, Arc<str>> {
    let address = authority.as_str();
    let port = if tls.is_some() { 443 } else { 80 };
    let (host, port) = host_port(&authority, port);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}").into()),
        Err(_) => return Err(format!("cannot connect to {address}: no answer in {CONNECT_TIMEOUT:?}").into()),
    };
    let _ = stream.set_nodelay(true);
    let stream = drain.wrap(stream);
    match tls {
        None => start(address, stream).await,
        Some(tls) => {
            let name = tls.server_name(&authority)?;
            let handshake = tls.connect(name, stream);
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(format!("TLS handshake with {address} failed: {e}").into()),
                Err(_) => {
                    return Err(
                        format!("TLS handshake with {address} not done in {CONNECT_TIMEOUT:?}").into()
                    );
                }
            };
            start(address, stream).await
        }
    }
}

/// Starts HTTP/2 on `stream`, the connection to `address`, and its task.
async fn start<S>(address: &str, stream: S) -> Result<Sender, Arc<str>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2_builder()
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| Arc::<str>::from(format!("HTTP/2 handshake with {address} failed: {e}")))?;
    let ping_pong = connection.ping_pong();
    let closed = Arc::new(AtomicBool::new(false));
    let address = address.to_owned();
    let closed_by_task = closed.clone();
    tokio::spawn(async move {
        tokio::select! {
            ended = &mut connection => if let Err(e) = ended {
                tracing::debug!("connection to {address} ended: {e}");
            },
            () = keep_alive(ping_pong) => tracing::debug!("connection to {address} did not answer a ping in {KEEP_ALIVE_INTERVAL:?}; closed"),
        }
        closed_by_task.store(true, Ordering::Release);
        // Dropping the connection fails the streams still open on it.
    });
    Ok(Sender { send, closed })
}

/// Pings the peer every [`KEEP_ALIVE_INTERVAL`]; returns when a ping is not answered within it
/// (or cannot be sent: the connection is going).
async fn keep_alive(ping_pong: Option<h2::PingPong>) {
    let Some(mut ping_pong) = ping_pong else { return std::future::pending().await };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        if ping_pong.send_ping(h2::Ping::opaque()).is_err() {
            return;
        }
        let pong = std::future::poll_fn(|cx| ping_pong.poll_pong(cx));
        if !matches!(tokio::time::timeout(KEEP_ALIVE_INTERVAL, pong).await, Ok(Ok(_))) {
            return;
        }
    }
}

/// Sends `req` on `sender`'s connection and waits for the response's head.
///
/// An error before the stream opened (the connection closed, or refused the stream) means the
/// request never reached the endpoint, and is typed so (`ConnectFailed`, see `never_sent`).
pub(crate) async fn send<B>(
    sender: SendRequest<Bytes>,
    req: Request<B>,
) -> Result<Response<RecvBody>, BoxError>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    let mut sender = sender.ready().await.map_err(never_sent)?;
    let (head, body) = req.into_parts();
    let end_of_stream = body.is_end_stream();
    let (response, stream) =
        sender.send_request(Request::from_parts(head, ()), end_of_stream).map_err(never_sent)?;
    let mut cancel = None;
    if !end_of_stream {
        let mut pipe = Pipe::new(body, stream);
        if futures::poll!(&mut pipe).is_pending() {
            // The client is still sending: the rest goes from a task of its own, told to reset the
            // stream if the response is dropped before it is done.
            let (tx, rx) = oneshot::channel();
            tokio::spawn(pipe.cancelled_by(rx));
            cancel = Some(tx);
        }
    }
    let response = response.await?;
    Ok(response.map(|recv| RecvBody::new(recv, cancel)))
}

/// An error of h2 before a request's stream opened, typed: the connection's (it closed or
/// failed, or the endpoint sent GOAWAY) means the request never reached the endpoint
/// (`ConnectFailed`, which a retry may send elsewhere whatever the method); h2's refusal of the
/// request itself (a user error: malformed headers) is left as it is.
fn never_sent(error: h2::Error) -> BoxError {
    if error.is_io() || error.is_go_away() || error.reason().is_some() {
        Error::new(ErrorKind::ConnectFailed).with_source(error).into()
    } else {
        error.into()
    }
}

/// The host and port to connect to: `default_port` when the address has none (80 for `http://`,
/// 443 for TLS), and an IPv6 host without the brackets a URI writes it in.
fn host_port(authority: &Authority, default_port: u16) -> (&str, u16) {
    let host = authority.host();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host, authority.port_u16().unwrap_or(default_port))
}

/// A request with any body the gateway forwards: a client's ([`RequestBody`](super::body::RequestBody)), or the same under a
/// pool's retry layer (`RetryBody<RequestBody>`).
impl<B> tower::Service<Request<B>> for EndpointClient
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<RecvBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RecvBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The connection is opened (or found closed) by the request itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(self.inner.scheme.clone());
        uri.authority = Some(self.inner.authority.clone());
        match Uri::from_parts(uri) {
            Ok(uri) => head.uri = uri,
            Err(e) => return Box::pin(futures::future::ready(Err(e.into()))),
        }
        let req = Request::from_parts(head, body);

        let mut connection = self.connection().lock().unwrap_or_else(PoisonError::into_inner);
        if let Connection::Open(sender) = &*connection
            && !sender.is_closed()
        {
            return Box::pin(send(sender.send.clone(), req));
        }
        // Closed (or never opened): this request opens it, or waits for the one being opened.
        let connecting = match &*connection {
            Connection::Connecting(connecting) => connecting.clone(),
            _ => {
                let connecting =
                    connect(self.inner.authority.clone(), self.inner.tls.clone(), self.inner.drain.clone())
                        .boxed()
                        .shared();
                *connection = Connection::Connecting(connecting.clone());
                connecting
            }
        };
        drop(connection);
        let this = self.clone();
        Box::pin(async move {
            let opened = connecting.clone().await;
            let sender = {
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
            send(sender.send, req).await
        })
    }
}

impl std::fmt::Debug for EndpointClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClient")
            .field("authority", &self.inner.authority)
            .field("connections", &self.inner.connections.len())
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
            let (host, port) = host_port(&authority, 80);
            (host.to_owned(), port)
        };
        assert_eq!(host_port_of("worker"), ("worker".into(), 80));
        assert_eq!(host_port_of("10.0.0.1:9001"), ("10.0.0.1".into(), 9001));
        assert_eq!(host_port_of("[::1]:9001"), ("::1".into(), 9001));
        assert_eq!(host_port_of("[::1]"), ("::1".into(), 80));
    }

    #[tokio::test]
    async fn a_request_on_a_connection_that_has_closed_never_reached_the_endpoint() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { drop(h2::server::handshake(server_io).await) });
        let (sender, connection) = h2::client::handshake(client_io).await.unwrap();
        let connection = tokio::spawn(connection);
        server.await.unwrap();
        // The endpoint's side is gone: the connection ends, and a request sent on its handle
        // fails before its stream opens.
        let _ = connection.await.unwrap();
        let error = send(sender, Request::new(http_body_util::Empty::<Bytes>::new())).await.unwrap_err();
        let typed = error.downcast_ref::<Error>().expect("a typed error");
        assert!(matches!(typed.kind(), ErrorKind::ConnectFailed), "{typed:?}");
        assert_eq!(switchyard_core::status_of(&*error).code, switchyard_core::Code::Unavailable);
    }

    #[test]
    fn endpoints_are_http_or_https_addresses() {
        assert!(EndpointClient::new("http://worker", 2, None).is_ok_and(|c| c.inner.tls.is_none()));
        assert!(EndpointClient::new("https://worker:443", 2, None).is_ok_and(|c| c.inner.tls.is_some()));
        assert!(EndpointClient::new("worker:9001", 2, None).is_err());
        assert!(EndpointClient::new("ftp://worker:9001", 2, None).is_err());
    }
}
