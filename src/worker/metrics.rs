//! The worker's `/metrics`: its RPC metrics and its engine's load, for Prometheus to scrape.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Key, Recorder};
use switchyard_sim::EngineHandle;
use switchyard_telemetry::{MetricsRegistry, ScrapeSource};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Gauge: requests waiting in the engine's queue.
pub const REPLICA_QUEUE: &str = "switchyard_replica_queue_depth";
/// Gauge: requests the engine runs now.
pub const REPLICA_RUNNING: &str = "switchyard_replica_running_requests";
/// Gauge, 0 to 1: the engine's KV-cache use.
pub const REPLICA_KV_CACHE: &str = "switchyard_replica_kv_cache_utilization_ratio";
/// Counter: prompt tokens of the requests the engine admitted.
pub const REPLICA_PROMPT_TOKENS: &str = "switchyard_replica_prompt_tokens_total";
/// Counter: of those, the tokens whose KV the prefix cache held at admission (not prefilled
/// again). Over [`REPLICA_PROMPT_TOKENS`], the replica's prefix-cache hit rate.
pub const REPLICA_CACHED_PROMPT_TOKENS: &str = "switchyard_replica_cached_prompt_tokens_total";

/// The engine's load, as its ORCA report gives it, read at each scrape.
#[derive(Debug)]
pub struct EngineMetrics {
    engine: EngineHandle,
}

impl EngineMetrics {
    /// The load of `engine`; describes its series in `registry`.
    pub fn new(engine: EngineHandle, registry: &MetricsRegistry) -> Self {
        use metrics::Unit;
        registry.describe_gauge(
            REPLICA_QUEUE.into(),
            Some(Unit::Count),
            "Requests waiting in the engine's queue.".into(),
        );
        registry.describe_gauge(
            REPLICA_RUNNING.into(),
            Some(Unit::Count),
            "Requests the engine runs now.".into(),
        );
        registry.describe_gauge(
            REPLICA_KV_CACHE.into(),
            Some(Unit::Percent),
            "KV-cache use of the engine, 0 to 1.".into(),
        );
        registry.describe_counter(
            REPLICA_PROMPT_TOKENS.into(),
            Some(Unit::Count),
            "Prompt tokens of the requests the engine admitted.".into(),
        );
        registry.describe_counter(
            REPLICA_CACHED_PROMPT_TOKENS.into(),
            Some(Unit::Count),
            "Prompt tokens found in the prefix cache at admission (not prefilled again).".into(),
        );
        Self { engine }
    }
}

impl ScrapeSource for EngineMetrics {
    fn publish(&self, recorder: &dyn Recorder) {
        static METADATA: metrics::Metadata<'static> =
            metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let snapshot = self.engine.load();
        let load = snapshot.to_reported();
        let gauge = |name: &'static str, value: f64| {
            recorder.register_gauge(&Key::from_static_name(name), &METADATA).set(value)
        };
        gauge(REPLICA_QUEUE, f64::from(load.queue_depth));
        gauge(REPLICA_RUNNING, f64::from(load.running));
        gauge(REPLICA_KV_CACHE, load.kv_cache_utilization);
        let counter = |name: &'static str, value: u64| {
            recorder.register_counter(&Key::from_static_name(name), &METADATA).absolute(value)
        };
        counter(REPLICA_PROMPT_TOKENS, snapshot.prompt_tokens);
        counter(REPLICA_CACHED_PROMPT_TOKENS, snapshot.cached_prompt_tokens);
    }
}

/// Serves `GET /metrics` (HTTP/1.1) from `registry` on `listener` until `stop` completes.
pub async fn serve_metrics(listener: TcpListener, registry: MetricsRegistry, stop: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let registry = registry.clone();
                        async move { Ok::<_, Infallible>(answer(&registry, &req)) }
                    });
                    let mut http1 = hyper::server::conn::http1::Builder::new();
                    http1.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
                    connections.spawn(async move {
                        if let Err(e) = http1.serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!("metrics connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

fn answer<B>(registry: &MetricsRegistry, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            (http::StatusCode::OK, switchyard_telemetry::CONTENT_TYPE, registry.render())
        }
        (_, "/metrics") => (http::StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET /metrics\n".into()),
        (_, path) => (http::StatusCode::NOT_FOUND, "text/plain", format!("no {path}: try GET /metrics\n")),
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
