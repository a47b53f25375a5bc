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
//! In a pool that retries, an attempt no retry can save goes on a connection only once the
//! endpoint has shown, within the last millisecond or by answering a ping, that its process runs
//! (see `liveness`).
//!
//! Every connection's socket is under the endpoint's [`ConnectionDrain`]: when discovery removes
//! the endpoint, [`close`](EndpointClient::close) retires it, and whatever is still open on its
//! connections (a stream that outlives the pool's drain timeout) is cut once that timeout has
//! passed, so the connections and their tasks end.

use std::cell::Cell;
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
use switchyard_core::{Error, ErrorKind, FinalAttempt};
use switchyard_discovery::ConnectionDrain;
use switchyard_discovery::drain::DEFAULT_DRAIN_TIMEOUT;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tower::BoxError;

use super::h2stream::{Pipe, RecvBody};
use super::liveness::{KEEP_ALIVE_INTERVAL, Liveness};
use super::upstream_tls::UpstreamTls;

/// Longest wait for a TCP connection to an endpoint before its requests fail with `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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

/// An open connection's handle: streams are opened through `send`; `liveness` says when the
/// endpoint was last heard from on it, and whether the connection's task has ended.
#[derive(Clone)]
struct Sender {
    send: SendRequest<Bytes>,
    liveness: Arc<Liveness>,
}

impl Sender {
    fn is_closed(&self) -> bool {
        self.liveness.is_closed()
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
    /// How long an attempt no retry can save waits for the endpoint to answer a ping when it has
    /// not been heard from just now (see `liveness`); `None`: such attempts go at once, and
    /// responses are not timed.
    probe: Option<Duration>,
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
            probe: None,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The same client, whose connections are cut `timeout` after [`close`](Self::close) if
    /// anything is still open on them.
    pub(crate) fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).drain = ConnectionDrain::new(timeout);
        self
    }

    /// The same client, whose attempts no retry can save ([`FinalAttempt`]) go on a connection
    /// only once the endpoint has answered a ping within `timeout`, unless it was heard from just
    /// now (see `liveness`); `None` sends them at once.
    pub(crate) fn with_probe(mut self, timeout: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.inner).probe = timeout;
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
/// its task on the calling thread's runtime. The task pings the endpoint when an attempt asks
/// and every [`KEEP_ALIVE_INTERVAL`], and closes the connection when a ping goes unanswered for
/// as long (see [`Liveness::watch`]).
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
    let liveness = Arc::new(Liveness::new());
    let address = address.to_owned();
    let watched = liveness.clone();
    tokio::spawn(async move {
        tokio::select! {
            ended = &mut connection => if let Err(e) = ended {
                tracing::debug!("connection to {address} ended: {e}");
            },
            () = watched.watch(ping_pong) => tracing::debug!("connection to {address} did not answer a ping in {KEEP_ALIVE_INTERVAL:?}; closed"),
        }
        watched.close();
        // Dropping the connection fails the streams still open on it.
    });
    Ok(Sender { send, liveness })
}

/// Sends `req` on `sender`'s connection as [`send`] does, for a client that probes: an attempt
/// no retry can save (`probe` is its wait) first waits for the endpoint to be heard from, unless
/// it was just now; and a response head is noted as hearing from it.
async fn send_probed<B>(
    sender: Sender,
    req: Request<B>,
    probe: Option<Duration>,
) -> Result<Response<RecvBody>, BoxError>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    if let Some(timeout) = probe
        && !sender.liveness.is_fresh(tokio::time::Instant::now())
    {
        sender.liveness.confirm(timeout).await?;
    }
    let response = send(sender.send, req).await?;
    sender.liveness.heard();
    Ok(response)
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
        // With probes on, an attempt no retry can save waits for the endpoint to show it runs.
        let probe = self.inner.probe.filter(|_| req.extensions().get::<FinalAttempt>().is_some());

        let mut connection = self.connection().lock().unwrap_or_else(PoisonError::into_inner);
        if let Connection::Open(sender) = &*connection
            && !sender.is_closed()
        {
            if self.inner.probe.is_none() {
                return Box::pin(send(sender.send.clone(), req));
            }
            return Box::pin(send_probed(sender.clone(), req, probe));
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
            if this.inner.probe.is_none() {
                return send(sender.send, req).await;
            }
            send_probed(sender, req, probe).await
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
    use std::sync::atomic::{AtomicBool, Ordering};

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

    /// A socket whose owner can stop reading and writing it, as a stopped process does: the
    /// peer's writes still land in the socket's buffers.
    struct Stoppable {
        socket: TcpStream,
        stopped: Arc<Stop>,
    }

    #[derive(Default)]
    struct Stop {
        /// Neither reads nor writes.
        on: AtomicBool,
        /// Reads, but writes nothing (no answer, no `PONG`).
        mute: AtomicBool,
        wakers: Mutex<Vec<std::task::Waker>>,
    }

    impl Stop {
        fn set(&self, on: bool) {
            self.on.store(on, Ordering::SeqCst);
            self.wakers.lock().unwrap().drain(..).for_each(std::task::Waker::wake);
        }

        fn set_mute(&self, mute: bool) {
            self.mute.store(mute, Ordering::SeqCst);
            self.wakers.lock().unwrap().drain(..).for_each(std::task::Waker::wake);
        }

        /// Pending while stopped (or muted, for a write), woken when let go.
        fn poll(&self, cx: &mut Context<'_>, write: bool) -> Poll<()> {
            let held = || self.on.load(Ordering::SeqCst) || write && self.mute.load(Ordering::SeqCst);
            if held() {
                self.wakers.lock().unwrap().push(cx.waker().clone());
                if held() {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        }
    }

    impl tokio::io::AsyncRead for Stoppable {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::task::ready!(self.stopped.poll(cx, false));
            std::pin::Pin::new(&mut self.socket).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Stoppable {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            std::task::ready!(self.stopped.poll(cx, true));
            std::pin::Pin::new(&mut self.socket).poll_write(cx, buf)
        }

        fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            std::task::ready!(self.stopped.poll(cx, true));
            std::pin::Pin::new(&mut self.socket).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.socket).poll_shutdown(cx)
        }
    }

    /// An h2 endpoint that can be stopped: it answers each request 200 (a path under `/hold` not
    /// at all) and reports its path.
    async fn stoppable_endpoint() -> (String, Arc<Stop>, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (address, stopped, seen, _task) = stoppable_endpoint_task().await;
        (address, stopped, seen)
    }

    /// [`stoppable_endpoint`], and its task (aborting it closes the connection).
    async fn stoppable_endpoint_task()
    -> (String, Arc<Stop>, tokio::sync::mpsc::UnboundedReceiver<String>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let stopped = Arc::new(Stop::default());
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let stop = stopped.clone();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let socket = Stoppable { socket, stopped: stop };
            let mut connection = h2::server::handshake(socket).await.unwrap();
            let mut held = Vec::new();
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let path = request.uri().path().to_owned();
                if path.starts_with("/hold") {
                    held.push(respond);
                } else {
                    let _ = respond.send_response(Response::new(()), true);
                }
                let _ = seen_tx.send(path);
            }
        });
        (address, stopped, seen, task)
    }

    /// `future`'s output, or a failed test after 5 s.
    async fn within<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), future).await.expect("done within 5 s")
    }

    fn attempt(path: &str, last: bool) -> Request<http_body_util::Empty<Bytes>> {
        let mut req = Request::post(path).body(http_body_util::Empty::new()).unwrap();
        if last {
            req.extensions_mut().insert(FinalAttempt);
        }
        req
    }

    #[tokio::test]
    async fn an_attempt_no_retry_can_save_goes_only_to_an_endpoint_that_answers_a_ping() {
        use tower::Service;
        let (address, stopped, mut seen) = stoppable_endpoint().await;
        // Far more than a loaded machine's loopback round trip.
        let probe = Duration::from_secs(1);
        let mut client = EndpointClient::new(&address, 1, None).unwrap().with_probe(Some(probe));
        let seen_in_time = async |seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
            tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap()
        };
        // Running: the attempt waits for a ping's answer, then goes.
        within(client.call(attempt("/final/1", true))).await.unwrap();
        assert_eq!(seen_in_time(&mut seen).await, "/final/1");

        // Stopped: the attempt fails as never sent once the probe's time is up; an attempt a
        // retry can save goes at once, into the socket's buffers.
        tokio::time::sleep(Duration::from_millis(5)).await;
        stopped.set(true);
        let started = tokio::time::Instant::now();
        let error = within(client.call(attempt("/final/2", true))).await.unwrap_err();
        assert!(started.elapsed() >= probe, "gave up after {:?}", started.elapsed());
        let typed = error.downcast_ref::<Error>().expect("a typed error");
        assert!(matches!(typed.kind(), ErrorKind::ConnectFailed), "{typed:?}");
        assert!(error.to_string().contains("unreachable"), "{error}");
        let saved = tokio::spawn(client.call(attempt("/saved", false)));
        // A second attempt while the ping is still unanswered waits no longer than it.
        let started = tokio::time::Instant::now();
        assert!(within(client.call(attempt("/final/3", true))).await.is_err());
        assert!(started.elapsed() < probe, "waited {:?}", started.elapsed());

        // Running again: what was sent comes through, the attempts that failed never reached it,
        // and the next one goes.
        stopped.set(false);
        within(saved).await.unwrap().unwrap();
        assert_eq!(seen_in_time(&mut seen).await, "/saved");
        within(client.call(attempt("/final/4", true))).await.unwrap();
        assert_eq!(seen_in_time(&mut seen).await, "/final/4");
        assert!(seen.try_recv().is_err(), "nothing else reached the endpoint");
    }

    #[tokio::test]
    async fn no_more_than_two_pings_go_between_the_endpoints_response_heads() {
        use tower::Service;
        let (address, stopped, mut seen) = stoppable_endpoint().await;
        let mut client =
            EndpointClient::new(&address, 1, None).unwrap().with_probe(Some(Duration::from_secs(1)));
        // Two attempts whose answers have not begun, each confirmed by a ping of its own.
        let mut waiting = Vec::new();
        for path in ["/hold/1", "/hold/2"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
            waiting.push(tokio::spawn(client.call(attempt(path, true))));
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap(),
                path
            );
        }
        // A third ping with no data between could close the connection (gRPC servers count it
        // as abuse): the next attempt goes unconfirmed, even to an endpoint that has stopped.
        tokio::time::sleep(Duration::from_millis(5)).await;
        stopped.set(true);
        let third = tokio::spawn(client.call(attempt("/hold/3", true)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished(), "sent, not failed: {:?}", third.await);
        stopped.set(false);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap(),
            "/hold/3"
        );
        // A response head starts the count over: the next attempt is confirmed again.
        tokio::time::sleep(Duration::from_millis(5)).await;
        within(client.call(attempt("/answered", true))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        stopped.set(true);
        assert!(within(client.call(attempt("/final", true))).await.is_err(), "confirmed, and not answered");
        stopped.set(false);
        assert_eq!(seen.recv().await.unwrap(), "/answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(seen.try_recv().is_err(), "the attempt that failed never reached the endpoint");
        drop(waiting);
    }

    #[tokio::test]
    async fn without_a_probe_an_attempt_no_retry_can_save_goes_at_once() {
        use tower::Service;
        let (address, stopped, mut seen) = stoppable_endpoint().await;
        let mut client = EndpointClient::new(&address, 1, None).unwrap();
        within(client.call(attempt("/one", true))).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), "/one");
        // The endpoint reads but cannot answer (not even a ping): the attempt reaches it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        stopped.set_mute(true);
        let call = tokio::spawn(client.call(attempt("/two", true)));
        assert_eq!(within(seen.recv()).await.unwrap(), "/two");
        stopped.set_mute(false);
        within(call).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_attempt_waiting_for_a_ping_fails_when_the_connection_closes() {
        use tower::Service;
        let (address, stopped, mut seen, endpoint) = stoppable_endpoint_task().await;
        let mut client =
            EndpointClient::new(&address, 1, None).unwrap().with_probe(Some(Duration::from_secs(10)));
        within(client.call(attempt("/one", true))).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), "/one");
        tokio::time::sleep(Duration::from_millis(5)).await;
        stopped.set(true);
        let waiting = tokio::spawn(client.call(attempt("/two", true)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it waits for the ping's answer");
        // The endpoint's side closes: the wait ends then, not at the probe's time.
        endpoint.abort();
        let error = within(waiting).await.unwrap().unwrap_err();
        let typed = error.downcast_ref::<Error>().expect("a typed error");
        assert!(matches!(typed.kind(), ErrorKind::ConnectFailed), "{typed:?}");
        assert!(seen.try_recv().is_err(), "it never reached the endpoint");
    }

    #[test]
    fn endpoints_are_http_or_https_addresses() {
        assert!(EndpointClient::new("http://worker", 2, None).is_ok_and(|c| c.inner.tls.is_none()));
        assert!(EndpointClient::new("https://worker:443", 2, None).is_ok_and(|c| c.inner.tls.is_some()));
        assert!(EndpointClient::new("worker:9001", 2, None).is_err());
        assert!(EndpointClient::new("ftp://worker:9001", 2, None).is_err());
    }
}
