//! ORCA out-of-band load reports: the worker's `xds.service.orca.v3.OpenRcaService`.
//!
//! A response's trailer carries the replica's load to the balancer that sent the request, so a
//! balancer hears from a replica only as often as it gets answers from it: with K balancers
//! over one fleet, each hears 1/K of the reports, seconds apart, while a prefill backlog moves
//! within tens of milliseconds (lab `herd`, `reports/lab/herd.md`). Out of band, every balancer
//! subscribes to every replica (`StreamCoreMetrics`) and gets its load at the interval it asks
//! for, whatever it sends it: the same report as the trailer's
//! ([`EngineHandle::reported_load`]), ORCA-encoded.
//!
//! The interval asked for is held to at least [`MIN_INTERVAL`]; none (or zero) means
//! [`DEFAULT_INTERVAL`]. Each report is read when the stream is ready for it (the stream is
//! pulled, so a slow subscriber gets fewer reports, never a backlog of old ones), and the
//! streams end when the worker drains.

use std::pin::Pin;
use std::time::Duration;

use switchyard_core::orca::OrcaLoadReport;
use switchyard_sim::EngineHandle;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tonic::{Request, Response, Status};

use crate::proto::orca_service::OrcaLoadReportRequest;
use crate::proto::orca_service::open_rca_service_server::OpenRcaService;
pub use crate::proto::orca_service::open_rca_service_server::OpenRcaServiceServer;

/// The shortest interval served: 10 ms.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The interval when the request asks for none: 1 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The `OpenRcaService` of one engine.
#[derive(Debug, Clone)]
pub struct OobReportService {
    engine: EngineHandle,
    stop: watch::Receiver<bool>,
}

impl OobReportService {
    /// The service of `engine`; open streams end when `stop` turns true (the worker drains).
    pub fn new(engine: EngineHandle, stop: watch::Receiver<bool>) -> Self {
        Self { engine, stop }
    }
}

/// The interval a request asks for, as served.
pub fn served_interval(request: &OrcaLoadReportRequest) -> Duration {
    request
        .report_interval
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INTERVAL)
        .max(MIN_INTERVAL)
}

type Reports = Pin<Box<dyn futures::Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

#[tonic::async_trait]
impl OpenRcaService for OobReportService {
    type StreamCoreMetricsStream = Reports;

    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<Reports>, Status> {
        let mut ticks = tokio::time::interval(served_interval(request.get_ref()));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let state = (ticks, self.engine.clone(), self.stop.clone());
        let reports = futures::stream::unfold(state, |(mut ticks, engine, mut stop)| async move {
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return None,
            }
            let report = OrcaLoadReport::from(&engine.reported_load());
            Some((Ok(report), (ticks, engine, stop)))
        });
        Ok(Response::new(Box::pin(reports)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_asked_for_is_held_to_the_minimum_and_defaults_when_absent() {
        let ask = |d: Option<Duration>| OrcaLoadReportRequest {
            report_interval: d.map(|d| prost_types::Duration::try_from(d).unwrap()),
            request_cost_names: Vec::new(),
        };
        assert_eq!(served_interval(&ask(None)), DEFAULT_INTERVAL);
        assert_eq!(served_interval(&ask(Some(Duration::ZERO))), DEFAULT_INTERVAL);
        assert_eq!(served_interval(&ask(Some(Duration::from_millis(1)))), MIN_INTERVAL);
        assert_eq!(served_interval(&ask(Some(Duration::from_millis(50)))), Duration::from_millis(50));
        let negative = OrcaLoadReportRequest {
            report_interval: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
            request_cost_names: Vec::new(),
        };
        assert_eq!(served_interval(&negative), DEFAULT_INTERVAL);
    }
}
