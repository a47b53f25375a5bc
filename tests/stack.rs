#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One stack: a gateway pool is a tower stack of the layers its config names, its policy comes
//! from the registry by name with parameters, the request keys reach the policy, and every typed
//! error reaches the client as its gRPC status, naming no internal address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use switchyard::gateway::layers::{self, PoolRequest};
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proto::inference::ModelInferRequest;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_balance::policy::{self, Endpoints, Policy, PolicySpec, RequestInfo};
use switchyard_core::{Error, ErrorKind, RoutingKey};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;
use tower::util::BoxCloneSyncServiceLayer;

/// An in-process worker; it stops when dropped.
struct Worker {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Worker {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let args = WorkerArgs { speed: 20.0, model: "sim-llm".into(), ..WorkerArgs::default() };
        tokio::spawn(worker::serve(args, listener, async move {
            let _ = rx.await;
        }));
        Self { addr, _stop: tx }
    }
}

/// What the `test-nth` policy saw of each request: its work and its session key.
static SEEN: Mutex<Vec<(u64, Option<String>)>> = Mutex::new(Vec::new());

/// Always the n-th eligible endpoint; none fits when there are not that many.
#[derive(Debug)]
struct Nth(usize);

impl Policy for Nth {
    fn name(&self) -> &'static str {
        "test-nth"
    }

    fn pick(&self, request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let key = request.extensions.and_then(|e| e.get::<RoutingKey>()).map(|k| k.as_str().to_string());
        SEEN.lock().unwrap().push((request.work, key));
        (self.0 < endpoints.eligible().len()).then_some(self.0)
    }
}

/// Registers the test's policy and layer once per process.
fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        policy::registry()
            .register("test-nth", "the n-th endpoint", |spec: &PolicySpec, _seed| {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Params {
                    n: usize,
                }
                Ok(Arc::new(Nth(spec.params::<Params>()?.n)) as Arc<dyn Policy>)
            })
            .unwrap();
        layers::registry()
            .register("test-shed", "refuses every request, asking for a 25 ms pushback", |spec| {
                spec.no_params()?;
                Ok(BoxCloneSyncServiceLayer::new(tower::layer::layer_fn(|_inner| {
                    tower::service_fn(|_req: PoolRequest| async {
                        let shed = ErrorKind::Shed { retry_after: Some(Duration::from_millis(25)) };
                        Err::<layers::PoolResponse, _>(tower::BoxError::from(
                            Error::new(shed).in_pool("ignored"),
                        ))
                    })
                })))
            })
            .unwrap();
    });
}

async fn start(config: &str) -> Gateway {
    register();
    let config = GatewayConfig::from_toml(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Gateway::start(config, listener, None).unwrap()
}

async fn connect(addr: SocketAddr) -> GrpcInferenceServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    GrpcInferenceServiceClient::new(channel)
}

fn infer(text: &str) -> tonic::Request<ModelInferRequest> {
    tonic::Request::new(worker::request::text_request("sim-llm", text, 2))
}

fn served(gateway: &Gateway, pool: &str) -> Vec<(String, u64)> {
    let board = gateway.pool(pool).unwrap().board().snapshot();
    board.into_iter().map(|e| (e.endpoint.id.to_string(), e.load.completed)).collect()
}

#[tokio::test]
async fn a_layer_in_a_pools_config_is_on_that_pools_path_only() {
    let w = Worker::start().await;
    let config = format!(
        r#"
default_pool = "open"

[[pool]]
name = "guarded"
layers = ["test-shed"]
endpoints = [{{ address = "http://{addr}", id = "gpu-a" }}]

[[pool]]
name = "open"
endpoints = [{{ address = "http://{addr}", id = "gpu-b" }}]

[[route]]
path_prefix = "/inference.GRPCInferenceService/ServerLive"
pool = "guarded"
"#,
        addr = w.addr
    );
    let gateway = start(&config).await;
    let mut client = connect(gateway.local_addr()).await;

    let err = client.server_live(switchyard::proto::inference::ServerLiveRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "pool \"ignored\": request shed to protect the others");
    assert_eq!(err.metadata().get("grpc-retry-pushback-ms").unwrap(), "25");
    // Refused before the balancer. This test layer drops the service below it (the pool's
    // balancer) when it is built, and a dropped balancer takes its endpoints off its board: the
    // guarded pool shows none.
    assert_eq!(served(&gateway, "guarded"), []);

    client.model_infer(infer("hello")).await.unwrap();
    assert_eq!(served(&gateway, "open"), [("gpu-b".to_string(), 1)], "the other pool has no such layer");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_registered_policy_is_chosen_by_name_with_parameters_and_sees_the_keys() {
    let (w1, w2) = (Worker::start().await, Worker::start().await);
    let config = |n: usize| {
        format!(
            r#"
[[pool]]
name = "p"
policy = {{ name = "test-nth", n = {n} }}
endpoints = [{{ address = "http://{a}", id = "first" }}, {{ address = "http://{b}", id = "second" }}]
"#,
            a = w1.addr,
            b = w2.addr
        )
    };
    let gateway = start(&config(1)).await;
    let mut client = connect(gateway.local_addr()).await;
    for i in 0..4 {
        let mut request = infer(&"x".repeat(4000));
        request.metadata_mut().insert("x-session-id", format!("chat-{i}").parse().unwrap());
        client.model_infer(request).await.unwrap();
    }
    assert_eq!(served(&gateway, "p"), [("first".to_string(), 0), ("second".to_string(), 4)]);
    let seen = SEEN.lock().unwrap().clone();
    assert!(seen.contains(&(1000, Some("chat-3".to_string()))), "the keys reach the policy: {seen:?}");
    gateway.shutdown().await.unwrap();

    // A parameter the policy does not know is a config error naming it.
    let bad = config(1).replace("n = 1", "n = 1, m = 2");
    let err = GatewayConfig::from_toml(&bad).unwrap_err().to_string();
    assert!(err.contains("pool[0].policy") && err.contains("`m`"), "{err}");

    // A policy that finds none fit: a clear error, nothing sent.
    let gateway = start(&config(5)).await;
    let mut refused = connect(gateway.local_addr()).await;
    let err = refused.model_infer(infer("hello")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "pool \"p\": no endpoint fits the request");
    assert_eq!(served(&gateway, "p"), [("first".to_string(), 0), ("second".to_string(), 0)]);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn typed_errors_reach_the_client_as_their_status_with_no_internal_address() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let w = Worker::start().await;
    let config = format!(
        r#"
[[pool]]
name = "down"
endpoints = [{{ address = "http://{closed}", id = "gpu-a" }}]

[[pool]]
name = "slow"
layers = [{{ name = "timeout", after = "50ms" }}]
endpoints = [{{ address = "http://{w}", id = "gpu-b" }}]

[[route]]
model = "down"
pool = "down"

[[route]]
model = "slow"
pool = "slow"
"#,
        w = w.addr
    );
    let gateway = start(&config).await;
    let mut client = connect(gateway.local_addr()).await;
    let call = |model: &str, tokens: u32| {
        let mut request = tonic::Request::new(worker::request::text_request("sim-llm", "hi", tokens));
        request.metadata_mut().insert("x-model-name", model.parse().unwrap());
        request
    };

    let err = client.model_infer(call("down", 1)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unavailable, "pool \"down\" endpoint \"gpu-a\": unreachable")
    );
    assert!(!err.message().contains("127.0.0.1"), "{}", err.message());

    // 500 tokens at speed 20 take longer than the pool's 50 ms timeout.
    let err = client.model_infer(call("slow", 500)).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::DeadlineExceeded, "pool \"slow\": deadline exceeded"));

    let err = client.model_infer(call("nowhere", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("model \"nowhere\""), "{}", err.message());
    gateway.shutdown().await.unwrap();
}
