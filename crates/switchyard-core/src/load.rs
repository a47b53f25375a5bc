//! Load: what the balancer knows about each endpoint, and what a replica reports of itself.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// A replica's report of its own load, as sent in the `endpoint-load-metrics-bin` trailer.
///
/// See the [`orca`](crate::orca) module for the wire format.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportedLoad {
    /// Requests admitted by the replica but waiting to start (not yet in a batch).
    pub queue_depth: u32,
    /// Requests being served right now (in the running batch).
    pub running: u32,
    /// Share of the KV cache in use, from 0.0 (empty) to 1.0 (full).
    pub kv_cache_utilization: f64,
    /// How many requests the replica can run at once (its maximum batch); 0 when unknown.
    pub capacity: u32,
    /// CPU (or accelerator) utilisation, from 0.0 to 1.0; 0.0 when not reported.
    pub cpu_utilization: f64,
    /// Any other named metrics the replica sent, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named: BTreeMap<String, f64>,
}

/// The balancer's snapshot of one endpoint's load.
///
/// The balancer keeps one per endpoint and publishes them on its `LoadBoard`; policies and the
/// gateway's admin API read these (the coming autoscaler and telemetry will too), so there is one
/// source of truth for load.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Load {
    /// Requests sent to the endpoint whose responses have not ended (streams count until their
    /// last message).
    pub in_flight: u32,
    /// Peak-EWMA of response latency: jumps up to a slower sample at once, decays towards faster
    /// ones. `None` before the first response.
    #[serde(serialize_with = "ser_opt_ms", rename = "latency_ewma_ms")]
    pub latency_ewma: Option<Duration>,
    /// The endpoint's concurrency limit in force, when the balancer limits each endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// How many requests the endpoint serves at once before a new one waits (its slots), as the
    /// balancer learnt it from the endpoint's answers: 1 for an LLM engine, which prefills prompts
    /// one after another, `k` for a server of `k` parallel slots; 1 until the endpoint shows more.
    pub slots: u32,
    /// The endpoint's time per unit of work before a first byte when nothing waits ahead (its
    /// no-load speed: per prompt token for requests that carry a size, per request otherwise),
    /// as the balancer learnt it. `None` before the first answer sent with nothing ahead.
    #[serde(serialize_with = "ser_opt_ms", rename = "idle_unit_time_ms")]
    pub idle_unit_time: Option<Duration>,
    /// Whether the balancer counts every request to the endpoint alike, whatever its size: its
    /// answers did not show that its time grows with the work (a classic server), or have not
    /// judged yet. `false` where requests count by their size (an LLM engine's prompt tokens).
    pub counts_per_request: bool,
    /// The time the balancer's costs expect one request of the least size to take on the
    /// endpoint with nothing waiting ahead, at its current speed: the time per unit of work
    /// (an EWMA over recent answers, each over the requests it was worked off with) times the
    /// least work a request counts for. `None` before the first answer.
    #[serde(serialize_with = "ser_opt_ms", rename = "request_time_ms")]
    pub request_time: Option<Duration>,
    /// Requests that succeeded since the endpoint was added (`OK`).
    pub completed: u64,
    /// Requests that failed: the endpoint was unavailable or unreachable, the deadline passed, or
    /// any other error status. Not counted in `completed`.
    pub failed: u64,
    /// Requests the endpoint refused for lack of capacity (`RESOURCE_EXHAUSTED`).
    pub overloaded: u64,
    /// Requests the caller gave up on before their response ended (it went away, or its
    /// deadline passed): neither successes nor failures, and no latency sample.
    pub cancelled: u64,
    /// The last report the replica sent, if any.
    pub report: Option<ReportedLoad>,
    /// When that report arrived.
    #[serde(skip)]
    pub report_at: Option<Instant>,
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
        None => s.serialize_none(),
    }
}

impl Load {
    /// The replica's last report if it arrived no longer than `max_age` before `now`.
    ///
    /// Policies that read reports fall back to in-flight counts when this is `None`.
    pub fn fresh_report(&self, now: Instant, max_age: Duration) -> Option<&ReportedLoad> {
        match (&self.report, self.report_at) {
            (Some(r), Some(at)) if now.saturating_duration_since(at) <= max_age => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reports_go_stale() {
        let load = Load {
            report: Some(ReportedLoad { queue_depth: 1, ..Default::default() }),
            report_at: Some(Instant::now()),
            ..Default::default()
        };
        let max_age = Duration::from_secs(1);
        assert!(load.fresh_report(Instant::now(), max_age).is_some());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(load.fresh_report(Instant::now(), max_age).is_none());
        assert!(Load::default().fresh_report(Instant::now(), max_age).is_none());
    }

    #[test]
    fn serialises_latency_in_milliseconds() {
        let load = Load { latency_ewma: Some(Duration::from_micros(1500)), ..Default::default() };
        let json = serde_json::to_string(&load).unwrap();
        assert!(json.contains("\"latency_ewma_ms\":1.5"), "{json}");
        assert!(!json.contains("report_at"), "{json}");
    }

    #[test]
    fn serialises_the_learnt_capacity() {
        let load = Load {
            slots: 8,
            idle_unit_time: Some(Duration::from_millis(10)),
            counts_per_request: true,
            request_time: Some(Duration::from_millis(21)),
            ..Default::default()
        };
        let json = serde_json::to_string(&load).unwrap();
        assert!(json.contains("\"slots\":8"), "{json}");
        assert!(json.contains("\"idle_unit_time_ms\":10.0"), "{json}");
        assert!(json.contains("\"counts_per_request\":true"), "{json}");
        assert!(json.contains("\"request_time_ms\":21.0"), "{json}");
        let unknown = serde_json::to_string(&Load::default()).unwrap();
        assert!(unknown.contains("\"idle_unit_time_ms\":null"), "{unknown}");
    }
}
