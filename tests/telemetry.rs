#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Telemetry over real loopback gRPC: the gateway's and the worker's `/metrics` pass `promtool`
//! and hold the per-endpoint series after traffic, and a real Prometheus server scrapes them.
//! `promtool` and `prometheus` come from Debian's `prometheus` package
//! (`scripts/install-test-deps.sh` installs it).

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::prometheus::{Prometheus, encode, get, promtool_check};

use switchyard::balance::PolicyKind;
use switchyard::gateway::{Gateway, GatewayConfig, GatewayTelemetry};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_telemetry::MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// An in-process worker with `/metrics`; it stops when dropped.
struct Worker {
    addr: SocketAddr,
    metrics: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Worker {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (listener.local_addr().unwrap(), metrics.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let args = WorkerArgs { speed: 20.0, ..WorkerArgs::default() };
        tokio::spawn(worker::serve_with_metrics(args, listener, Some(metrics), async move {
            let _ = rx.await;
        }));
        Self { addr, metrics: metrics_addr, _stop: tx }
    }
}

async fn gateway(workers: &[&Worker]) -> Gateway {
    let backends: Vec<String> = workers.iter().map(|w| format!("http://{}", w.addr)).collect();
    let config = GatewayConfig::single_pool(&backends, PolicyKind::RoundRobin).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let telemetry = GatewayTelemetry::new(MetricsRegistry::new(), true, false);
    Gateway::start_with_telemetry(config, listener, Some(admin), telemetry).unwrap()
}

async fn traffic(gateway: &Gateway, calls: usize) {
    let mut client =
        GrpcInferenceServiceClient::connect(format!("http://{}", gateway.local_addr())).await.unwrap();
    for i in 0..calls {
        let request = worker::request::text_request("sim-llm", &format!("Tell me story {i}."), 4);
        client.model_infer(request).await.unwrap();
    }
}

/// The value of the series `series` (name and labels, exactly as rendered) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn gateway_and_worker_metrics_pass_promtool_and_hold_the_per_endpoint_series() {
    let (a, b) = (Worker::start().await, Worker::start().await);
    let gateway = gateway(&[&a, &b]).await;
    traffic(&gateway, 6).await;

    let admin = gateway.admin_addr().unwrap();
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    promtool_check("gateway", &text).await;
    for w in [&a, &b] {
        let labels = format!(r#"{{pool="default",endpoint="{}"}}"#, w.addr);
        assert_eq!(
            value(&text, &format!("switchyard_endpoint_picks_total{labels}")),
            Some(3.0),
            "round robin sends three of six to each\n{text}"
        );
        let ok = format!(
            r#"switchyard_endpoint_requests_total{{pool="default",endpoint="{}",outcome="ok"}}"#,
            w.addr
        );
        assert_eq!(value(&text, &ok), Some(3.0), "{text}");
        assert_eq!(value(&text, &format!("switchyard_endpoint_in_flight_requests{labels}")), Some(0.0));
        assert!(
            value(&text, &format!("switchyard_endpoint_latency_ewma_seconds{labels}"))
                .is_some_and(|v| v > 0.0)
        );
        assert!(
            value(&text, &format!("switchyard_endpoint_reported_queue_depth{labels}")).is_some(),
            "{text}"
        );
        assert!(
            value(&text, &format!("switchyard_endpoint_reported_kv_cache_utilization_ratio{labels}"))
                .is_some()
        );
        assert_eq!(value(&text, &format!("switchyard_endpoint_ejections_total{labels}")), Some(0.0));
        // The work (prompt tokens) of the three requests started on it: at least one each.
        assert!(
            value(&text, &format!("switchyard_endpoint_started_work_total{labels}"))
                .is_some_and(|v| v >= 3.0),
            "{text}"
        );
        assert_eq!(value(&text, &format!("switchyard_endpoint_ejected{labels}")), Some(0.0));
        // The capacity the balancer learnt: an LLM engine prefills one prompt at a time.
        assert_eq!(value(&text, &format!("switchyard_endpoint_slots{labels}")), Some(1.0), "{text}");
        assert!(
            value(&text, &format!("switchyard_endpoint_idle_unit_time_seconds{labels}"))
                .is_some_and(|v| v > 0.0),
            "{text}"
        );
        // From the balancer's observer, told once per request.
        let observed = format!(
            r#"switchyard_endpoint_duration_seconds_count{{pool="default",endpoint="{}",outcome="ok"}}"#,
            w.addr
        );
        assert_eq!(value(&text, &observed), Some(3.0), "{text}");
        let first_byte = format!("switchyard_endpoint_time_to_first_byte_seconds_count{labels}");
        assert_eq!(value(&text, &first_byte), Some(3.0), "{text}");
    }
    assert_eq!(
        value(&text, r#"switchyard_pool_policy_info{pool="default",policy="round-robin"}"#),
        Some(1.0)
    );
    let served = r#"rpc_server_duration_seconds_count{rpc_system="grpc",rpc_service="inference.GRPCInferenceService",rpc_method="ModelInfer",rpc_grpc_status_code="0"}"#;
    assert_eq!(value(&text, served), Some(6.0), "{text}");

    // A switch of policy shows at the next scrape.
    let policy = PolicyKind::LeastConnections.spec();
    gateway.pools()[0].set_policy(&policy).unwrap();
    let (_, text) = get(admin, "/metrics").await;
    assert_eq!(
        value(&text, r#"switchyard_pool_policy_info{pool="default",policy="least-connections"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"switchyard_pool_policy_info{pool="default",policy="round-robin"}"#),
        Some(0.0)
    );

    for w in [&a, &b] {
        let (status, text) = get(w.metrics, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        promtool_check("worker", &text).await;
        assert_eq!(value(&text, served), Some(3.0), "{text}");
        assert_eq!(value(&text, "switchyard_replica_queue_depth"), Some(0.0), "{text}");
    }
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_prometheus_server_scrapes_the_per_endpoint_series_from_the_gateway() {
    let (a, b) = (Worker::start().await, Worker::start().await);
    let gateway = gateway(&[&a, &b]).await;
    traffic(&gateway, 4).await;

    let mut server = Prometheus::start("switchyard-gateway", &[gateway.admin_addr().unwrap()]).await;
    let web = server.web;
    let result = server
        .until_result("switchyard_endpoint_picks_total", |r| r.as_array().is_some_and(|r| r.len() == 2))
        .await;
    let mut seen: Vec<(String, String, f64)> = result
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["pool"].as_str().unwrap().to_string(),
                r["metric"]["endpoint"].as_str().unwrap().to_string(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    seen.sort_by(|x, y| x.1.cmp(&y.1));
    let mut expected = vec![
        ("default".to_string(), a.addr.to_string(), 2.0),
        ("default".to_string(), b.addr.to_string(), 2.0),
    ];
    expected.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(seen, expected);

    // Every query of the Grafana dashboard parses and runs on this Prometheus, and every series it
    // reads is one the gateway or a worker serves.
    let (_, gateway_text) = get(gateway.admin_addr().unwrap(), "/metrics").await;
    let (_, worker_text) = get(a.metrics, "/metrics").await;
    let served = |name: &str| {
        [&gateway_text, &worker_text].iter().any(|text| {
            text.lines().any(|l| {
                let series = l.split(['{', ' ']).next().unwrap_or_default();
                series == name
                    || series
                        .strip_prefix(name)
                        .is_some_and(|rest| ["_bucket", "_count", "_sum"].contains(&rest))
            })
        })
    };
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/switchyard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if ["switchyard_", "rpc_server_", "rpc_client_"].iter().any(|p| word.starts_with(p)) {
                    let name = word.trim_end_matches("_bucket").trim_end_matches("_count");
                    // The overload series need pool layers this gateway has not: tests/telemetry_overload.rs
                    // checks that a gateway with them serves every one the dashboard reads.
                    // The autoscaler's are its own process's: tests/autoscale_cli.rs checks them.
                    let overload = [
                        "switchyard_autoscale_",
                        "switchyard_shed_",
                        "switchyard_pool_limit_",
                        "switchyard_pool_concurrency_limit",
                        "switchyard_endpoint_concurrency_limit",
                    ]
                    .iter()
                    .any(|p| name.starts_with(p));
                    assert!(
                        overload || served(name),
                        "the dashboard reads {name}, which nothing serves ({expr})"
                    );
                }
            }
            let expr = expr
                .replace("$gateway_job", "switchyard-gateway")
                .replace("$worker_job", "switchyard-worker")
                .replace("$autoscaler_job", "switchyard-autoscaler")
                .replace("$pool", ".*")
                .replace("$__rate_interval", "1m");
            let encoded = encode(&expr);
            let (status, body) = get(web, &format!("/api/v1/query?query={encoded}")).await;
            assert_eq!(status, 200, "the dashboard's query {expr:?} fails on Prometheus: {body}");
            queries += 1;
        }
    }
    assert!(queries >= 15, "{queries} queries");
    server.stop().await;
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_otel_variable_is_a_warning_naming_it_and_the_worker_still_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["worker", "--listen", "127.0.0.1:0", "--speed", "20"])
        .env("OTEL_TRACES_SAMPLER", "sometimes")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector-without-scheme:4317")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut before = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the worker logs within 30 s")
            .unwrap()
            .unwrap_or_else(|| panic!("the worker exited: {before:#?}"));
        if let Some((_, rest)) = line.split_once("worker serving on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        before.push(line);
    };
    for name in
        ["OTEL_TRACES_SAMPLER=\"sometimes\"", "OTEL_EXPORTER_OTLP_ENDPOINT=\"collector-without-scheme:4317\""]
    {
        assert!(
            before.iter().any(|l| l.contains("WARN") && l.contains(name)),
            "a warning naming {name}: {before:#?}"
        );
    }
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
    client.model_infer(worker::request::text_request("sim-llm", "Still serving?", 2)).await.unwrap();
    child.kill().await.unwrap();
}

/// The workers' prompt-token counters, as `switchyard cluster` reads them: a prompt sent twice
/// to one worker is found in its prefix cache the second time (hit rate > 0), and a worker that
/// saw one fresh prompt has a hit rate of 0.
#[tokio::test]
async fn the_cluster_reads_each_workers_prefix_hit_rate_from_its_metrics() {
    use switchyard::cluster::{PromptTokens, prompt_tokens_from_metrics};
    let (repeated, fresh) = (Worker::start().await, Worker::start().await);
    // Four 512-token blocks of text (4 bytes a token) and a few bytes more.
    let prompt: String = (0..8300).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for worker in [&repeated, &repeated, &fresh] {
        let mut client =
            GrpcInferenceServiceClient::connect(format!("http://{}", worker.addr)).await.unwrap();
        client.model_infer(worker::request::text_request("sim-llm", &prompt, 4)).await.unwrap();
    }
    let read = |text: &str| prompt_tokens_from_metrics(text).expect("the worker exports its prompt tokens");
    let (status, text) = get(repeated.metrics, "/metrics").await;
    assert_eq!(status, 200);
    let tokens = read(&text);
    // 8300 bytes are 2075 tokens; the second time, its four full blocks were cached.
    assert_eq!(tokens, PromptTokens { prompt: 2 * 2075, cached: 4 * 512 }, "{text}");
    assert!(tokens.hit_rate() > 0.0);
    let (_, text) = get(fresh.metrics, "/metrics").await;
    let tokens = read(&text);
    assert_eq!(tokens, PromptTokens { prompt: 2075, cached: 0 }, "{text}");
    assert_eq!(tokens.hit_rate(), 0.0);
    promtool_check("worker", &text).await;
}
