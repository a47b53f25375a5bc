//! Signals for a fleet of gateways, read from a Prometheus server's query API.
//!
//! Every gateway publishes its pool's [`LoadBoard`](switchyard_balance::LoadBoard) as per-endpoint
//! series (`switchyard_telemetry::BoardMetrics`); a Prometheus server scrapes them all. The same
//! figures [`BoardSignals`](crate::BoardSignals) reads in process are then PromQL queries, summed
//! over the gateways (each gateway counts only its own requests to a replica):
//!
//! | [`ReplicaSignals`] field | query (`S` = `{pool="P", <selector>}`) |
//! | --- | --- |
//! | the replicas, draining or not | `max by (endpoint) (switchyard_endpoint_draining S)` |
//! | `in_flight` | `sum by (endpoint) (switchyard_endpoint_in_flight_requests S)` |
//! | `awaiting_first_byte` | `sum by (endpoint) (switchyard_endpoint_awaiting_first_byte_requests S)` |
//! | `pending_work` | `sum by (endpoint) (switchyard_endpoint_pending_work S)` |
//! | `capacity_per_sec` | `avg by (endpoint) (clamp_min(switchyard_endpoint_slots S, 1) / switchyard_endpoint_idle_unit_time_seconds S)` |
//! | `report` | `max by (endpoint)` of `switchyard_endpoint_reported_{queue_depth,running_requests,kv_cache_utilization_ratio}`, each `and` its gateway's `switchyard_endpoint_report_age_seconds <= max_age` |
//!
//! and for the pool, `arrival_rate` = `sum(rate(switchyard_endpoint_picks_total S[rate_window]))`,
//! `work_rate` = `sum(rate(switchyard_endpoint_started_work_total S[rate_window]))` (the work,
//! prompt tokens, started a second: the counter [`BoardSignals`](crate::BoardSignals) reads as
//! [`EndpointState::started_work`](switchyard_balance::EndpointState::started_work))
//! and `held` = `sum(switchyard_shed_queue_waiting_requests{pool="P", <selector>})` (when a
//! gateway has a shed queue). Capacity is averaged, not summed: every gateway learns the same
//! replica's capacity from its own answers. A replica's engine report is the same whichever
//! gateway carried it, so the freshest-enough one (the highest) is taken.
//!
//! # Missing and stale series: conservative, as the HPA
//!
//! - A report older than `max_age` on every gateway is missing ([`ReplicaSignals::report`] is
//!   `None`), and a capacity no gateway has learnt is `None`: the recommenders already treat both
//!   as missing (no scale-down on them).
//! - The load itself (in flight, waiting work, arrival rate) cannot be half there: if a gateway's
//!   scrape target is down (`up` is 0), or its last scrape is older than `max_age`, or one of those
//!   series is absent for a replica on the board, the whole snapshot is missing
//!   ([`PrometheusError::Missing`]), since a gateway's load left out of a sum would read as less
//!   load and could scale the pool down. [`PolledSignals::sample`] then returns `None`, and every
//!   recommender keeps the count.
//! - An unreachable server or a bad answer is an error naming the query
//!   ([`PrometheusError::Unreachable`], [`PrometheusError::Answer`]), with the same effect.
//!
//! # Use
//!
//! [`PrometheusSignals::fetch`] takes one snapshot (async: one HTTP/1.1 connection, one query at a
//! time). The [`Autoscaler`](crate::Autoscaler) samples its [`SignalSource`] synchronously, so
//! [`PrometheusSignals::poll`] runs the queries in a task every interval and hands the autoscaler
//! the last snapshot ([`PolledSignals`]), or `None` once a fetch has failed or the snapshot is
//! older than `max_age`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use switchyard_core::{EndpointId, ReportedLoad};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{ReplicaSignals, SignalSource, Signals};

/// Where the Prometheus server is and which series are the pool's.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusConfig {
    /// The server's base URL, `http://HOST:PORT` (a path prefix is kept: `http://h/prometheus`).
    pub url: String,
    /// The pool whose series are read (their `pool` label).
    pub pool: String,
    /// Label matchers picking the gateways' scrape targets, PromQL syntax without braces, for
    /// example `job="switchyard-gateway"` (the default). Also selects their `up` series.
    pub selector: String,
    /// The window of the arrival rate's `rate()` (30 s).
    pub rate_window: Duration,
    /// A gateway scraped longer ago than this, or a replica report older, is stale (10 s, as
    /// [`DEFAULT_MAX_REPORT_AGE`](crate::signals::DEFAULT_MAX_REPORT_AGE)).
    pub max_age: Duration,
    /// Longest wait for one query's answer (5 s).
    pub timeout: Duration,
}

impl PrometheusConfig {
    /// The pool `pool` of the gateways of job `switchyard-gateway` on the server at `url`.
    pub fn new(url: impl Into<String>, pool: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool: pool.into(),
            selector: r#"job="switchyard-gateway""#.into(),
            rate_window: Duration::from_secs(30),
            max_age: crate::signals::DEFAULT_MAX_REPORT_AGE,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a snapshot could not be taken from Prometheus.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrometheusError {
    /// The configured URL is not `http://HOST[:PORT][/PATH]`.
    #[error("prometheus url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or did not answer in time.
    #[error("prometheus query {query:?}: server unreachable: {reason}")]
    Unreachable {
        /// The query.
        query: String,
        /// The connection's or the timeout's error.
        reason: String,
    },
    /// The server answered with an error, or with something that is not an instant vector.
    #[error("prometheus query {query:?}: bad answer: {reason}")]
    Answer {
        /// The query.
        query: String,
        /// The error the server gave, or what was wrong with its answer.
        reason: String,
    },
    /// A series the snapshot needs is absent or stale (a gateway down, a scrape too old).
    #[error("prometheus query {query:?}: signal missing: {reason}")]
    Missing {
        /// The query.
        query: String,
        /// What is missing.
        reason: String,
    },
}

/// Reads the pool's [`Signals`] from a Prometheus server's query API (see the
/// [module docs](self)).
#[derive(Debug, Clone)]
pub struct PrometheusSignals {
    config: PrometheusConfig,
    authority: String,
    prefix: String,
}

/// The `/api/v1/query` answer.
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<AnswerData>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerData {
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// One instant vector: (labels, value), non-finite values dropped.
type Vector = Vec<(BTreeMap<String, String>, f64)>;

impl PrometheusSignals {
    /// A reader with `config`; fails on a URL that is not `http://HOST[:PORT][/PATH]`.
    pub fn new(config: PrometheusConfig) -> Result<Self, PrometheusError> {
        let bad = |reason: &str| PrometheusError::Url { url: config.url.clone(), reason: reason.into() };
        let uri: Uri = config.url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self { config, authority, prefix })
    }

    /// The settings.
    pub fn config(&self) -> &PrometheusConfig {
        &self.config
    }

    /// `{pool="P", <selector>}`.
    fn series(&self) -> String {
        let pool = self.config.pool.replace('\\', "\\\\").replace('"', "\\\"");
        let selector = self.config.selector.trim();
        if selector.is_empty() {
            format!(r#"{{pool="{pool}"}}"#)
        } else {
            format!(r#"{{pool="{pool}",{selector}}}"#)
        }
    }

    /// One snapshot of the pool, now.
    pub async fn fetch(&self) -> Result<Signals, PrometheusError> {
        let at = Instant::now();
        let s = self.series();
        let max_age = self.config.max_age.as_secs_f64();
        let selector = self.config.selector.trim();

        // The gateways: every target up and scraped recently, or nothing is trusted.
        let up_query = format!("up{{{selector}}}");
        let mut conn = Connection::open(self, &up_query).await?;
        let up = conn.query(&up_query).await?;
        if up.is_empty() {
            return Err(missing(&up_query, "no gateway scrape target matches the selector"));
        }
        if let Some((labels, _)) = up.iter().find(|(_, v)| *v < 1.0) {
            return Err(missing(&up_query, &format!("gateway {} is down", instance(labels))));
        }
        let age_query = format!("time() - timestamp(up{{{selector}}})");
        for (labels, age) in conn.query(&age_query).await? {
            if age > max_age {
                return Err(missing(
                    &age_query,
                    &format!("gateway {} last scraped {age:.1} s ago", instance(&labels)),
                ));
            }
        }

        // The replicas on any gateway's board, and whether they drain.
        let draining_query = format!("max by (endpoint) (switchyard_endpoint_draining{s})");
        let draining = by_endpoint(conn.query(&draining_query).await?);
        let sum = |metric: &str| format!("sum by (endpoint) ({metric}{s})");
        let in_flight_query = sum("switchyard_endpoint_in_flight_requests");
        let in_flight = by_endpoint(conn.query(&in_flight_query).await?);
        let awaiting_query = sum("switchyard_endpoint_awaiting_first_byte_requests");
        let awaiting = by_endpoint(conn.query(&awaiting_query).await?);
        let pending_query = sum("switchyard_endpoint_pending_work");
        let pending = by_endpoint(conn.query(&pending_query).await?);
        let capacity_query = format!(
            "avg by (endpoint) (clamp_min(switchyard_endpoint_slots{s}, 1) / switchyard_endpoint_idle_unit_time_seconds{s})"
        );
        let capacity = by_endpoint(conn.query(&capacity_query).await?);
        let fresh = |metric: &str| {
            format!(
                "max by (endpoint) ({metric}{s} and switchyard_endpoint_report_age_seconds{s} <= {max_age})"
            )
        };
        let queue = by_endpoint(conn.query(&fresh("switchyard_endpoint_reported_queue_depth")).await?);
        let running = by_endpoint(conn.query(&fresh("switchyard_endpoint_reported_running_requests")).await?);
        let kv =
            by_endpoint(conn.query(&fresh("switchyard_endpoint_reported_kv_cache_utilization_ratio")).await?);

        let mut replicas = Vec::new();
        for (endpoint, &drain) in &draining {
            if drain > 0.0 {
                continue;
            }
            let need = |map: &BTreeMap<String, f64>, query: &str| {
                map.get(endpoint).copied().ok_or_else(|| missing(query, &format!("no series for {endpoint}")))
            };
            let in_flight = need(&in_flight, &in_flight_query)?;
            let awaiting = need(&awaiting, &awaiting_query)?;
            let pending = need(&pending, &pending_query)?;
            let report = match (queue.get(endpoint), kv.get(endpoint)) {
                (Some(&queue), Some(&kv)) => Some(ReportedLoad {
                    queue_depth: count(queue),
                    running: running.get(endpoint).map_or(0, |&r| count(r)),
                    kv_cache_utilization: kv,
                    ..ReportedLoad::default()
                }),
                _ => None,
            };
            replicas.push(ReplicaSignals {
                id: EndpointId::new(endpoint.clone()),
                in_flight: count(in_flight),
                awaiting_first_byte: count(awaiting),
                pending_work: pending.max(0.0).round() as u64,
                capacity_per_sec: capacity.get(endpoint).copied().filter(|c| *c > 0.0),
                report,
            });
        }

        let window = self.config.rate_window.as_secs().max(1);
        let rate_query = format!("sum(rate(switchyard_endpoint_picks_total{s}[{window}s]))");
        let rate = conn.query(&rate_query).await?;
        let arrival_rate = match rate.first() {
            Some(&(_, r)) => r,
            // No replica: nothing picked, nothing to rate.
            None if draining.is_empty() => 0.0,
            None => return Err(missing(&rate_query, "no samples in the window yet")),
        };
        // Gateways of a version without the counter answer nothing: no work rate, and the
        // recommenders fall back to their estimate from the arrival rate.
        let work_query = format!("sum(rate(switchyard_endpoint_started_work_total{s}[{window}s]))");
        let work_rate = match conn.query(&work_query).await?.first() {
            Some(&(_, r)) => Some(r),
            None if draining.is_empty() => Some(0.0),
            None => None,
        };
        let held_query = format!(
            r#"sum(switchyard_shed_queue_waiting_requests{{pool="{}"{}{selector}}})"#,
            self.config.pool.replace('\\', "\\\\").replace('"', "\\\""),
            if selector.is_empty() { "" } else { "," }
        );
        let held = conn.query(&held_query).await?.first().map(|&(_, v)| v.max(0.0).round() as u64);
        Ok(Signals::new(at, replicas)
            .with_arrival_rate(arrival_rate)
            .with_work_rate(work_rate)
            .with_held(held))
    }

    /// Fetches a snapshot every `every` in a task; the returned source hands the last one to an
    /// [`Autoscaler`](crate::Autoscaler). The task stops when the source is dropped.
    pub fn poll(self, every: Duration) -> PolledSignals {
        let state: Arc<Mutex<Polled>> = Arc::default();
        let max_age = self.config.max_age;
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let result = self.fetch().await;
                    if let Err(error) = &result {
                        tracing::warn!(%error, "autoscale: prometheus signals missing");
                    }
                    let mut polled = state.lock().unwrap_or_else(PoisonError::into_inner);
                    polled.fetches += 1;
                    match result {
                        Ok(signals) => {
                            polled.last = Some(signals);
                            polled.error = None;
                        }
                        Err(error) => {
                            polled.last = None;
                            polled.error = Some(error);
                        }
                    }
                }
            }
        });
        PolledSignals { state, max_age, task }
    }
}

#[derive(Debug, Default)]
struct Polled {
    last: Option<Signals>,
    error: Option<PrometheusError>,
    fetches: u64,
}

/// A [`SignalSource`] fed by [`PrometheusSignals::poll`]: the last snapshot, or `None` (a
/// missing signal) once a fetch failed or the last snapshot is older than `max_age`.
#[derive(Debug)]
pub struct PolledSignals {
    state: Arc<Mutex<Polled>>,
    max_age: Duration,
    task: JoinHandle<()>,
}

impl PolledSignals {
    /// The error of the last fetch, if it failed.
    pub fn last_error(&self) -> Option<PrometheusError> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).error.clone()
    }

    /// Fetches done so far (ok or not).
    pub fn fetches(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).fetches
    }
}

impl SignalSource for PolledSignals {
    fn sample(&mut self) -> Option<Signals> {
        let polled = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        polled.last.clone().filter(|s| s.at.elapsed() <= self.max_age)
    }
}

impl Drop for PolledSignals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 connection to the server, queries sent one at a time.
struct Connection<'a> {
    signals: &'a PrometheusSignals,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl<'a> Connection<'a> {
    /// Connects; `query` names the first query in the error.
    async fn open(signals: &'a PrometheusSignals, query: &str) -> Result<Self, PrometheusError> {
        let unreachable = |reason: String| PrometheusError::Unreachable { query: query.to_string(), reason };
        let connect = async {
            let stream = TcpStream::connect(&signals.authority).await.map_err(|e| e.to_string())?;
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())
        };
        let (sender, conn) = tokio::time::timeout(signals.config.timeout, connect)
            .await
            .map_err(|_| unreachable(format!("no connection within {:?}", signals.config.timeout)))?
            .map_err(|e| unreachable(format!("{e} ({})", signals.authority)))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { signals, sender, driver })
    }

    /// Runs the instant query `query`.
    async fn query(&mut self, query: &str) -> Result<Vector, PrometheusError> {
        let unreachable = |reason: String| PrometheusError::Unreachable { query: query.into(), reason };
        let bad = |reason: String| PrometheusError::Answer { query: query.into(), reason };
        let path = format!("{}/api/v1/query?query={}", self.signals.prefix, encode(query));
        let request = http::Request::get(path)
            .header(http::header::HOST, &self.signals.authority)
            .body(Empty::new())
            .map_err(|e| bad(e.to_string()))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.signals.config.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.signals.config.timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            bad(format!("HTTP {status}, not a query answer ({e}): {}", String::from_utf8_lossy(&body)))
        })?;
        if answer.status != "success" {
            return Err(bad(format!("HTTP {status}: {}", answer.error.unwrap_or(answer.status))));
        }
        let data = answer.data.ok_or_else(|| bad("no data".into()))?;
        if data.result_type != "vector" {
            return Err(bad(format!("a {}, not an instant vector", data.result_type)));
        }
        Ok(data
            .result
            .into_iter()
            .filter_map(|s| Some((s.metric, s.value.1.parse::<f64>().ok().filter(|v| v.is_finite())?)))
            .collect())
    }
}

fn missing(query: &str, reason: &str) -> PrometheusError {
    PrometheusError::Missing { query: query.into(), reason: reason.into() }
}

fn instance(labels: &BTreeMap<String, String>) -> String {
    labels.get("instance").cloned().unwrap_or_else(|| format!("{labels:?}"))
}

/// The vector keyed by its `endpoint` label.
fn by_endpoint(vector: Vector) -> BTreeMap<String, f64> {
    vector.into_iter().filter_map(|(mut labels, v)| Some((labels.remove("endpoint")?, v))).collect()
}

/// A gauge's value as a count (rounded, clamped at 0).
fn count(v: f64) -> u32 {
    v.max(0.0).min(f64::from(u32::MAX)).round() as u32
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_http_or_host_is_refused_and_a_pool_name_is_escaped() {
        let err = PrometheusSignals::new(PrometheusConfig::new("https://p:9090", "a")).unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
        let err = PrometheusSignals::new(PrometheusConfig::new("localhost", "a")).unwrap_err();
        assert!(matches!(err, PrometheusError::Url { .. }), "{err}");
        let p = PrometheusSignals::new(PrometheusConfig::new("http://prom/sub/", "we\"ird")).unwrap();
        assert_eq!((p.authority.as_str(), p.prefix.as_str()), ("prom:80", "/sub"));
        assert_eq!(p.series(), r#"{pool="we\"ird",job="switchyard-gateway"}"#);
        assert_eq!(encode("up{a=\"b\"} <= 1"), "up%7Ba%3D%22b%22%7D%20%3C%3D%201");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_naming_the_query() {
        // A port nothing listens on: bind one, then free it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let p = PrometheusSignals::new(PrometheusConfig::new(format!("http://{addr}"), "default")).unwrap();
        let err = p.fetch().await.unwrap_err();
        assert!(
            matches!(&err, PrometheusError::Unreachable { query, .. } if query == r#"up{job="switchyard-gateway"}"#),
            "{err}"
        );
    }
}
