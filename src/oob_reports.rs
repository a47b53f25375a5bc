//! Out-of-band load reports on the client side: a balancer subscribes to every endpoint's ORCA
//! `OpenRcaService` and records each report it streams, off the request path.
//!
//! A response's trailer tells the balancer that sent the request how loaded the replica was when
//! it answered. Where several balancers share the replicas (gateway replicas, or one balancer in
//! each client process), each hears from a replica only in the answers to its own requests: 1/K
//! of them with K balancers, often seconds apart. Out of band, each balancer hears from every
//! replica at an interval it chooses, and the [`LoadReport`](switchyard_balance::policy::LoadReport)
//! policy counts what other balancers sent there between its own answers. Lab `herd` measures
//! the difference (`reports/lab/herd.md`).
//!
//! [`OobReports::spawn`] follows the balancer's [`LoadBoard`]: every [`RESYNC`] it opens a
//! stream to each endpoint that has none (a lazily connected channel to the endpoint's
//! address) and ends the streams of endpoints that left the board. Each report is recorded on
//! the endpoint as if it had come in a trailer
//! ([`EndpointState::record_report`](switchyard_balance::EndpointState::record_report)), with
//! what the balancer itself had on the endpoint at that moment, so nothing is counted twice. A
//! stream that fails is opened again after [`RETRY`]; an endpoint that does not serve the
//! service (`UNIMPLEMENTED`) is asked again only after [`UNSUPPORTED_RETRY`]. Dropping the
//! handle ends every stream.
//!
//! ```no_run
//! # async fn run() {
//! use std::time::Duration;
//! use switchyard::oob_reports::OobReports;
//! use switchyard_balance::Balance;
//! use switchyard_core::Endpoint;
//! use tonic::transport::Channel;
//!
//! let endpoints = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"];
//! let backends = endpoints.iter().enumerate().map(|(i, address)| {
//!     let channel = Channel::from_static(address).connect_lazy();
//!     switchyard_balance::Backend::new(Endpoint::new(format!("replica-{i}"), *address), channel)
//! });
//! let balancer: Balance<Channel, http::Request<tonic::body::Body>> = Balance::from_backends(backends);
//! // Every replica's load every 20 ms, for as long as `reports` lives.
//! let reports = OobReports::spawn(balancer.board(), Duration::from_millis(20));
//! # drop((balancer, reports));
//! # }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use switchyard_balance::LoadBoard;
use switchyard_core::{EndpointId, ReportedLoad};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::proto::orca_service::OrcaLoadReportRequest;
use crate::proto::orca_service::open_rca_service_client::OpenRcaServiceClient;

/// The shortest interval a replica serves ([`crate::worker::oob::MIN_INTERVAL`]).
pub const MIN_INTERVAL: Duration = crate::worker::oob::MIN_INTERVAL;
/// How often the board is read for endpoints that came or went.
pub const RESYNC: Duration = Duration::from_millis(500);
/// How long after a failed stream it is opened again.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long after an endpoint answered `UNIMPLEMENTED` it is asked again.
pub const UNSUPPORTED_RETRY: Duration = Duration::from_secs(60);

/// The subscriptions of one balancer; dropping it ends them.
#[derive(Debug)]
pub struct OobReports {
    task: JoinHandle<()>,
}

impl OobReports {
    /// Subscribes to every endpoint on `board`, now and as they come, asking each for its load
    /// every `interval` (held to at least [`MIN_INTERVAL`]). Needs a Tokio runtime.
    pub fn spawn(board: LoadBoard, interval: Duration) -> Self {
        Self::spawn_with_tls(board, interval, None)
    }

    /// [`spawn`](Self::spawn), connecting to the endpoints over TLS with `tls` when given (their
    /// addresses are then taken as `https://`, whatever their scheme), as a gateway pool with
    /// `tls` reaches its replicas.
    pub fn spawn_with_tls(board: LoadBoard, interval: Duration, tls: Option<ClientTlsConfig>) -> Self {
        Self { task: tokio::spawn(follow(board, interval.max(MIN_INTERVAL), tls)) }
    }
}

impl Drop for OobReports {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps one subscription per endpoint on the board. The subscriptions are tasks of a `JoinSet`
/// held here, so they end when this task is aborted.
async fn follow(board: LoadBoard, interval: Duration, tls: Option<ClientTlsConfig>) {
    let mut tasks = JoinSet::new();
    let mut streams: HashMap<EndpointId, (String, AbortHandle)> = HashMap::new();
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        resync.tick().await;
        while tasks.try_join_next().is_some() {}
        let members = board.snapshot();
        streams.retain(|id, (address, task)| {
            let kept = members.iter().any(|m| &m.endpoint.id == id && &m.endpoint.address == address);
            if !kept {
                task.abort();
            }
            kept
        });
        for member in members {
            let endpoint = member.endpoint;
            if streams.contains_key(&endpoint.id) {
                continue;
            }
            let task = tasks.spawn(subscribe(
                board.clone(),
                endpoint.id.clone(),
                endpoint.address.clone(),
                interval,
                tls.clone(),
            ));
            streams.insert(endpoint.id, (endpoint.address, task));
        }
    }
}

/// One endpoint's stream, opened again after a failure, until the endpoint leaves the board.
async fn subscribe(
    board: LoadBoard,
    id: EndpointId,
    address: String,
    interval: Duration,
    tls: Option<ClientTlsConfig>,
) {
    let uri = crate::loadgen::target_uri(&address);
    // tonic speaks TLS to `https://` addresses only.
    let channel = match &tls {
        None => Channel::from_shared(uri).map_err(|e| e.to_string()),
        Some(tls) => {
            let uri = uri.strip_prefix("http://").map_or(uri.clone(), |rest| format!("https://{rest}"));
            Channel::from_shared(uri)
                .map_err(|e| e.to_string())
                .and_then(|endpoint| endpoint.tls_config(tls.clone()).map_err(|e| e.to_string()))
        }
    };
    let channel = match channel {
        Ok(endpoint) => endpoint.tcp_nodelay(true).connect_lazy(),
        Err(e) => {
            tracing::warn!(endpoint = %id, %address, "no out-of-band load reports: bad address: {e}");
            return;
        }
    };
    let mut client = OpenRcaServiceClient::new(channel);
    let request = OrcaLoadReportRequest {
        report_interval: prost_types::Duration::try_from(interval).ok(),
        request_cost_names: Vec::new(),
    };
    loop {
        let wait = match client.stream_core_metrics(request.clone()).await {
            Ok(response) => {
                let mut reports = response.into_inner();
                while let Some(next) = reports.next().await {
                    let Ok(report) = next else { break };
                    let Some(state) = board.state(&id) else { return };
                    state.record_report(ReportedLoad::from(report), Instant::now());
                }
                RETRY
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(endpoint = %id, "the endpoint serves no out-of-band load reports");
                UNSUPPORTED_RETRY
            }
            Err(status) => {
                tracing::debug!(endpoint = %id, "out-of-band load reports: {status}");
                RETRY
            }
        };
        if board.state(&id).is_none() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}
