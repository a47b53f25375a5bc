//! An HTTP/2 stream's two halves as bodies, for the gateway's own use of [`h2`] on both sides:
//! [`RecvBody`] reads a stream's data frames and trailers as an [`http_body::Body`], giving each
//! frame's bytes back to the flow-control window; [`Pipe`] copies a body into a stream's send
//! half within the window.
//!
//! The gateway serves its clients' connections and opens its connections to the endpoints with
//! h2 directly rather than through hyper's server and client: each request is read, balanced,
//! forwarded and answered from its one task (hyper's client hands every request to the
//! connection's task over a channel and spawns a task per request to wait for the response).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::limits::MessageWatch;

/// Copies a body into a stream's send half, frame by frame, within the stream's flow-control
/// window, ending the stream with the body's end (or its trailers). A body that fails resets the
/// stream (`CANCEL`); a stream the peer resets ends the copy.
pub(crate) struct Pipe<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// Resolves (or closes) when the other side of the exchange is dropped: the stream is then
    /// reset.
    cancelled: Option<oneshot::Receiver<()>>,
    /// Whether a frame has been sent: the first goes without waiting for the window (the stream
    /// has none yet until its connection's task runs; h2 holds the frame until it has), so that a
    /// unary call's one message goes out inline, with no task spawned to wait.
    sent: bool,
}

impl<B> Pipe<B> {
    /// A pipe from `body` into `stream`.
    pub(crate) fn new(body: B, stream: SendStream<Bytes>) -> Self {
        Self { body, stream, cancelled: None, sent: false }
    }

    /// Resets the stream (`CANCEL`) once `cancelled` resolves or its sender is dropped.
    pub(crate) fn cancelled_by(mut self, cancelled: oneshot::Receiver<()>) -> Self {
        self.cancelled = Some(cancelled);
        self
    }
}

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if let Some(cancelled) = &mut this.cancelled
                && Pin::new(cancelled).poll(cx).is_ready()
            {
                this.stream.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            // After the first frame, wait for room in the window beyond what is already buffered
            // before reading more of the client's body (the window is the backpressure: at most
            // one frame waits in h2), and stop if the endpoint reset the stream.
            this.stream.reserve_capacity(1);
            if this.sent && this.stream.capacity() == 0 {
                loop {
                    match ready!(this.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(_)) | None => return Poll::Ready(()),
                    }
                }
            } else if this.stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.sent = true;
                        let end = this.body.is_end_stream();
                        if this.stream.send_data(data, end).is_err() || end {
                            return Poll::Ready(());
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.stream.send_trailers(trailers);
                        }
                        return Poll::Ready(());
                    }
                },
                Some(Err(error)) => {
                    tracing::debug!(%error, "body failed mid-way; resetting its stream");
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The body of an HTTP/2 stream the gateway reads: a client's request, or an endpoint's
/// response. Its data frames, then its trailers, as the peer sent them; each data frame read
/// gives its bytes back to the stream's flow-control window.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    side: Side,
    state: ReadState,
}

/// What a body holds for the side it is read on. One or the other, so that the body, moved
/// with the futures of every call, is no larger than one of them.
#[derive(Debug)]
enum Side {
    /// An endpoint's response: the request body's pipe, when it outlived the response head;
    /// dropping this body (the client went away) has it reset the stream.
    Response { _pipe: Option<oneshot::Sender<()>> },
    /// A client's request: the limit of its messages' length prefixes. Past it the body fails
    /// (the endpoint's stream is reset) and ends, and the connection answers the call
    /// `RESOURCE_EXHAUSTED`.
    Request(MessageWatch),
}

/// Where a body is in its reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Reading data frames.
    Data,
    /// The data is done: the trailers, if any, are next.
    Trailers,
    /// Refused for a message over the limit: it answered pending once, waking its task.
    Waking,
    /// Refused for a message over the limit: it failed, and ends.
    Failed,
}

impl RecvBody {
    /// The body of `recv`; dropping it fires `pipe`, if given.
    pub(crate) fn new(recv: RecvStream, pipe: Option<oneshot::Sender<()>>) -> Self {
        Self { recv, side: Side::Response { _pipe: pipe }, state: ReadState::Data }
    }

    /// The body of a client's request `recv`, its messages held to `limit`.
    pub(crate) fn limited(recv: RecvStream, limit: MessageWatch) -> Self {
        Self { recv, side: Side::Request(limit), state: ReadState::Data }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match self.state {
            ReadState::Data => {}
            ReadState::Trailers => {}
            ReadState::Waking => {
                self.state = ReadState::Failed;
                return Poll::Ready(Some(Err(h2::Error::from(Reason::CANCEL))));
            }
            ReadState::Failed => return Poll::Ready(None),
        }
        if self.state == ReadState::Data {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    if let Side::Request(limit) = &mut self.side
                        && !limit.feed(&data)
                    {
                        // Nothing more is read: the rest of the body stays with the client.
                        // Pending first, with the task woken: the connection's task for the
                        // call sees the refusal and drops the call before it forwards anything;
                        // a body read elsewhere (piped to an endpoint already) fails next.
                        self.state = ReadState::Waking;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.state = ReadState::Trailers,
            }
        }
        Poll::Ready(match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(error)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.state == ReadState::Failed || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::{BodyExt, StreamBody};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::gateway::upstream::send;
    use h2::client::SendRequest;
    use http::{Request, Response};

    type ChannelBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

    /// A request body the test feeds frame by frame.
    fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, ChannelBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, StreamBody::new(ReceiverStream::new(rx)))
    }

    /// What the endpoint saw of the request's stream.
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        data: Vec<Bytes>,
        trailers: Option<http::HeaderMap>,
        reset: Option<Reason>,
    }

    /// An h2 endpoint that answers each request's head at once (status 200, one data frame
    /// "answer", no end), then reads the request body to its end or reset and reports it.
    async fn endpoint() -> (std::net::SocketAddr, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen_rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut send = respond.send_response(Response::new(()), false).unwrap();
                    send.send_data(Bytes::from_static(b"answer"), false).unwrap();
                    let mut body = request.into_body();
                    let mut seen = Seen::default();
                    loop {
                        match body.data().await {
                            Some(Ok(data)) => {
                                let _ = body.flow_control().release_capacity(data.len());
                                seen.data.push(data);
                            }
                            Some(Err(e)) => {
                                seen.reset = e.reason();
                                break;
                            }
                            None => {
                                seen.trailers = body.trailers().await.unwrap_or_default();
                                break;
                            }
                        }
                    }
                    let _ = seen_tx.send(seen).await;
                    // Keep the response open until the client is done with it.
                    let _ = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
                });
            }
        });
        (addr, seen_rx)
    }

    async fn sender(addr: std::net::SocketAddr) -> SendRequest<Bytes> {
        let socket = TcpStream::connect(addr).await.unwrap();
        let (send, connection) = h2::client::handshake(socket).await.unwrap();
        tokio::spawn(connection);
        send
    }

    fn request(body: ChannelBody) -> Request<ChannelBody> {
        Request::post("http://endpoint/svc/Method").body(body).unwrap()
    }

    #[tokio::test]
    async fn a_body_still_being_sent_follows_the_response_frame_by_frame_to_its_trailers() {
        let (addr, mut seen) = endpoint().await;
        let (tx, body) = channel_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
        // The response head comes back while the client is still sending.
        let response = send(sender(addr).await, request(body)).await.unwrap();
        let mut response_body = response.into_body();
        let first = response_body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, Bytes::from_static(b"answer"));
        for part in ["two", "three"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        tx.send(Ok(Frame::trailers(trailers.clone()))).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap();
        let data: Vec<&[u8]> = seen.data.iter().map(|d| d.as_ref()).collect();
        assert_eq!(data, [&b"one"[..], b"two", b"three"]);
        assert_eq!(seen.trailers, Some(trailers));
        assert_eq!(seen.reset, None);
    }

    #[tokio::test]
    async fn a_complete_body_goes_out_inline_and_ends_the_stream() {
        let (addr, mut seen) = endpoint().await;
        let body = http_body_util::Full::new(Bytes::from_static(b"the whole message"));
        let request = Request::post("http://endpoint/svc/Method").body(body).unwrap();
        let _response = send(sender(addr).await, request).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap();
        assert_eq!(seen.data, [Bytes::from_static(b"the whole message")]);
        assert_eq!((seen.trailers, seen.reset), (None, None));
    }

    #[tokio::test]
    async fn dropping_the_response_resets_a_stream_whose_body_is_still_open() {
        let (addr, mut seen) = endpoint().await;
        let (tx, body) = channel_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
        let response = send(sender(addr).await, request(body)).await.unwrap();
        // The client goes away with its body still open: the endpoint's stream is reset.
        drop(response);
        let seen = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap();
        assert_eq!(seen.reset, Some(Reason::CANCEL), "{seen:?}");
        drop(tx);
    }
}
