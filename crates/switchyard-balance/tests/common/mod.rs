//! Helpers shared by the integration tests: in-process endpoints, discovery channels, counters.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use switchyard_balance::{Backend, LoadBoard};
use switchyard_core::{Endpoint, EndpointId, ReportedLoad, orca};
use tokio::sync::Semaphore;
use tower::discover::Change;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceExt};

/// The request every test sends.
pub type Req = http::Request<()>;
/// An endpoint's service.
pub type Svc<R> = BoxCloneService<Req, R, BoxError>;
/// A response body with frames the test chooses.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;
/// One discovery change.
pub type ChangeOf<S> = Result<Change<EndpointId, Backend<S>>, Infallible>;

pub fn req() -> Req {
    http::Request::new(())
}

/// A request that its endpoint holds until `hold` gives it a permit.
pub fn held(hold: &Arc<Semaphore>) -> Req {
    let mut req = req();
    req.extensions_mut().insert(Hold(hold.clone()));
    req
}

/// A held request: what releases it, and its task.
pub type Held = (Arc<Semaphore>, tokio::task::JoinHandle<Result<String, BoxError>>);

/// Put into a request's extensions: the endpoint waits for a permit before it answers.
#[derive(Clone)]
pub struct Hold(pub Arc<Semaphore>);

pub fn endpoint(id: &str) -> Endpoint {
    Endpoint::new(id, format!("http://{id}:9001"))
}

pub fn backend<S>(id: &str, service: S) -> Backend<S> {
    Backend::new(endpoint(id), service)
}

/// A backend of this id at this address.
pub fn backend_at<S>(id: &str, address: &str, service: S) -> Backend<S> {
    Backend::new(Endpoint::new(id, address), service)
}

/// Lets spawned tasks (the balancer's discovery task) run until they wait again.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// An endpoint that answers with its name after `delay`, or later if the request carries a
/// [`Hold`].
pub fn answers(name: &str, delay: Duration) -> Svc<String> {
    let name = name.to_string();
    BoxCloneService::new(tower::service_fn(move |req: Req| {
        let name = name.clone();
        let hold = req.extensions().get::<Hold>().cloned();
        async move {
            if let Some(Hold(hold)) = hold {
                hold.acquire().await?.forget();
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, BoxError>(name)
        }
    }))
}

/// `(name, answers(name, delay))` backends.
pub fn backends(spec: &[(&str, Duration)]) -> Vec<Backend<Svc<String>>> {
    spec.iter().map(|(name, delay)| backend(name, answers(name, *delay))).collect()
}

/// A dynamic discovery stream and its sender (keep the sender alive, or discovery ends).
pub fn discovery<S>() -> (mpsc::Sender<ChangeOf<S>>, mpsc::Receiver<ChangeOf<S>>) {
    mpsc::channel(64)
}

pub fn insert<S>(tx: &mut mpsc::Sender<ChangeOf<S>>, backend: Backend<S>) {
    tx.try_send(Ok(Change::Insert(backend.endpoint.id.clone(), backend)))
        .expect("discovery channel has room");
}

pub fn remove<S>(tx: &mut mpsc::Sender<ChangeOf<S>>, id: &str) {
    tx.try_send(Ok(Change::Remove(EndpointId::new(id)))).expect("discovery channel has room");
}

/// Waits for the balancer to be ready and sends one request; the response future is returned
/// unawaited, so the caller decides whether to await it or spawn it.
pub async fn dispatch<B>(balancer: &mut B, req: Req) -> B::Future
where
    B: Service<Req, Error = BoxError>,
{
    balancer.ready().await.expect("the balancer never fails poll_ready").call(req)
}

/// Sends one request and waits for its response.
pub async fn send<B>(balancer: &mut B) -> Result<B::Response, BoxError>
where
    B: Service<Req, Error = BoxError>,
{
    dispatch(balancer, req()).await.await
}

/// Every endpoint's completed count, by id.
pub fn completed(board: &LoadBoard) -> BTreeMap<String, u64> {
    board.snapshot().into_iter().map(|e| (e.endpoint.id.to_string(), e.load.completed)).collect()
}

/// Every endpoint's in-flight count, by id.
pub fn in_flight(board: &LoadBoard) -> BTreeMap<String, u32> {
    board.snapshot().into_iter().map(|e| (e.endpoint.id.to_string(), e.load.in_flight)).collect()
}

/// The one endpoint whose in-flight count went up between two readings.
pub fn grown(before: &BTreeMap<String, u32>, after: &BTreeMap<String, u32>) -> String {
    let grown: Vec<&String> =
        after.keys().filter(|id| after[*id] > before.get(*id).copied().unwrap_or(0)).collect();
    assert_eq!(grown.len(), 1, "exactly one endpoint took the request: {before:?} -> {after:?}");
    grown[0].clone()
}

/// gRPC trailers: `grpc-status`, and a load report if given.
pub fn trailers(status: u32, report: Option<&ReportedLoad>) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from(status));
    if let Some(r) = report {
        t.insert(orca::TRAILER_NAME, orca::encode_header_value(r));
    }
    t
}

/// A body of these frames, then its end.
pub fn body_of(frames: Vec<Frame<Bytes>>) -> Body {
    let stream = futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>));
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// A unary gRPC response: one message, then trailers.
pub fn grpc_response(message: &'static [u8], trailers: http::HeaderMap) -> http::Response<Body> {
    http::Response::new(body_of(vec![Frame::data(Bytes::from_static(message)), Frame::trailers(trailers)]))
}

/// Reads a whole body; the frames are dropped, the trailers returned.
pub async fn drain<B>(body: B) -> Option<http::HeaderMap>
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("the body has no error").trailers().cloned()
}
