//! Bodies a test controls frame by frame, and inner services that record what reached them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::enum_variant_names)]

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use http_body::{Body, Frame};
use http_body_util::StreamBody;
use switchyard_core::{Deadline, ModelName, PrefixBlocks, Priority, RequestSize, RoutingKey};
use switchyard_keys::Replay;

pub type FrameResult = Result<Frame<Bytes>, io::Error>;
/// A body whose frames a test sends through a channel.
pub type ChannelBody = StreamBody<mpsc::UnboundedReceiver<FrameResult>>;

/// A body and the sender of its frames (dropping the sender ends the body).
pub fn channel_body() -> (mpsc::UnboundedSender<FrameResult>, ChannelBody) {
    let (tx, rx) = mpsc::unbounded();
    (tx, StreamBody::new(rx))
}

/// A body of these frames, then these trailers, ended.
pub fn body_of(frames: Vec<Vec<u8>>, trailers: Option<http::HeaderMap>) -> ChannelBody {
    let (tx, body) = channel_body();
    for f in frames {
        tx.unbounded_send(Ok(Frame::data(Bytes::from(f)))).unwrap();
    }
    if let Some(t) = trailers {
        tx.unbounded_send(Ok(Frame::trailers(t))).unwrap();
    }
    body
}

/// The keys found in a request's extensions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeySet {
    pub routing: Option<RoutingKey>,
    pub priority: Option<Priority>,
    pub deadline: Option<Deadline>,
    pub model: Option<ModelName>,
    pub size: Option<RequestSize>,
    pub prefix: Option<PrefixBlocks>,
}

impl KeySet {
    pub fn of(ext: &http::Extensions) -> Self {
        Self {
            routing: ext.get().cloned(),
            priority: ext.get().cloned(),
            deadline: ext.get().cloned(),
            model: ext.get().cloned(),
            size: ext.get().cloned(),
            prefix: ext.get().cloned(),
        }
    }
}

/// What the inner service saw: the keys, and the body's frames as they came.
#[derive(Debug)]
pub struct Seen {
    pub keys: KeySet,
    pub frames: Vec<Bytes>,
    pub trailers: Option<http::HeaderMap>,
    pub error: Option<String>,
}

/// Reads a replayed body to its end, frame by frame.
pub async fn read_all<B>(mut body: Replay<B>) -> (Vec<Bytes>, Option<http::HeaderMap>, Option<String>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut frames = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => frames.push(data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Err(e) => return (frames, trailers, Some(e.to_string())),
        }
    }
    (frames, trailers, None)
}

/// An inner service that reads the whole body and answers with what it saw.
pub fn recorder<B>()
-> impl tower::Service<http::Request<Replay<B>>, Response = Seen, Error = Infallible, Future: Send> + Clone
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    tower::service_fn(|req: http::Request<Replay<B>>| async move {
        let keys = KeySet::of(req.extensions());
        let (frames, trailers, error) = read_all(req.into_body()).await;
        Ok(Seen { keys, frames, trailers, error })
    })
}

/// An inner service that keeps every request it gets (as a slow upstream would), without
/// reading its body, and answers with its keys at once.
pub struct Holder<B: Body> {
    pub held: Arc<Mutex<Vec<http::Request<Replay<B>>>>>,
}

impl<B: Body> Default for Holder<B> {
    fn default() -> Self {
        Self { held: Arc::default() }
    }
}

impl<B: Body> Clone for Holder<B> {
    fn clone(&self) -> Self {
        Self { held: self.held.clone() }
    }
}

impl<B: Body> tower::Service<http::Request<Replay<B>>> for Holder<B> {
    type Response = KeySet;
    type Error = Infallible;
    type Future = std::future::Ready<Result<KeySet, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Replay<B>>) -> Self::Future {
        let keys = KeySet::of(req.extensions());
        self.held.lock().unwrap().push(req);
        std::future::ready(Ok(keys))
    }
}

/// A gRPC message made on the fly, never whole in memory: `head` (its prefix and first bytes),
/// then `filler` bytes of `b'i'` in `frame`-byte frames (static, so not allocated), then
/// `tail`. Counts the bytes it has given in `given`.
pub struct MadeBody {
    pub head: Option<Bytes>,
    pub filler: usize,
    pub frame: usize,
    pub tail: Option<Bytes>,
    pub given: Arc<AtomicUsize>,
}

static FILLER: [u8; 64 * 1024] = [b'i'; 64 * 1024];

impl Body for MadeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let data = if let Some(head) = self.head.take() {
            head
        } else if self.filler > 0 {
            let n = self.filler.min(self.frame).min(FILLER.len());
            self.filler -= n;
            Bytes::from_static(&FILLER[..n])
        } else if let Some(tail) = self.tail.take() {
            tail
        } else {
            return Poll::Ready(None);
        };
        self.given.fetch_add(data.len(), Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// A `ModelInferRequest` whose field 3 (`id`) of `filler` bytes comes before its `model_name`,
/// made in `frame`-byte frames.
pub fn hidden_model(model: &str, filler: usize, frame: usize, given: Arc<AtomicUsize>) -> MadeBody {
    let mut key_len = vec![0x1a];
    let mut n = filler as u64;
    while n >= 0x80 {
        key_len.push((n as u8) | 0x80);
        n >>= 7;
    }
    key_len.push(n as u8);
    let tail: Vec<u8> = [&[0x0a, model.len() as u8][..], model.as_bytes()].concat();
    let len = key_len.len() + filler + tail.len();
    let mut head = vec![0];
    head.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    head.extend_from_slice(&key_len);
    MadeBody { head: Some(head.into()), filler, frame, tail: Some(tail.into()), given }
}
