//! A client's connection to the gateway, served with [`h2`] directly: each stream the client
//! opens becomes a task that calls the proxy and sends its response back, headers, body and
//! trailers as the proxy gives them.
//!
//! The settings are hyper's server defaults, which the gateway served with before (1 MiB
//! windows, 16 KiB frames and header lists, a 400 KiB send buffer, at most 1,024 streams reset
//! for the client's errors), but for the streams a connection may have open at once (see
//! [`MAX_STREAMS_PER_CONNECTION`]). A stream the client resets before its response ends the call
//! (its future and body are dropped, which cancels the endpoint's stream). On shutdown the
//! connection sends GOAWAY and finishes the streams it has ([`graceful_shutdown`]).
//!
//! [`graceful_shutdown`]: ServeConnection::graceful_shutdown

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::future::BoxFuture;
use h2::server::{Connection, SendResponse};
use http::{Request, Response};
use http_body::Body;
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::h2stream::{Pipe, RecvBody};

/// Streams one client connection may have open at once. hyper's default (200) would queue the
/// requests of a client that multiplexes everything over one connection, as tonic's `Channel`
/// does, behind the gateway rather than at the replicas.
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// HTTP/2 settings of a client's connection.
fn h2_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(400 << 10)
        .max_local_error_reset_streams(Some(1024))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    builder
}

/// Why a client's connection ended in error: its TLS handshake failed, or HTTP/2 did.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    /// The TLS handshake failed or timed out.
    #[error("TLS handshake: {0}")]
    Tls(#[from] std::io::Error),
    /// HTTP/2 failed.
    #[error(transparent)]
    H2(#[from] h2::Error),
}

/// The connection's one task holds this in place from the handshake to the end, so the size of
/// the serving variant costs nothing, and boxing it would add an indirection to every poll.
#[allow(clippy::large_enum_variant)]
enum State<I> {
    Handshaking(BoxFuture<'static, Result<Connection<I, Bytes>, ConnectionError>>),
    Serving(Connection<I, Bytes>),
}

/// Serves one client connection over `I` (a `TcpStream`, or a TLS stream over one) with
/// `service` until the client closes it (or, after
/// [`graceful_shutdown`](Self::graceful_shutdown), until its streams are done).
pub(crate) struct ServeConnection<S, I = TcpStream> {
    state: State<I>,
    service: S,
    /// A graceful shutdown asked for during the handshake, done once it completes.
    shutdown: bool,
}

impl<S> ServeConnection<S> {
    /// Starts the HTTP/2 handshake on `io`.
    pub(crate) fn new(io: TcpStream, service: S) -> Self {
        let handshake = async move { Ok(h2_builder().handshake::<_, Bytes>(io).await?) };
        Self { state: State::Handshaking(Box::pin(handshake)), service, shutdown: false }
    }
}

impl<S, I> ServeConnection<S, I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves the stream `io` will give (a TLS handshake, see `tls`), starting HTTP/2 on it once
    /// it is there; an error of `io` ends the connection.
    pub(crate) fn after(io: impl Future<Output = std::io::Result<I>> + Send + 'static, service: S) -> Self {
        let handshake = async move { Ok(h2_builder().handshake::<_, Bytes>(io.await?).await?) };
        Self { state: State::Handshaking(Box::pin(handshake)), service, shutdown: false }
    }
}

impl<S, I> ServeConnection<S, I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    /// Sends GOAWAY: the client opens no new stream; those it has are served to their end, and
    /// the connection then closes.
    pub(crate) fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Handshaking(_) => self.shutdown = true,
            State::Serving(connection) => connection.graceful_shutdown(),
        }
    }
}

impl<S, B, I> Future for ServeConnection<S, I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RecvBody>, Response = Response<B>, Error = Infallible> + Unpin,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Output = Result<(), ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Handshaking(handshake) => {
                    let mut connection = ready!(handshake.as_mut().poll(cx))?;
                    if this.shutdown {
                        connection.graceful_shutdown();
                    }
                    this.state = State::Serving(connection);
                }
                State::Serving(connection) => match ready!(connection.poll_accept(cx)) {
                    Some(Ok((request, respond))) => {
                        let call = this.service.call(request.map(|recv| RecvBody::new(recv, None)));
                        tokio::spawn(respond_with(call, respond));
                    }
                    Some(Err(error)) => return Poll::Ready(Err(error.into())),
                    None => return Poll::Ready(Ok(())),
                },
            }
        }
    }
}

/// Waits for `call`'s response and sends it on `respond`'s stream, body and trailers after the
/// head; stops (dropping the call) if the client resets the stream first.
async fn respond_with<F, B>(call: F, mut respond: SendResponse<Bytes>)
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut call = std::pin::pin!(call);
    let answered = std::future::poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        // The client gave up on the call: the call (and the endpoint's stream) is dropped.
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = answered else { return };
    let (head, body) = response.into_parts();
    let end_of_stream = body.is_end_stream();
    match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
        Ok(stream) if !end_of_stream => Pipe::new(body, stream).await,
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "could not send a response head"),
    }
}
