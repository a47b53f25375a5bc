//! Injected faults: `switchyard worker --fault unavailable|slow=FACTOR|reset`, the faulty replica
//! of the fault bench (`switchyard bench faults`).
//!
//! A fault acts on the inference service's calls only (`/inference.GRPCInferenceService/...`);
//! health, reflection and the ORCA streams answer as ever, as they do on a real replica whose
//! model server misbehaves behind a healthy process:
//!
//! - `unavailable`: every call is answered at once with a trailers-only `UNAVAILABLE`, the way
//!   a replica that lost its GPU answers;
//! - `slow=FACTOR`: every call takes FACTOR times as long: its response headers, and each frame
//!   of its body, are held until FACTOR × the time the service took to produce them, measured
//!   from the call's start (a stream's tokens keep their rhythm, stretched). The engine's
//!   capacity stays what it is; what a client and a balancer see is the latency;
//! - `reset`: a response is cut after its first DATA frame (its first message, or the few the
//!   encoder had ready at once): the stream is reset (HTTP/2 `RST_STREAM`, `INTERNAL_ERROR`)
//!   where its next frame would be, at least 20 ms after the first (a reset drops what the
//!   connection still queues, the first frame included), so no status reaches the client; a
//!   response with no message is reset before its trailers.
//!
//! With `--fault-on-signal` the fault is armed but off until the process gets SIGUSR1, and off
//! again on SIGUSR2: the bench injects it at a known moment under load.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower::{Layer, Service};

/// The paths a fault acts on.
const FAULTED_PREFIX: &str = "/inference.GRPCInferenceService/";

/// Frames a slowed body holds at most before it stops reading its inner body.
const SLOW_BUFFER: usize = 64;

/// How long a reset waits after the first DATA frame before it cuts the stream at its next frame:
/// time for the message to leave, since a reset drops what the connection still queues.
const RESET_AFTER: Duration = Duration::from_millis(20);

/// Largest `slow` factor accepted.
pub const MAX_SLOW_FACTOR: f64 = 1000.0;

/// A fault a worker injects into its inference calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Every call answers `UNAVAILABLE` at once.
    Unavailable,
    /// Every call takes this many times as long (at least 1).
    Slow(f64),
    /// Every response is reset (`RST_STREAM`) after its first DATA frame.
    Reset,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unavailable" => Ok(Self::Unavailable),
            "reset" => Ok(Self::Reset),
            _ => {
                let Some(factor) = s.strip_prefix("slow=") else {
                    return Err(format!("unknown fault {s:?}; expected unavailable, slow=FACTOR or reset"));
                };
                match factor.parse::<f64>() {
                    Ok(f) if (1.0..=MAX_SLOW_FACTOR).contains(&f) => Ok(Self::Slow(f)),
                    _ => {
                        Err(format!("slow=FACTOR takes a factor from 1 to {MAX_SLOW_FACTOR}, not {factor:?}"))
                    }
                }
            }
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable => f.write_str("unavailable"),
            Self::Slow(factor) => write!(f, "slow={factor}"),
            Self::Reset => f.write_str("reset"),
        }
    }
}

/// Injects a [`Fault`] into the inference calls while its switch is on.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    fault: Option<Fault>,
    on: Arc<AtomicBool>,
}

impl FaultLayer {
    /// A layer injecting `fault` while `on` is set.
    pub fn new(fault: Fault, on: Arc<AtomicBool>) -> Self {
        Self { fault: Some(fault), on }
    }

    /// A layer that injects nothing (its responses pass as they are).
    pub fn none() -> Self {
        Self { fault: None, on: Arc::new(AtomicBool::new(false)) }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService { inner, fault: self.fault, on: self.on.clone() }
    }
}

/// The service of [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    fault: Option<Fault>,
    on: Arc<AtomicBool>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for FaultService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<FaultBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let fault = self
            .fault
            .filter(|_| self.on.load(Ordering::Acquire) && request.uri().path().starts_with(FAULTED_PREFIX));
        if fault == Some(Fault::Unavailable) {
            let status = tonic::Status::unavailable("injected fault: this replica answers UNAVAILABLE");
            return ResponseFuture {
                state: State::Refused { status: Some(status) },
                fault,
                start: Instant::now(),
            };
        }
        ResponseFuture {
            state: State::Called { inner: self.inner.call(request) },
            fault,
            start: Instant::now(),
        }
    }
}

pin_project! {
    /// The response future of [`FaultService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        fault: Option<Fault>,
        start: Instant,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Refused { status: Option<tonic::Status> },
        Called { #[pin] inner: F },
        // A slowed response's head, held until factor × the time it took.
        Held { response: Option<http::Response<FaultBody<B>>>, #[pin] until: Sleep },
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F, ResBody>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes>,
{
    type Output = Result<http::Response<FaultBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { status } => {
                    let status =
                        status.take().unwrap_or_else(|| tonic::Status::unavailable("injected fault"));
                    return Poll::Ready(Ok(status.into_http::<()>().map(|()| FaultBody::empty())));
                }
                StateProj::Called { inner } => {
                    let response = ready!(inner.poll(cx))?;
                    match *this.fault {
                        Some(Fault::Reset) => return Poll::Ready(Ok(response.map(FaultBody::reset))),
                        Some(Fault::Slow(factor)) => {
                            let now = Instant::now();
                            let hold = now.saturating_duration_since(*this.start).mul_f64(factor - 1.0);
                            let start = *this.start;
                            let response = response.map(|b| FaultBody::slow(b, start, factor, hold));
                            this.state.set(State::Held {
                                response: Some(response),
                                until: sleep_until(now + hold),
                            });
                        }
                        _ => return Poll::Ready(Ok(response.map(FaultBody::clean))),
                    }
                }
                StateProj::Held { response, until } => {
                    ready!(until.poll(cx));
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(response)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

pin_project! {
    /// A response body with a fault in it (or none).
    pub struct FaultBody<B> {
        #[pin]
        inner: Option<B>,
        mode: BodyMode,
        #[pin]
        sleep: Option<Sleep>,
    }
}

#[derive(Debug)]
enum BodyMode {
    Clean,
    /// DATA frames sent so far; reset at the frame after the first.
    Reset {
        messages: usize,
    },
    Slow(Box<SlowTimeline>),
}

/// The timeline of a slowed body: each frame is released at start + factor × (when the inner
/// body produced it − start − the hold already added to the head).
#[derive(Debug)]
struct SlowTimeline {
    start: Instant,
    factor: f64,
    /// Time the head was held for beyond its own: frames produced later are not held for it twice.
    hold: Duration,
    held: VecDeque<(Instant, Frame<Bytes>)>,
    inner_done: bool,
    last_release: Instant,
}

/// The error a reset body ends with (hyper answers it with `RST_STREAM`).
#[derive(Debug, thiserror::Error)]
#[error("injected fault: stream reset mid-response")]
pub struct InjectedReset;

impl<B> Default for FaultBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> FaultBody<B> {
    fn empty() -> Self {
        Self { inner: None, mode: BodyMode::Clean, sleep: None }
    }

    fn clean(inner: B) -> Self {
        Self { inner: Some(inner), mode: BodyMode::Clean, sleep: None }
    }

    fn reset(inner: B) -> Self {
        Self { inner: Some(inner), mode: BodyMode::Reset { messages: 0 }, sleep: None }
    }

    fn slow(inner: B, start: Instant, factor: f64, hold: Duration) -> Self {
        let timeline = SlowTimeline {
            start,
            factor,
            hold,
            held: VecDeque::new(),
            inner_done: false,
            last_release: start,
        };
        Self { inner: Some(inner), mode: BodyMode::Slow(Box::new(timeline)), sleep: None }
    }
}

impl<B> Body for FaultBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<switchyard_core::error::BoxError>,
{
    type Data = Bytes;
    type Error = switchyard_core::error::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let Some(mut inner) = this.inner.as_mut().as_pin_mut() else { return Poll::Ready(None) };
        match this.mode {
            BodyMode::Clean => inner.poll_frame(cx).map_err(Into::into),
            BodyMode::Reset { messages } => {
                if *messages > 0 {
                    // The first frame has had its time to leave (a reset drops what h2 still
                    // queues); reset where the next frame would be.
                    if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                        ready!(sleep.poll(cx));
                    }
                    let _ = ready!(inner.poll_frame(cx));
                    return Poll::Ready(Some(Err(Box::new(InjectedReset))));
                }
                match ready!(inner.poll_frame(cx)) {
                    Some(Ok(frame)) if frame.is_data() => {
                        *messages += 1;
                        this.sleep.set(Some(tokio::time::sleep(RESET_AFTER)));
                        Poll::Ready(Some(Ok(frame)))
                    }
                    // Trailers (or the end) before any message: reset instead.
                    Some(Ok(_)) | None => Poll::Ready(Some(Err(Box::new(InjectedReset)))),
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            BodyMode::Slow(timeline) => {
                // Read ahead (bounded), stamping each frame with its release time.
                while !timeline.inner_done && timeline.held.len() < SLOW_BUFFER {
                    match inner.as_mut().poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            let produced = Instant::now();
                            let own = produced
                                .saturating_duration_since(timeline.start)
                                .saturating_sub(timeline.hold);
                            let release =
                                (timeline.start + own.mul_f64(timeline.factor)).max(timeline.last_release);
                            timeline.last_release = release;
                            timeline.held.push_back((release, frame));
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                        Poll::Ready(None) => timeline.inner_done = true,
                        Poll::Pending => break,
                    }
                }
                let Some(&(release, _)) = timeline.held.front() else {
                    return if timeline.inner_done { Poll::Ready(None) } else { Poll::Pending };
                };
                let mut sleep = match this.sleep.as_mut().as_pin_mut() {
                    Some(sleep) => sleep,
                    None => {
                        this.sleep.set(Some(sleep_until(release)));
                        match this.sleep.as_mut().as_pin_mut() {
                            Some(sleep) => sleep,
                            None => return Poll::Pending,
                        }
                    }
                };
                if sleep.deadline() < release {
                    sleep.as_mut().reset(release);
                }
                ready!(sleep.poll(cx));
                Poll::Ready(timeline.held.pop_front().map(|(_, frame)| Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.inner, &self.mode) {
            (None, _) => true,
            (Some(_), BodyMode::Slow(t)) => t.inner_done && t.held.is_empty(),
            (Some(inner), BodyMode::Clean) => inner.is_end_stream(),
            (Some(_), BodyMode::Reset { .. }) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.mode) {
            (Some(inner), BodyMode::Clean) => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// Turns `on` on at SIGUSR1 and off at SIGUSR2, for the life of the process (Unix; elsewhere
/// the fault stays off).
pub fn switch_on_signals(on: Arc<AtomicBool>, fault: Fault) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut usr1), Ok(mut usr2)) =
            (signal(SignalKind::user_defined1()), signal(SignalKind::user_defined2()))
        else {
            tracing::warn!("cannot listen for SIGUSR1/SIGUSR2: fault {fault} stays off");
            return;
        };
        tracing::info!("fault {fault} armed: on at SIGUSR1, off at SIGUSR2");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = usr1.recv() => {
                        on.store(true, Ordering::Release);
                        tracing::warn!("fault {fault} on");
                    }
                    Some(()) = usr2.recv() => {
                        on.store(false, Ordering::Release);
                        tracing::info!("fault {fault} off");
                    }
                    else => return,
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = on;
        tracing::warn!("no signals here: fault {fault} stays off");
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tower::ServiceExt;

    use super::*;

    type Frames = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

    /// A service that answers after `head` with a body whose frames the test sends.
    fn replica(
        head: Duration,
        frames: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
    ) -> impl Service<http::Request<()>, Response = http::Response<Frames>, Error = Infallible> {
        let frames = std::sync::Mutex::new(Some(frames));
        tower::service_fn(move |_req: http::Request<()>| {
            let rx = frames.lock().ok().and_then(|mut f| f.take());
            async move {
                tokio::time::sleep(head).await;
                let rx = rx.unwrap_or_else(|| mpsc::channel(1).1);
                Ok::<_, Infallible>(http::Response::new(StreamBody::new(ReceiverStream::new(rx))))
            }
        })
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

    #[test]
    fn faults_parse_and_print_back() {
        for text in ["unavailable", "reset", "slow=20", "slow=1.5"] {
            assert_eq!(text.parse::<Fault>().unwrap().to_string(), text);
        }
        for bad in ["slow", "slow=0.5", "slow=x", "crash", "slow=1e9"] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_holds_the_head_and_each_frame_until_factor_times_their_time() {
        let (tx, rx) = mpsc::channel(8);
        let layer = FaultLayer::new(Fault::Slow(20.0), Arc::new(AtomicBool::new(true)));
        let service = layer.layer(replica(Duration::from_millis(10), rx));
        let start = Instant::now();
        let response = service.oneshot(request(INFER)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(200), "the head: 20 × 10 ms");
        let producer = tokio::spawn(async move {
            // Frames at 10 ms of the service's own time after the head, then 20 ms more.
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"b")))).await.unwrap();
        });
        let mut body = Box::pin(response.into_body());
        body.frame().await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(400), "own time 20 ms → 400 ms");
        body.frame().await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(800), "own time 40 ms → 800 ms");
        producer.await.unwrap();
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn reset_passes_the_first_message_and_fails_the_body_after_it() {
        let (tx, rx) = mpsc::channel(8);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"second")))).await.unwrap();
        let layer = FaultLayer::new(Fault::Reset, Arc::new(AtomicBool::new(true)));
        let mut body = Box::pin(
            layer.layer(replica(Duration::ZERO, rx)).oneshot(request(INFER)).await.unwrap().into_body(),
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<InjectedReset>(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_answers_at_once_and_only_on_the_inference_service_while_on() {
        let on = Arc::new(AtomicBool::new(true));
        let layer = FaultLayer::new(Fault::Unavailable, on.clone());
        let refused = layer.layer(replica(Duration::from_millis(50), mpsc::channel(1).1));
        let start = Instant::now();
        let response = refused.oneshot(request(INFER)).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(response.headers().get("grpc-status").unwrap(), "14");

        let health = layer.layer(replica(Duration::ZERO, mpsc::channel(1).1));
        let response = health.oneshot(request("/grpc.health.v1.Health/Check")).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none(), "health passes");

        on.store(false, Ordering::Release);
        let off = layer.layer(replica(Duration::ZERO, mpsc::channel(1).1));
        let response = off.oneshot(request(INFER)).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none(), "switched off: served");
    }
}
