//! A discovery source of one's own feeding Switchyard's balancer, and a replica registering itself
//! in etcd with the registration helper.
//!
//! The source here is a stand-in for whatever a platform keeps its replicas in (a database, a
//! service catalog, an autoscaler's state): a list that the example edits while requests flow,
//! read every 100 ms. Each read is a whole snapshot; `Source::from_snapshots` turns the snapshots
//! into the changes the balancer takes (an insert for each new or changed endpoint, a removal for
//! each one gone, nothing for the rest). The `Connector` makes a tonic `Channel` for each endpoint
//! (connect timeout, HTTP/2 keep-alive), and the balancer applies the changes off the request
//! path: a replica added takes requests from its next pick on; a replica removed takes no new one
//! and finishes what it has.
//!
//! With `--etcd URL` (a build with `--features etcd`, and a running etcd), the replicas register
//! themselves instead, each with a `Registration` (a lease kept alive: a replica that dies
//! disappears when the lease runs out), and the client watches their prefix with `Source::etcd`.
//!
//! ```sh
//! cargo run --example custom_discovery
//! cargo run --features etcd --example custom_discovery -- --etcd http://127.0.0.1:2379
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use switchyard::loadgen::infer_request;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::sim::TraceRecord;
use switchyard::worker::{self, WorkerArgs};
use switchyard_balance::{Backend, Balance, LoadBoard, Shared};
use switchyard_core::{Endpoint, EndpointId};
use switchyard_discovery::{Connector, Source};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::discover::Change;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let etcd = match args.as_slice() {
        [] => None,
        [flag, url] if flag == "--etcd" => Some(url.clone()),
        _ => {
            eprintln!("usage: custom_discovery [--etcd URL]");
            return ExitCode::FAILURE;
        }
    };
    match run(etcd).await {
        Ok(phases) => {
            for (phase, counts) in phases {
                println!("{phase:<32} {counts:?}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where a platform keeps its replicas: here, a list in memory.
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<Vec<Endpoint>>>);

impl Registry {
    fn list(&self) -> Vec<Endpoint> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn add(&self, endpoint: Endpoint) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(endpoint);
    }

    fn remove(&self, id: &EndpointId) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).retain(|e| &e.id != id);
    }

    /// The user-written source: the registry read every 100 ms, as whole snapshots.
    fn source(&self) -> Source {
        let registry = self.clone();
        let reads =
            tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(Duration::from_millis(100)))
                .map(move |_| Ok(registry.list()));
        Source::from_snapshots("registry", reads)
    }
}

/// How the replicas are announced: in the registry, or each by its own etcd registration.
enum Announcer {
    Registry(Registry),
    #[cfg(feature = "etcd")]
    Etcd {
        servers: Vec<String>,
        registrations: Vec<(EndpointId, switchyard_discovery::etcd::Registration)>,
    },
}

/// The key prefix the example's replicas register under in etcd.
#[cfg(feature = "etcd")]
const PREFIX: &str = "/switchyard-example/replicas/";

impl Announcer {
    /// A replica comes up (with etcd: it registers itself, as a replica process would at start).
    async fn add(&mut self, endpoint: Endpoint) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Announcer::Registry(registry) => registry.add(endpoint),
            #[cfg(feature = "etcd")]
            Announcer::Etcd { servers, registrations } => {
                let registration = switchyard_discovery::etcd::Registration::register(
                    servers.clone(),
                    PREFIX,
                    &endpoint,
                    Duration::from_secs(5),
                )
                .await?;
                registrations.push((endpoint.id, registration));
            }
        }
        Ok(())
    }

    /// A replica goes away (with etcd: it deregisters on its way out).
    async fn remove(&mut self, id: &EndpointId) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Announcer::Registry(registry) => registry.remove(id),
            #[cfg(feature = "etcd")]
            Announcer::Etcd { registrations, .. } => {
                if let Some(i) = registrations.iter().position(|(r, _)| r == id) {
                    registrations.remove(i).1.deregister().await?;
                }
            }
        }
        Ok(())
    }
}

/// Requests each replica ended in each phase: two replicas; a third added; the first removed.
pub(crate) type Phases = Vec<(&'static str, Vec<(String, u64)>)>;

/// Runs the three phases over three in-process workers, announced through the registry (or etcd
/// at `etcd`), 60 requests each; what each replica served in each.
pub(crate) async fn run(etcd: Option<String>) -> Result<Phases, Box<dyn std::error::Error>> {
    let mut workers = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let args = WorkerArgs { speed: 20.0, ..WorkerArgs::default() };
        tokio::spawn(worker::serve(args, listener, async move {
            let _ = stopped.await;
        }));
        workers.push(stop);
        replicas.push(Endpoint::new(format!("replica-{i}"), address));
    }

    let (mut announcer, source) = match etcd {
        None => {
            let registry = Registry::default();
            let source = registry.source();
            (Announcer::Registry(registry), source)
        }
        #[cfg(feature = "etcd")]
        Some(url) => {
            let servers = vec![url];
            let source = Source::etcd(servers.clone(), PREFIX);
            (Announcer::Etcd { servers, registrations: Vec::new() }, source)
        }
        #[cfg(not(feature = "etcd"))]
        Some(_) => return Err("--etcd needs a build with `--features etcd`".into()),
    };

    // ---- Switchyard: the source -> a Channel per endpoint -> Balance -> the usual tonic client ----
    let backends = Connector::default().connect(source).map(|change| {
        change.map(|change| match change {
            Change::Insert(id, connected) => {
                Change::Insert(id, Backend::new(connected.endpoint, connected.channel))
            }
            Change::Remove(id) => Change::Remove(id),
        })
    });
    let balancer = Balance::new(backends);
    let board = balancer.board();
    let client = GrpcInferenceServiceClient::new(Shared::new(balancer));
    // -----------------------------------------------------------------------------------------------

    let mut phases = Phases::new();
    announcer.add(replicas[0].clone()).await?;
    announcer.add(replicas[1].clone()).await?;
    wait_for(&board, |ids| ids.len() == 2).await?;
    phases.push(("replica-0 and replica-1", send(&client, &board, 60).await?));

    announcer.add(replicas[2].clone()).await?;
    wait_for(&board, |ids| ids.contains(&"replica-2".to_string())).await?;
    phases.push(("replica-2 added", send(&client, &board, 60).await?));

    announcer.remove(&replicas[0].id).await?;
    wait_for(&board, |ids| !ids.contains(&"replica-0".to_string())).await?;
    phases.push(("replica-0 removed", send(&client, &board, 60).await?));

    drop(client);
    for stop in workers {
        let _ = stop.send(());
    }
    Ok(phases)
}

/// Waits (at most 10 s) until the board's endpoint ids satisfy `done`.
async fn wait_for(
    board: &LoadBoard,
    done: impl Fn(&[String]) -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let ids = || board.snapshot().into_iter().map(|e| e.endpoint.id.to_string()).collect::<Vec<_>>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&ids()) {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the balancer's endpoints are {:?} after 10 s", ids()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Sends `n` requests, 8 at a time; the requests each replica ended meanwhile.
async fn send<S>(
    client: &GrpcInferenceServiceClient<S>,
    board: &LoadBoard,
    n: u64,
) -> Result<Vec<(String, u64)>, Box<dyn std::error::Error>>
where
    GrpcInferenceServiceClient<S>: Clone,
    S: tonic::client::GrpcService<tonic::body::Body> + Send,
    S::Error: Into<tower::BoxError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<tower::BoxError> + Send,
    S::Future: Send,
{
    let ended = |board: &LoadBoard| {
        board
            .snapshot()
            .into_iter()
            .map(|e| (e.endpoint.id.to_string(), e.load.completed + e.load.failed + e.load.overloaded))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let before = ended(board);
    let record =
        TraceRecord { at: Duration::ZERO, prompt_tokens: 64, output_tokens: 8, prefix: Default::default() };
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|id| {
            let mut client = client.clone();
            let request = infer_request("sim-llm", id, &record);
            async move { client.model_infer(request).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    if let Some(Err(status)) = results.into_iter().find(Result::is_err) {
        return Err(format!("a request failed: {status}").into());
    }
    Ok(ended(board)
        .into_iter()
        .map(|(id, n)| (id.clone(), n - before.get(&id).copied().unwrap_or(0)))
        .collect())
}
