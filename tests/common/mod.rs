//! Helpers shared by the integration tests that run the `switchyard` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod gateway;
pub(crate) mod prometheus;
pub(crate) mod raw_h2;
pub(crate) mod worker;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Runs `switchyard ARGS`, waits for its log line containing `phrase` (`"worker serving on "`),
/// and returns the child and the address that follows the phrase. The rest of its stderr is
/// drained in the background.
pub(crate) async fn spawn_until(args: &[&str], phrase: &str) -> (Child, String) {
    let (child, mut addrs) = spawn_until_all(args, &[phrase]).await;
    (child, addrs.remove(0))
}

/// Runs `switchyard ARGS` and waits until its log has had a line containing each of `phrases`
/// (`"gateway serving on "`, `"admin serving on "`), in any order; returns the child and the
/// address that follows each phrase, in the order of `phrases`. The rest of its stderr is drained
/// in the background.
pub(crate) async fn spawn_until_all(args: &[&str], phrases: &[&str]) -> (Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "info".into()))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addrs: Vec<Option<String>> = vec![None; phrases.len()];
    while addrs.iter().any(Option::is_none) {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {phrases:?} lines within 30 s"))
            .unwrap()
            .expect("stderr open");
        for (phrase, addr) in phrases.iter().zip(&mut addrs) {
            if let Some((_, rest)) = line.split_once(phrase) {
                *addr = Some(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    }
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if std::env::var_os("GATEWAY_LOG").is_some() {
                eprintln!("{line}");
            }
        }
    });
    (child, addrs.into_iter().flatten().collect())
}

/// Sends SIGTERM to `child`.
pub(crate) fn sigterm(child: &Child) {
    let pid = child.id().expect("the child is running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

/// Waits until the worker behind `client` reports `running` requests in its batch (the ORCA
/// report on a `ServerLive` answer); panics after 10 s.
pub(crate) async fn until_engine_runs(
    client: &mut switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<
        tonic::transport::Channel,
    >,
    running: u32,
) {
    use switchyard::proto::inference::ServerLiveRequest;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = client.server_live(ServerLiveRequest {}).await.unwrap();
        let value = response.metadata().get_bin(switchyard_core::orca::TRAILER_NAME).expect("a load report");
        let load = switchyard_core::orca::decode(&value.to_bytes().unwrap()).unwrap();
        if load.running == running {
            return;
        }
        assert!(tokio::time::Instant::now() < give_up, "the worker still runs {} requests", load.running);
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval
    }
}
