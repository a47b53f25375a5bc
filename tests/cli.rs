//! The `switchyard` binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use switchyard::cluster::ClusterReport;
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::sim::TraceRecord;
use switchyard_core::PrefixBlocks;
use tokio::process::Command;

mod common;

use common::BIN;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn worker_drains_in_flight_requests_on_sigterm_and_exits_zero() {
    let (mut child, addr) =
        common::spawn_until(&["worker", "--listen", "127.0.0.1:0"], "worker serving on ").await;

    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut probe = client.clone();
    // About a second of generation at real speed: long enough to send SIGTERM under it.
    let record = TraceRecord {
        at: Duration::ZERO,
        prompt_tokens: 100,
        output_tokens: 150,
        prefix: PrefixBlocks::default(),
    };
    let request = switchyard::loadgen::infer_request("sim-llm", 1, &record);
    let in_flight = tokio::spawn(async move { client.model_infer(request).await });
    common::until_engine_runs(&mut probe, 1).await;
    common::sigterm(&child);

    let response = in_flight.await.unwrap().expect("the in-flight request completes during the drain");
    assert_eq!(response.into_inner().outputs.len(), 1);
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("worker exits").unwrap();
    assert!(status.success(), "{status:?}");
}

/// Runs `switchyard cluster` with a fixed pool of four for three seconds into a scratch folder
/// and checks its report (the autoscaled default: `tests/cluster_autoscale.rs`).
async fn cluster_runs_end_to_end(name: &str, extra: &[&str]) -> ClusterReport {
    let dir = scratch(name);
    let output = Command::new(BIN)
        .args(["cluster", "--fixed", "4", "--duration", "3", "--out"])
        .arg(&dir)
        .args(extra)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let scrape =
        stderr.lines().find(|l| l.contains("cluster: metrics at ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        scrape.contains("worker-3 http://127.0.0.1:") && scrape.matches("/metrics").count() >= 4,
        "{scrape}"
    );
    assert!(
        stdout.contains("ttft ms") && stdout.contains("latency ms") && stdout.contains("worker-3"),
        "{stdout}"
    );
    let report: ClusterReport =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).unwrap()).unwrap();
    let loadgen = &report.loadgen;
    assert!(loadgen.requests > 0, "{loadgen:?}");
    assert_eq!(loadgen.ok, loadgen.requests, "{loadgen:?}");
    assert!(loadgen.ttft_ms.p50 > 0.0 && loadgen.ttft_ms.p50 <= loadgen.latency_ms.p50, "{loadgen:?}");
    assert_eq!(report.replicas.len(), 4);
    assert_eq!(report.replicas[3].speed, 0.333);
    let shares: f64 = report.replicas.iter().map(|r| r.share).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{:?}", report.replicas);
    let completed: u64 = report.replicas.iter().map(|r| r.completed).sum();
    assert_eq!(completed, loadgen.ok, "{:?}", report.replicas);
    // Every worker's prompt tokens were read from its /metrics.
    let prompt: u64 = report.replicas.iter().map(|r| r.prompt_tokens).sum();
    assert!(prompt > 0 && (0.0..=1.0).contains(&report.prefix_hit_rate), "{:?}", report.replicas);
    for plot in ["latency.png", "shares.png", "hit_rate.png"] {
        let bytes = std::fs::read(dir.join(plot)).unwrap();
        assert!(bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{plot}");
    }
    report
}

#[tokio::test]
async fn cluster_runs_through_the_gateway_and_reports_each_replicas_share() {
    let report = cluster_runs_end_to_end("cluster", &[]).await;
    assert_eq!(report.setup.policy.as_deref(), Some("load-report"));
    assert_eq!(report.shares_from, "gateway /metrics");
}

#[tokio::test]
async fn cluster_without_gateway_drives_the_first_worker() {
    let report = cluster_runs_end_to_end("cluster-no-gateway", &["--no-gateway"]).await;
    assert_eq!(report.setup.policy, None);
    assert_eq!(report.replicas[0].share, 1.0);
}

#[tokio::test]
async fn cluster_refuses_an_unknown_policy_by_name() {
    let output = Command::new(BIN).args(["cluster", "--policy", "fastest"]).output().await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--policy") && stderr.contains("least-response-time"), "{stderr}");
}

#[tokio::test]
async fn a_malformed_trace_is_refused_with_its_line() {
    let dir = scratch("bad-trace");
    let trace = dir.join("bad.jsonl");
    std::fs::write(
        &trace,
        "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": []}\n{\"timestamp\": 5, \"input_length\": -1}\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["loadgen", "--target", "127.0.0.1:1", "--trace"])
        .arg(&trace)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[tokio::test]
async fn loadgen_with_no_success_prints_n_a_and_exits_non_zero() {
    let (_worker, addr) =
        common::spawn_until(&["worker", "--listen", "127.0.0.1:0"], "worker serving on ").await;
    let output = Command::new(BIN)
        .args([
            "loadgen",
            "--target",
            &addr,
            "--model",
            "no-such-model",
            "--pattern",
            "poisson:20",
            "--duration",
            "0.5",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    let ttft = stdout.lines().find(|l| l.starts_with("ttft ms")).expect("a ttft row");
    assert!(ttft.contains("n/a") && !ttft.contains("0.0"), "{stdout}");
    assert!(stderr.contains("error: no request succeeded") && stderr.contains("NOT_FOUND="), "{stderr}");
}

#[tokio::test]
async fn listen_flags_resolve_host_names_and_refuse_ports_out_of_range() {
    let (_worker, worker_addr) =
        common::spawn_until(&["worker", "--listen", "localhost:0"], "worker serving on ").await;
    let ip: std::net::SocketAddr = worker_addr.parse().unwrap();
    assert!(ip.ip().is_loopback(), "{worker_addr}");
    let (_gateway, gateway_addr) = common::spawn_until(
        &["gateway", "--listen", "localhost:0", "--admin", "localhost:0", "--backend", &worker_addr],
        "gateway serving on ",
    )
    .await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{gateway_addr}")).await.unwrap();
    client.server_live(switchyard::proto::inference::ServerLiveRequest {}).await.unwrap();

    for (args, flag) in [
        (&["worker", "--listen", "127.0.0.1:99999"][..], "--listen"),
        (&["gateway", "--listen", "127.0.0.1:99999", "--backend", "127.0.0.1:9001"][..], "--listen"),
        (&["gateway", "--admin", "127.0.0.1:99999", "--backend", "127.0.0.1:9001"][..], "--admin"),
        (&["gateway", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:99999"][..], "--backend"),
    ] {
        let output = Command::new(BIN).args(args).kill_on_drop(true).output().await.unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag) && stderr.contains("port 99999 is out of range"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn cluster_writes_by_default_where_git_ignores_it() {
    use switchyard::cluster::{ClusterArgs, DEFAULT_OUT};
    assert_eq!(ClusterArgs::default().out, std::path::Path::new(DEFAULT_OUT));
    let help = Command::new(BIN).args(["cluster", "--help"]).output().await.unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains(&format!("[default: {DEFAULT_OUT}]")), "{help}");
    // What a run writes there leaves `git status` clean.
    let repo = env!("CARGO_MANIFEST_DIR");
    for file in ["cluster.json", "latency.png", "shares.png"] {
        let path = format!("{DEFAULT_OUT}/{file}");
        let status = Command::new("git").args(["check-ignore", "-q", &path]).current_dir(repo).status().await;
        match status.map(|s| s.code()) {
            Ok(Some(0)) => {}
            Ok(Some(128)) | Err(_) => {
                eprintln!("not a git work tree (or no git): cannot check {path}");
                return;
            }
            other => panic!("{path} is not ignored by git: {other:?}"),
        }
    }
    // And the committed report is not.
    let status = Command::new("git")
        .args(["check-ignore", "-q", "reports/cluster/cluster.json"])
        .current_dir(repo)
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "reports/cluster must stay tracked");
}

/// Runs `switchyard infer ARGS` and returns its stdout; it must succeed.
async fn infer_output(args: &[&str]) -> String {
    let output = Command::new(BIN).arg("infer").args(args).kill_on_drop(true).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line: {stdout}"))
}

#[tokio::test]
async fn infer_prints_the_answer_ttft_and_decoded_load_report_from_a_worker_and_through_the_gateway() {
    let (_worker, worker_addr) =
        common::spawn_until(&["worker", "--listen", "127.0.0.1:0", "--speed", "20"], "worker serving on ")
            .await;
    let (_gateway, gateway_addr) = common::spawn_until(
        &["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--backend", &worker_addr],
        "gateway serving on ",
    )
    .await;
    for target in [&worker_addr, &gateway_addr] {
        for stream in [false, true] {
            let mut args = vec!["--target", target.as_str(), "--model", "sim-llm", "--max-tokens", "5"];
            if stream {
                args.push("--stream");
            }
            args.push("Why is the sky blue?");
            let stdout = infer_output(&args).await;
            let answer = line(&stdout, "answer: ");
            assert_eq!(answer.split_whitespace().count(), 6, "{target} stream {stream}: {stdout}");
            let ttft = line(&stdout, "ttft: ");
            assert!(ttft.ends_with(" ms") || ttft.ends_with("(reported by the server)"), "{stdout}");
            assert_eq!(ttft.contains("reported by the server"), !stream, "{stdout}");
            let load = line(&stdout, "load report: ");
            assert!(
                load.contains("queue_depth 0")
                    && load.contains("capacity 256")
                    && load.contains("prefix_hit_rate"),
                "{target} stream {stream}: {stdout}"
            );
            let responses = if stream { "(5 responses)" } else { "(1 response)" };
            assert!(line(&stdout, "latency: ").ends_with(responses), "{stdout}");
        }
    }
    // An unknown model is an error that names it, and a non-zero exit.
    let output = Command::new(BIN)
        .args(["infer", "--target", &worker_addr, "--model", "gpt-17", "hi"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NOT_FOUND") && stderr.contains("gpt-17"), "{stderr}");
}

#[tokio::test]
async fn gateway_and_cluster_help_list_every_policy() {
    for command in ["gateway", "cluster"] {
        let output = Command::new(BIN).args([command, "--help"]).output().await.unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        for kind in switchyard::balance::PolicyKind::ALL {
            assert!(help.contains(kind.name()), "{command} --help lacks {}: {help}", kind.name());
        }
    }
}
