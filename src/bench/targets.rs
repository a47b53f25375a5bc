//! The balancer comparison both `hetero` benches run: the same load through the gateway with each
//! built-in policy, then through nginx and HAProxy with round robin and least connections, over
//! one set of workers.

use std::path::Path;
use std::time::Duration;

use switchyard_balance::PolicyKind;

use super::hetero::HeteroResult;
use super::peers::{self, PeerBalance, PeerKind};
use super::processes::ChildProcess;
use super::{BenchArgs, BenchError, START_TIMEOUT};

/// Runs `replay(target, address)` against each target in turn, every one over the workers at
/// `addresses`, and stops `workers` at the end. A target is named `switchyard:POLICY` or
/// `PROGRAM:BALANCE`.
pub(super) async fn compare_balancers<F>(
    exe: &Path,
    args: &BenchArgs,
    workers: Vec<(ChildProcess, String)>,
    peer_programs: (&Path, &Path),
    dir: &Path,
    mut replay: F,
) -> Result<Vec<HeteroResult>, BenchError>
where
    F: AsyncFnMut(&str, &str) -> Result<HeteroResult, BenchError>,
{
    let addresses: Vec<String> = workers.iter().map(|(_, a)| a.clone()).collect();
    let mut results = Vec::new();
    for policy in PolicyKind::ALL {
        let gateway_args = super::gateway_args(&addresses, policy, args.proxy_threads());
        let phrases = ["gateway serving on ", "admin serving on "];
        let (gateway, logged) =
            ChildProcess::start("gateway", exe, &gateway_args, &phrases, START_TIMEOUT).await?;
        let target = format!("switchyard:{}", policy.name());
        results.push(replay(&target, &logged[0]).await?);
        print_learnt(&target, &logged[1]).await;
        if let Err(e) = gateway.stop(Duration::from_secs(20)).await {
            eprintln!("bench: warning: {e}");
        }
    }
    let (nginx_exe, haproxy_exe) = peer_programs;
    let peers_to_run = [
        (PeerKind::Nginx, nginx_exe, PeerBalance::RoundRobin, "round-robin"),
        (PeerKind::Nginx, nginx_exe, PeerBalance::LeastConn, "least_conn"),
        (PeerKind::Haproxy, haproxy_exe, PeerBalance::RoundRobin, "roundrobin"),
        (PeerKind::Haproxy, haproxy_exe, PeerBalance::LeastConn, "leastconn"),
    ];
    for (kind, program, balance, label) in peers_to_run {
        let peer_dir = dir.join(format!("{}-{label}", kind.program()));
        std::fs::create_dir_all(&peer_dir)
            .map_err(|e| BenchError::Io(format!("create {}", peer_dir.display()), e))?;
        let peer = peers::start(kind, program, balance, args.proxy_threads(), &addresses, &peer_dir).await?;
        let target = format!("{}:{label}", kind.program());
        results.push(replay(&target, &peer.address).await?);
        peer.stop().await;
    }
    super::stop_children(workers.into_iter().map(|(child, _)| child)).await;
    Ok(results)
}

/// Prints what the gateway learnt of each endpoint by the end of a run (its slots and no-load
/// time per unit of work) and the requests each endpoint ended, from the admin API's `/metrics`
/// on `admin`: for reading a run, not part of its report.
async fn print_learnt(target: &str, admin: &str) {
    const SHOWN: [&str; 3] = [
        "switchyard_endpoint_slots",
        "switchyard_endpoint_idle_unit_time_seconds",
        "switchyard_endpoint_requests",
    ];
    match crate::cluster::fetch_metrics(admin).await {
        Ok(text) => {
            for line in text.lines().filter(|l| SHOWN.iter().any(|name| l.starts_with(name))) {
                eprintln!("bench: {target}: {line}");
            }
        }
        Err(e) => eprintln!("bench: {target}: no metrics from the admin API on {admin}: {e}"),
    }
}
