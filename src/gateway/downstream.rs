//! A client's connection to the gateway, served with [`h2`] directly: each stream the client
//! opens becomes a task that calls the proxy and sends its response back, headers, body and
//! trailers as the proxy gives them.
//!
//! The settings are hyper's server defaults, which the gateway served with before (1 MiB
//! windows, 16 KiB frames, a 400 KiB send buffer, at most 1,024 streams reset for the client's
//! errors), but for the header list size and the streams a connection may have open at once,
//! which are the config's [`Limits`]; the connection also keeps the limits' header read and idle
//! timeouts, holds its requests' messages to their size, ends a client's rapid reset (see
//! [`super::limits`]) and counts its PING and SETTINGS frames (`flood`). A stream the client
//! resets before its response ends the call (its future and body are dropped, which cancels the
//! endpoint's stream). On shutdown the connection sends GOAWAY and finishes the streams it has
//! ([`graceful_shutdown`]).
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
use std::sync::Arc;
use std::time::Duration;

use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::flood::FrameWatch;
use super::h2stream::{Pipe, RecvBody};
use super::limits::{ConnectionWatch, Limits, Refusal, Refusals, StreamGuard, is_rapid_reset};

/// HTTP/2 settings of a client's connection, within `limits`.
fn h2_builder(limits: &Limits) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(limits.max_header_list_bytes)
        .max_send_buffer_size(400 << 10)
        .max_local_error_reset_streams(Some(1024))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_concurrent_streams(limits.max_streams_per_connection);
    builder
}

/// Streams a client may open and reset before the gateway accepts them, at once, before h2 ends
/// its connection with GOAWAY `ENHANCE_YOUR_CALM` (rapid reset): h2's default, set here so that
/// a change of h2's default does not change it unseen.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// After the gateway ended a connection (GOAWAY for a timeout), how long the client has to read
/// it before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    Handshaking(BoxFuture<'static, Result<Connection<FrameWatch<I>, Bytes>, ConnectionError>>),
    Serving(Connection<FrameWatch<I>, Bytes>),
}

/// Where a connection is with respect to its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// No request headers yet: the header read timeout runs.
    FirstRequest,
    /// Serving; `busy` if a stream was open at the last check or opened since (the idle timer
    /// then runs once more).
    Serving { busy: bool },
    /// The gateway ended the connection; dropped at the timer if the client does not close it.
    Closing,
}

/// Serves one client connection over `I` (a `TcpStream`, or a TLS stream over one) with
/// `service` until the client closes it (or, after
/// [`graceful_shutdown`](Self::graceful_shutdown), until its streams are done), within its
/// [`Limits`]: header read and idle timeouts, message size.
pub(crate) struct ServeConnection<S, I = TcpStream> {
    state: State<I>,
    service: S,
    /// A graceful shutdown asked for during the handshake, done once it completes.
    shutdown: bool,
    watch: Watch,
    /// The header read timeout, then the idle check's period (one allocation per connection).
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    connection: Arc<ConnectionWatch>,
    /// Streams accepted, for the share of them the client reset early.
    accepted: u32,
}

impl<S> ServeConnection<S> {
    /// Starts the HTTP/2 handshake on `io`, within `limits`; refusals are counted in `refusals`.
    pub(crate) fn new(io: TcpStream, service: S, limits: &Limits, refusals: Arc<Refusals>) -> Self {
        Self::after(std::future::ready(Ok(io)), service, limits, refusals)
    }
}

impl<S, I> ServeConnection<S, I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves the stream `io` will give (a TLS handshake, see `tls`), starting HTTP/2 on it once
    /// it is there, within `limits` (the header read timeout counts from now); an error of `io`
    /// ends the connection.
    pub(crate) fn after(
        io: impl Future<Output = std::io::Result<I>> + Send + 'static,
        service: S,
        limits: &Limits,
        refusals: Arc<Refusals>,
    ) -> Self {
        let connection = Arc::new(ConnectionWatch::new(refusals, limits.max_message_bytes));
        let (builder, watch) = (h2_builder(limits), connection.clone());
        let handshake =
            async move { Ok(builder.handshake::<_, Bytes>(FrameWatch::new(io.await?, watch)).await?) };
        Self {
            state: State::Handshaking(Box::pin(handshake)),
            service,
            shutdown: false,
            watch: Watch::FirstRequest,
            timer: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
            idle_timeout: limits.idle_timeout,
            connection,
            accepted: 0,
        }
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

    /// The timer has fired: true if the connection is to be dropped now; otherwise the timer
    /// is set again (or the connection told to close, with GOAWAY).
    fn on_timer(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        match (self.watch, &mut self.state) {
            (Watch::Closing, _) | (_, State::Handshaking(_)) => {
                if self.watch == Watch::FirstRequest {
                    tracing::debug!("closing a connection that sent no preface in time");
                    self.connection.refused(Refusal::HeaderReadTimeout);
                }
                return true;
            }
            (Watch::FirstRequest, State::Serving(connection)) => {
                tracing::debug!("closing a connection that sent no request headers in time");
                self.connection.refused(Refusal::HeaderReadTimeout);
                self.connection.stream_event();
                connection.abrupt_shutdown(Reason::NO_ERROR);
                self.watch = Watch::Closing;
            }
            (Watch::Serving { busy }, State::Serving(connection)) => {
                let open = self.connection.open_streams() > 0;
                if !open && !busy {
                    tracing::debug!("closing an idle connection");
                    self.connection.refused(Refusal::Idle);
                    // Its streams end with it: their calls are to ask h2 again.
                    self.connection.stream_event();
                    connection.abrupt_shutdown(Reason::NO_ERROR);
                    self.watch = Watch::Closing;
                } else {
                    self.watch = Watch::Serving { busy: open };
                    self.timer.as_mut().reset(now + self.idle_timeout);
                    return false;
                }
            }
        }
        self.timer.as_mut().reset(now + CLOSE_GRACE);
        false
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
                State::Handshaking(handshake) => match handshake.as_mut().poll(cx) {
                    Poll::Ready(connection) => {
                        let mut connection = connection?;
                        if this.shutdown {
                            connection.graceful_shutdown();
                        }
                        this.state = State::Serving(connection);
                        continue;
                    }
                    Poll::Pending => {}
                },
                State::Serving(connection) => match connection.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        this.accepted = this.accepted.saturating_add(1);
                        this.connection.accepted(respond.stream_id().into());
                        if this.watch != Watch::Closing
                            && is_rapid_reset(this.accepted, this.connection.premature_resets())
                        {
                            tracing::debug!(
                                streams = this.accepted,
                                "closing a connection whose client resets most streams early"
                            );
                            this.connection.refused(Refusal::RapidReset);
                            this.connection.stream_event();
                            connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                            this.watch = Watch::Closing;
                            this.timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                        }
                        if this.watch == Watch::Closing {
                            // Not served: the stream ends with the connection.
                            continue;
                        }
                        if this.watch == Watch::FirstRequest {
                            this.timer.as_mut().reset(tokio::time::Instant::now() + this.idle_timeout);
                        }
                        this.watch = Watch::Serving { busy: true };
                        let stream = this.connection.stream();
                        let limit = this.connection.message_limit(this.accepted);
                        let call = this.service.call(request.map(|recv| RecvBody::limited(recv, limit)));
                        tokio::spawn(respond_with(call, respond, stream, this.accepted));
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        if error.is_go_away()
                            && !error.is_remote()
                            && error.reason() == Some(Reason::ENHANCE_YOUR_CALM)
                        {
                            tracing::debug!(%error, "h2 ended an abusive connection");
                            this.connection.refused(Refusal::H2Calm);
                        }
                        return Poll::Ready(Err(error.into()));
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => {}
                },
            }
            // Nothing to do until the client sends more, or the timer fires.
            ready!(this.timer.as_mut().poll(cx));
            if this.on_timer() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S, I> Drop for ServeConnection<S, I> {
    fn drop(&mut self) {
        // The connection's streams end with it (h2 wakes their calls): the calls are to ask h2
        // about their streams again.
        self.connection.stream_event();
    }
}

/// How a call's wait for its response ended.
enum Answer<R> {
    Response(R),
    /// The client reset the stream first.
    Reset,
    /// The request's body came to a message over the limit.
    Oversize,
}

/// Waits for `call`'s response and sends it on `respond`'s stream, body and trailers after the
/// head; stops (dropping the call) if the client resets the stream first. `number`: the stream's
/// among those the connection accepted, as its message limit knows it.
async fn respond_with<F, B>(call: F, mut respond: SendResponse<Bytes>, stream: StreamGuard, number: u32)
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut call = std::pin::pin!(call);
    // The connection's count of stream events when h2 last said the stream was not reset.
    let mut checked: Option<u32> = None;
    let answered = std::future::poll_fn(|cx| {
        // The client gave up on the call: the call (and the endpoint's stream, if opened) is
        // dropped. Checked before the call is polled, so that a call reset while it waited does
        // no more work: polled, it would read the reset as its body's end and forward the
        // request only to reset the endpoint's stream, and a client doing that fast (rapid reset
        // of accepted streams) had the endpoint's h2 end the thread's shared connection to it,
        // failing others' calls. h2 is asked (under its lock, which also registers this task to
        // be woken by the reset) on the first poll and then only once the connection's count of
        // stream events has moved: nothing that can end the stream has reached h2 since it last
        // said no, and the task is still registered.
        let events = stream.connection().stream_events();
        if checked != Some(events) {
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(Answer::Reset);
            }
            checked = Some(events);
        }
        if let Poll::Ready(Ok(response)) = call.as_mut().poll(cx) {
            return Poll::Ready(Answer::Response(response));
        }
        // The request's body came to a message over the limit (it woke this task): the call is
        // dropped before it forwards the message.
        if stream.connection().is_oversize(number) {
            return Poll::Ready(Answer::Oversize);
        }
        Poll::Pending
    })
    .await;
    let response = match answered {
        Answer::Response(response) if !stream.connection().is_oversize(number) => response,
        Answer::Response(_) | Answer::Oversize => {
            // The call's answer says why (a call that failed on it answers UNAVAILABLE).
            let refused = switchyard_core::Error::new(switchyard_core::ErrorKind::TooLarge(
                "a message is larger than the gateway's max_message_bytes".into(),
            ))
            .status()
            .to_http::<()>();
            if let Err(error) = respond.send_response(refused, true) {
                tracing::debug!(%error, "could not refuse an oversize message");
            }
            return;
        }
        Answer::Reset => {
            stream.connection().reset_early();
            return;
        }
    };
    let (head, body) = response.into_parts();
    let end_of_stream = body.is_end_stream();
    match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
        Ok(stream) if !end_of_stream => Pipe::new(body, stream).await,
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "could not send a response head"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::Empty;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use super::*;

    /// Answers every call with an empty response after `delay`.
    #[derive(Clone, Copy)]
    struct Answer {
        delay: Duration,
    }

    impl Service<Request<RecvBody>> for Answer {
        type Response = Response<Empty<Bytes>>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Response<Empty<Bytes>>, Infallible>>;

        fn call(&self, _request: Request<RecvBody>) -> Self::Future {
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new(Empty::new()))
            })
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A served connection with header read and idle timeouts of [`TIMEOUT`], and its client's
    /// socket.
    async fn serve(answer: Answer) -> (tokio::task::JoinHandle<()>, TcpStream, Arc<Refusals>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let refusals = Arc::new(Refusals::default());
        let limits = Limits { header_read_timeout: TIMEOUT, idle_timeout: TIMEOUT, ..Limits::default() };
        let connection = ServeConnection::new(server, answer, &limits, refusals.clone());
        let served = tokio::spawn(async move {
            let _ = connection.await;
        });
        (served, client, refusals)
    }

    async fn h2_client(io: TcpStream) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
        let (send, connection) = h2::client::handshake(io).await.unwrap();
        (
            send,
            tokio::spawn(async move {
                let _ = connection.await;
            }),
        )
    }

    /// Waits for `task`, at most a minute (of the paused clock).
    async fn within(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(60), task).await.expect("ended within a minute").unwrap();
    }

    fn request() -> Request<()> {
        Request::post("http://gateway/svc/Method").body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_header_read_timeout() {
        let start = Instant::now();
        let (served, _client, refusals) = serve(Answer { delay: Duration::ZERO }).await;
        within(served).await;
        assert_eq!(start.elapsed(), TIMEOUT);
        assert_eq!(refusals.get(Refusal::HeaderReadTimeout), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_gets_goaway_at_the_header_read_timeout() {
        let start = Instant::now();
        let (served, client, refusals) = serve(Answer { delay: Duration::ZERO }).await;
        let (_send, connection) = h2_client(client).await;
        within(connection).await;
        assert_eq!(start.elapsed(), TIMEOUT);
        within(served).await;
        assert_eq!(refusals.get(Refusal::HeaderReadTimeout), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_closed_one_to_two_idle_timeouts_after_its_last_stream() {
        for delay in [Duration::ZERO, TIMEOUT * 5] {
            let (served, client, refusals) = serve(Answer { delay }).await;
            let (send, connection) = h2_client(client).await;
            let (response, _body) = send.ready().await.unwrap().send_request(request(), true).unwrap();
            // The call's five timeouts keep the connection: it answers.
            assert_eq!(response.await.unwrap().status(), http::StatusCode::OK);
            let answered = Instant::now();
            within(connection).await;
            let idle = answered.elapsed();
            assert!(idle >= TIMEOUT && idle <= TIMEOUT * 2, "closed {idle:?} after the last stream");
            within(served).await;
            assert_eq!(refusals.get(Refusal::Idle), 1);
            assert_eq!(refusals.get(Refusal::HeaderReadTimeout), 0);
        }
    }
}
