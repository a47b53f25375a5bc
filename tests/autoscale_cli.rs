#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `switchyard autoscale` as an operator runs it: bad flags are clear errors naming the flag, and
//! against a real Prometheus (Debian's `prometheus` package; `scripts/install-test-deps.sh`
//! installs it) scraping a real gateway, a dry run decides, logs and exports its decisions, and
//! stops on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::BIN;
use common::prometheus::{Prometheus, get};
use common::worker::Worker;
use switchyard::balance::PolicyKind;
use switchyard::gateway::{Gateway, GatewayConfig, GatewayTelemetry};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_telemetry::MetricsRegistry;
use tokio::net::TcpListener;
use tokio::process::Command;

/// Runs `switchyard autoscale ARGS` to its end; its exit status and stderr.
async fn autoscale(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(BIN).arg("autoscale").args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("a bad flag ends the command at once")
    .unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn bad_flags_are_errors_naming_the_flag() {
    let (status, stderr) = autoscale(&["--prometheus", "https://prometheus:9090", "--dry-run"]).await;
    assert!(!status.success());
    assert!(stderr.contains("--prometheus") && stderr.contains("only http://"), "{stderr}");

    let (status, stderr) = autoscale(&["--prometheus", "prometheus:9090", "--dry-run"]).await;
    assert!(!status.success());
    assert!(stderr.contains("--prometheus") && stderr.contains("prometheus:9090"), "{stderr}");

    let (status, stderr) = autoscale(&["--prometheus", "http://127.0.0.1:9"]).await;
    assert!(!status.success());
    assert!(stderr.contains("--deployment NAME or --statefulset NAME"), "{stderr}");

    let args =
        ["--prometheus", "http://127.0.0.1:9", "--dry-run", "--min-replicas", "5", "--max-replicas", "2"];
    let (status, stderr) = autoscale(&args).await;
    assert!(!status.success());
    assert!(stderr.contains("--min-replicas: 5 is above --max-replicas 2"), "{stderr}");

    let (status, stderr) =
        autoscale(&["--prometheus", "http://127.0.0.1:9", "--dry-run", "--interval", "soon"]).await;
    assert!(!status.success());
    assert!(stderr.contains("--interval"), "{stderr}");

    let (status, stderr) =
        autoscale(&["--prometheus", "http://127.0.0.1:9", "--deployment", "w", "--dry-run"]).await;
    assert!(!status.success());
    assert!(stderr.contains("--deployment") && stderr.contains("--dry-run"), "{stderr}");
}

/// An in-process worker with the default arguments.
async fn worker() -> Worker {
    common::worker::in_process(WorkerArgs::default()).await
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls `/metrics` on `metrics` until `series` has a value `accept` takes (at most `within`);
/// the exposition then.
async fn until_metric(
    metrics: SocketAddr,
    series: &str,
    accept: impl Fn(f64) -> bool,
    within: Duration,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, text) = get(metrics, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        if value(&text, series).is_some_and(&accept) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} not as wanted within {within:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await; // polling the exported state
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_against_prometheus_scales_an_idle_pool_down_and_exports_its_decisions() {
    let (a, b) = (worker().await, worker().await);
    let backends = [format!("http://{}", a.addr), format!("http://{}", b.addr)];
    let config = GatewayConfig::single_pool(&backends, PolicyKind::RoundRobin).unwrap();
    let telemetry = GatewayTelemetry::new(MetricsRegistry::new(), true, false);
    let gateway = Gateway::start_with_telemetry(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        telemetry,
    )
    .unwrap();
    // Answers sent with nothing ahead: the gateway learns each replica's capacity.
    let mut client =
        GrpcInferenceServiceClient::connect(format!("http://{}", gateway.local_addr())).await.unwrap();
    for i in 0..4 {
        let request = worker::request::text_request("sim-llm", &format!("Hi {i}."), 1);
        client.model_infer(request).await.unwrap();
    }
    let prometheus = Prometheus::start("switchyard-gateway", &[gateway.admin_addr().unwrap()]).await;
    prometheus
        .until_result("switchyard_endpoint_idle_unit_time_seconds", |r| {
            r.as_array().is_some_and(|r| r.len() == 2)
        })
        .await;

    // Four replicas for an idle pool: down to what the window fits once a two-second window is
    // idle.
    let url = prometheus.url();
    let (mut child, metrics) = common::spawn_until(
        &[
            "autoscale",
            "--prometheus",
            &url,
            "--dry-run",
            "--replicas",
            "4",
            "--interval",
            "500ms",
            "--rate-window",
            "5s",
            "--scale-down-window",
            "2s",
            "--scale-down-step",
            "1s",
            "--vertical",
            "recommend",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "metrics serving on ",
    )
    .await;
    let metrics: SocketAddr = metrics.parse().unwrap();
    let desired = r#"switchyard_autoscale_desired_replicas{recommender="switchyard"}"#;
    let text = until_metric(metrics, desired, |d| d <= 2.0, Duration::from_secs(60)).await;
    let downs = r#"switchyard_autoscale_scale_events_total{recommender="switchyard",direction="down"}"#;
    assert!(value(&text, downs).is_some_and(|n| n >= 1.0), "{text}");
    assert!(
        value(&text, r#"switchyard_autoscale_ready_replicas{recommender="switchyard"}"#).is_some(),
        "{text}"
    );
    // The vertical recommendation for an idle replica: the base requests.
    assert!(
        value(&text, r#"switchyard_autoscale_recommended_cpu_millicores{recommender="switchyard"}"#)
            .is_some(),
        "{text}"
    );

    // A baseline chosen with --recommender decides at its own interval from the same signals:
    // Knative's KPA halves an idle pool of four at its first 2 s tick (max scale-down rate 2).
    let (kpa, kpa_metrics) = common::spawn_until(
        &[
            "autoscale",
            "--prometheus",
            &url,
            "--dry-run",
            "--replicas",
            "4",
            "--recommender",
            "kpa",
            "--target-in-flight",
            "8",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "metrics serving on ",
    )
    .await;
    let kpa_metrics: SocketAddr = kpa_metrics.parse().unwrap();
    let kpa_desired = r#"switchyard_autoscale_desired_replicas{recommender="kpa"}"#;
    let kpa_text = until_metric(kpa_metrics, kpa_desired, |_| true, Duration::from_secs(30)).await;
    assert_eq!(value(&kpa_text, kpa_desired), Some(2.0), "the KPA halves at most a decision\n{kpa_text}");
    common::sigterm(&kpa);

    // Every autoscaler series the Grafana dashboard reads is one it serves.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/switchyard.json"))
            .unwrap();
    let read: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_autoscale_"))
        .collect();
    assert!(read.len() >= 4, "{read:?}");
    for name in read {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{"))),
            "the dashboard reads {name}, not served\n{text}"
        );
    }

    common::sigterm(&child);
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("it stops").unwrap();
    assert!(status.success(), "{status:?}");
    gateway.shutdown().await.unwrap();
}
