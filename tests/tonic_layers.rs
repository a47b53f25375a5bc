#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The same layers on a tonic client and a tonic server: the key layer over a client's
//! `Shared<Balance>` (the balancer weighs the request by the size the layer read), and on a
//! server, with `StatusLayer` answering a layer's typed error with its gRPC status.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_balance::{Backend, Balance, Observation, Observer, Shared};
use switchyard_core::{Endpoint, Error, ErrorKind, Priority, RequestSize, RoutingKey, StatusLayer};
use switchyard_keys::{KeysConfig, KeysLayer, MODEL_INFER, Replay};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tower::ServiceBuilder;

/// The work of every request the balancer placed.
#[derive(Debug, Default)]
struct Works(Mutex<Vec<u64>>);

impl Observer for Works {
    fn on_end(&self, observation: &Observation<'_>) {
        self.0.lock().unwrap().push(observation.work);
    }
}

async fn worker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() };
    tokio::spawn(worker::serve(args, listener, std::future::pending()));
    addr
}

fn balancer(
    addr: SocketAddr,
    works: &Arc<Works>,
) -> Shared<Balance<Channel, http::Request<tonic::body::Body>>> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let backend = Backend::new(Endpoint::new("replica-0", format!("http://{addr}")), channel);
    Shared::new(Balance::from_backends([backend]).with_observer(works.clone()))
}

/// A 4000-byte prompt: 1000 tokens by the key layer's estimate.
fn prompt() -> switchyard::proto::inference::ModelInferRequest {
    worker::request::text_request("sim-llm", &"x".repeat(4000), 1)
}

#[tokio::test]
async fn the_key_layer_composes_on_a_tonic_client_and_its_typed_helper_gives_the_same_keys() {
    let addr = worker().await;

    // The layer in the client's stack, over the balancer (a Channel takes tonic's body type).
    let works = Arc::new(Works::default());
    let stack = ServiceBuilder::new()
        .layer(KeysLayer::new(KeysConfig::default()))
        .map_request(|req: http::Request<Replay<tonic::body::Body>>| req.map(tonic::body::Body::new))
        .service(balancer(addr, &works));
    let mut client = GrpcInferenceServiceClient::new(stack);
    client.model_infer(prompt()).await.unwrap();
    assert_eq!(*works.0.lock().unwrap(), [1000], "the balancer counted the size the layer read");

    // No layer: the typed helper fills the same extensions from the typed request.
    let works = Arc::new(Works::default());
    let mut client = GrpcInferenceServiceClient::new(balancer(addr, &works));
    let mut request = tonic::Request::new(prompt());
    KeysConfig::default().extract_request(MODEL_INFER, &mut request);
    assert_eq!(request.extensions().get::<RequestSize>(), Some(&RequestSize::new(1000, 1)));
    client.model_infer(request).await.unwrap();
    assert_eq!(*works.0.lock().unwrap(), [1000]);

    // Without either, every request is one unit of work.
    let works = Arc::new(Works::default());
    GrpcInferenceServiceClient::new(balancer(addr, &works)).model_infer(prompt()).await.unwrap();
    assert_eq!(*works.0.lock().unwrap(), [1]);
}

/// Sheds a request with the `x-shed-me` header: a layer failing with a typed error.
#[derive(Clone)]
struct Shed<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Shed<S>
where
    S: tower::Service<http::Request<B>, Error = tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, tower::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), tower::BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.headers().contains_key("x-shed-me") {
            let shed = ErrorKind::Shed { retry_after: Some(Duration::from_millis(40)) };
            let error: tower::BoxError = Error::new(shed).in_pool("server").into();
            return Box::pin(async move { Err(error) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// The keys a server-side layer saw, per request.
type SeenKeys = Arc<Mutex<Vec<(Option<RoutingKey>, Option<Priority>, Option<RequestSize>)>>>;

#[tokio::test]
async fn the_key_layer_composes_on_a_tonic_server_and_typed_errors_become_statuses() {
    let seen: SeenKeys = Arc::default();
    let record = seen.clone();
    // Below the key layer: records the keys, and sheds a request that asks for it.
    let shed_or_record = tower::layer::layer_fn(move |inner: tonic::service::Routes| {
        let record = record.clone();
        tower::util::MapRequest::new(inner, move |req: http::Request<Replay<tonic::body::Body>>| {
            let e = req.extensions();
            record.lock().unwrap().push((
                e.get::<RoutingKey>().cloned(),
                e.get::<Priority>().copied(),
                e.get::<RequestSize>().copied(),
            ));
            req.map(tonic::body::Body::new)
        })
    });
    let shed = tower::layer::layer_fn(|inner| Shed { inner });
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(StatusLayer)
        .layer(shed)
        .layer(KeysLayer::new(KeysConfig::default()))
        .layer(shed_or_record)
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let mut request = tonic::Request::new(prompt());
    request.metadata_mut().insert("x-session-id", "chat-9".parse().unwrap());
    request.metadata_mut().insert("x-priority", "critical".parse().unwrap());
    // The server has no KServe service: the call fails, after the layers saw it.
    let err = client.model_infer(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert_eq!(
        seen.lock().unwrap().clone(),
        [(Some(RoutingKey::new("chat-9")), Some(Priority::Critical), Some(RequestSize::new(1000, 1)))]
    );

    let mut request = tonic::Request::new(prompt());
    request.metadata_mut().insert("x-shed-me", "1".parse().unwrap());
    let err = client.model_infer(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "pool \"server\": request shed to protect the others");
    assert_eq!(err.metadata().get("grpc-retry-pushback-ms").unwrap(), "40");
}
