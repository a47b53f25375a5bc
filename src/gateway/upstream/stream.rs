//! One request's HTTP/2 stream to an endpoint, driven from the request's own task: the request
//! body piped into the stream's send half, and the response body read from its receive half.
//!
//! hyper's client sends each request through a channel to the connection's task, which spawns a
//! task per request to wait for its response and hands the response back over a oneshot. Here the
//! request's task opens the stream on the shared [`h2`] connection itself and waits for the
//! response itself: one task per request fewer, and no channel hop each way. A request body that
//! is not complete when the stream opens (a client-streaming call still sending) is piped by a
//! task of its own, as hyper does; a unary call's body is sent at once, inline.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tower::BoxError;

use crate::gateway::body::RequestBody;

/// Sends `req` on `sender`'s connection and waits for the response's head.
///
/// An error before the stream opened (the connection closed, or refused the stream) means the
/// request never reached the endpoint.
pub(super) async fn send(
    sender: SendRequest<Bytes>,
    req: Request<RequestBody>,
) -> Result<Response<UpstreamBody>, BoxError> {
    let mut sender = sender.ready().await?;
    let (head, body) = req.into_parts();
    let end_of_stream = body.is_end_stream();
    let (response, stream) = sender.send_request(Request::from_parts(head, ()), end_of_stream)?;
    let mut cancel = None;
    if !end_of_stream {
        let mut pipe = Pipe { body, stream, cancelled: None };
        if futures::poll!(&mut pipe).is_pending() {
            // The client is still sending: the rest goes from a task of its own, told to reset the
            // stream if the response is dropped before it is done.
            let (tx, rx) = oneshot::channel();
            pipe.cancelled = Some(rx);
            tokio::spawn(pipe);
            cancel = Some(tx);
        }
    }
    let response = response.await?;
    Ok(response.map(|recv| UpstreamBody { recv, data_done: false, _pipe: cancel }))
}

/// Copies a request body into its stream, frame by frame, within the stream's flow-control
/// window.
struct Pipe {
    body: RequestBody,
    stream: SendStream<Bytes>,
    /// Resolves (or closes) when the response is dropped: the stream is then reset.
    cancelled: Option<oneshot::Receiver<()>>,
}

impl Future for Pipe {
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
            // Wait for room in the window before reading more of the client's body (the window
            // is the backpressure), and stop if the endpoint reset the stream.
            this.stream.reserve_capacity(1);
            if this.stream.capacity() == 0 {
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
                    tracing::debug!(%error, "client's request body failed; resetting the endpoint's stream");
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

/// An endpoint's response body: its data frames, then its trailers, as the endpoint sent them.
/// Each data frame read gives its bytes back to the stream's flow-control window.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    recv: RecvStream,
    data_done: bool,
    /// The request body's pipe, when it outlived the response head: dropping this body (the
    /// client went away) has it reset the stream.
    _pipe: Option<oneshot::Sender<()>>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(error)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
