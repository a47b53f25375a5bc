//! The metrics registry: a Prometheus recorder of the `metrics` facade, and the sources read at
//! scrape time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::histogram::BucketHistogram;
use crate::names;
use crate::otlp_metrics::OtelMirror;
use crate::scraped::{ScrapeRecorder, ScrapedSeries};

/// The content type of the Prometheus text exposition format that [`MetricsRegistry::render`]
/// writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets for durations, in seconds: 1 ms to 2 min, covering a unary call's few
/// milliseconds and a long generation's minute.
pub const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Histogram buckets for sizes, in bytes: 64 B to 64 MiB, by powers of four.
pub const SIZE_BUCKETS: &[f64] =
    &[64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];

/// Where `metrics` handles made by this crate say they come from.
pub(crate) static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Something read when the registry is scraped (a [`LoadBoard`](switchyard_balance::LoadBoard)
/// through [`BoardMetrics`](crate::BoardMetrics)): it sets its series on the recorder then, so
/// that they show the state at the scrape and nothing keeps a second count of it.
///
/// The counters and gauges a source registers during [`publish`](Self::publish) are made anew at
/// each scrape: set them whole (`absolute`, `set`), and a series the source stops publishing
/// leaves `/metrics` at that scrape. Histograms registered there are the registry's, kept across
/// scrapes (until [`retired`](Self::retired)).
pub trait ScrapeSource: Send + Sync + fmt::Debug + 'static {
    /// Sets this source's series on `recorder`.
    fn publish(&self, recorder: &dyn Recorder);

    /// Label sets that have left since the last scrape (an endpoint gone from its pool's board:
    /// `[pool, endpoint]`), asked after [`publish`](Self::publish): every series carrying all the
    /// labels of one of them is dropped, the histograms recorded on the request path (the
    /// balancer's observer) included. None by default.
    fn retired(&self) -> Vec<Vec<Label>> {
        Vec::new()
    }

    /// What an admin view shows of this source when it is one of a pool's layers (a limit, a
    /// shed queue): its kind and its figures now. `None` (the default) for other sources.
    fn layer_state(&self) -> Option<LayerState> {
        None
    }
}

/// A pool layer's state at one moment, as [`ScrapeSource::layer_state`] reads it: the same
/// figures as its series, for an admin API to show.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// The layer's kind: `limit`, `shed`.
    pub layer: &'static str,
    /// Its `layer` label (its position among the pool's layers), if it has one.
    pub label: Option<String>,
    /// The limit algorithm, for a limit.
    pub algorithm: Option<&'static str>,
    /// Its figures by name (`limit`, `in_flight`, `waiting`, `refused`, ...).
    pub figures: Vec<(&'static str, f64)>,
}

/// A registry of metrics, rendered in the Prometheus text format: the recorder the RPC layers
/// record into, and the [`ScrapeSource`]s published at each scrape.
///
/// Each registry is independent (several gateways in one test process each have their own);
/// [`install`](Self::install) makes one the process's global `metrics` recorder, so that
/// `metrics::counter!` and friends anywhere in the program land in it too. Cloning gives another
/// handle on the same registry.
///
/// Histograms are Prometheus histograms with [`DURATION_BUCKETS`] for names ending in
/// `_seconds` and [`SIZE_BUCKETS`] for those ending in `_bytes`, counted per thread shard (see
/// the `histogram` module: no cache line shared between cores on the request path); others are
/// the `metrics` exporter's summaries.
#[derive(Clone)]
pub struct MetricsRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    /// The OpenTelemetry twins of the handles, when the series are exported over OTLP too.
    otel: Option<OtelMirror>,
    handle: PrometheusHandle,
    sources: Mutex<Vec<Arc<dyn ScrapeSource>>>,
    /// The bucket histograms, by name then key; registration and scrapes only.
    histograms: RwLock<BTreeMap<String, Family>>,
    /// The sources' counters and gauges of the last scrape.
    scraped: RwLock<ScrapedSeries>,
    /// `# HELP` of counters and gauges, for the scraped series.
    help: RwLock<HashMap<String, String>>,
    /// How many times series were retired: handles cached on the request path (the observer's)
    /// are looked up again when it moves.
    retirements: AtomicU64,
}

/// The series of one histogram name, and its `# HELP`.
#[derive(Default)]
struct Family {
    help: Option<String>,
    series: HashMap<Key, Arc<BucketHistogram>>,
}

/// The bounds of a histogram named `name`, if it is one of ours.
fn bounds(name: &str) -> Option<&'static [f64]> {
    if name.ends_with("_seconds") {
        Some(DURATION_BUCKETS)
    } else if name.ends_with("_bytes") {
        Some(SIZE_BUCKETS)
    } else {
        None
    }
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    /// An empty registry, with the RPC and endpoint metrics described (their `# HELP`).
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A registry whose series also go to `meter`'s instruments (same names and labels), for an
    /// OpenTelemetry exporter; [`init`](crate::init) makes one when an OTLP endpoint is set.
    pub fn with_meter(meter: opentelemetry::metrics::Meter) -> Self {
        Self::build(Some(OtelMirror::new(meter)))
    }

    fn build(otel: Option<OtelMirror>) -> Self {
        // Neither bucket list is empty, so neither call fails.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), SIZE_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let registry = Self {
            inner: Arc::new(Inner {
                recorder,
                otel,
                handle,
                sources: Mutex::default(),
                histograms: RwLock::default(),
                scraped: RwLock::default(),
                help: RwLock::default(),
                retirements: AtomicU64::new(0),
            }),
        };
        registry.describe();
        registry
    }

    fn describe(&self) {
        use names::*;
        let h = |name: &'static str, unit, help: &'static str| {
            Recorder::describe_histogram(self, name.into(), Some(unit), help.into())
        };
        let g = |name: &'static str, unit, help: &'static str| {
            Recorder::describe_gauge(self, name.into(), unit, help.into())
        };
        let c = |name: &'static str, help: &'static str| {
            Recorder::describe_counter(self, name.into(), Some(Unit::Count), help.into())
        };
        h(
            RPC_SERVER_DURATION,
            Unit::Seconds,
            "Duration of RPCs served, from the request to the end of the response (OpenTelemetry rpc.server.duration).",
        );
        h(
            RPC_CLIENT_DURATION,
            Unit::Seconds,
            "Duration of RPCs sent, from the request to the end of the response (OpenTelemetry rpc.client.duration).",
        );
        h(
            RPC_SERVER_RESPONSE_SIZE,
            Unit::Bytes,
            "Bytes of the response body of RPCs served (OpenTelemetry rpc.server.response.size).",
        );
        h(
            RPC_CLIENT_RESPONSE_SIZE,
            Unit::Bytes,
            "Bytes of the response body of RPCs sent (OpenTelemetry rpc.client.response.size).",
        );
        h(
            RPC_SERVER_REQUEST_SIZE,
            Unit::Bytes,
            "Bytes of the request body of RPCs served (OpenTelemetry rpc.server.request.size).",
        );
        h(
            RPC_CLIENT_REQUEST_SIZE,
            Unit::Bytes,
            "Bytes of the request body of RPCs sent (OpenTelemetry rpc.client.request.size).",
        );
        g(RPC_SERVER_ACTIVE, Some(Unit::Count), "RPCs being served.");
        g(RPC_CLIENT_ACTIVE, Some(Unit::Count), "RPCs sent and not yet ended.");
        c(ENDPOINT_PICKS, "Requests the balancer sent to the endpoint.");
        c(ENDPOINT_REQUESTS, "Requests ended on the endpoint, by outcome.");
        c(ENDPOINT_EJECTIONS, "Times outlier detection ejected the endpoint.");
        c(
            ENDPOINT_STARTED_WORK,
            "Work (prompt tokens) of the requests the balancer started on the endpoint.",
        );
        g(ENDPOINT_IN_FLIGHT, Some(Unit::Count), "Requests in flight on the endpoint.");
        g(ENDPOINT_LATENCY_EWMA, Some(Unit::Seconds), "Peak-EWMA latency of the endpoint.");
        g(ENDPOINT_QUEUE, Some(Unit::Count), "Queue depth the endpoint's replica last reported.");
        g(
            ENDPOINT_RUNNING,
            Some(Unit::Count),
            "Requests running on the endpoint's replica, as last reported.",
        );
        g(
            ENDPOINT_KV_CACHE,
            Some(Unit::Percent),
            "KV-cache use (0 to 1) the endpoint's replica last reported.",
        );
        g(
            ENDPOINT_LIMIT,
            Some(Unit::Count),
            "Concurrency limit in force on the endpoint (the balancer's per-endpoint limit).",
        );
        g(
            ENDPOINT_SLOTS,
            Some(Unit::Count),
            "Requests the endpoint serves at once before a new one waits, as the balancer learnt it.",
        );
        g(
            ENDPOINT_IDLE_UNIT_TIME,
            Some(Unit::Seconds),
            "No-load time per unit of work before a first byte of the endpoint, as the balancer learnt it.",
        );
        g(
            ENDPOINT_AWAITING_FIRST_BYTE,
            Some(Unit::Count),
            "Requests in flight on the endpoint still waiting for their first byte.",
        );
        g(
            ENDPOINT_PENDING_WORK,
            Some(Unit::Count),
            "Work (prompt tokens) of the requests waiting for their first byte on the endpoint.",
        );
        g(ENDPOINT_REPORT_AGE, Some(Unit::Seconds), "Age of the endpoint's last load report.");
        g(ENDPOINT_EJECTED, None, "1 while outlier detection has the endpoint ejected.");
        g(ENDPOINT_DRAINING, None, "1 while the endpoint drains (removed, its last requests running).");
        g(POOL_POLICY, None, "1 for the balancing policy the pool uses now, 0 for one it used before.");
        g(POOL_ENDPOINTS, Some(Unit::Count), "Endpoints on the pool's load board.");
    }

    /// Adds a source read at every scrape.
    pub fn add_source(&self, source: Arc<dyn ScrapeSource>) {
        self.inner.sources.lock().unwrap_or_else(PoisonError::into_inner).push(source);
    }

    /// Publishes the sources, then renders every series in the Prometheus text format
    /// ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.publish();
        self.inner.handle.run_upkeep();
        let mut text = self.inner.handle.render();
        {
            let help = self.inner.help.read().unwrap_or_else(PoisonError::into_inner);
            self.inner.scraped.read().unwrap_or_else(PoisonError::into_inner).render(&help, &mut text);
        }
        self.render_histograms(&mut text);
        text
    }

    fn render_histograms(&self, out: &mut String) {
        use std::fmt::Write as _;
        let families = self.inner.histograms.read().unwrap_or_else(PoisonError::into_inner);
        for (name, family) in families.iter().filter(|(_, f)| !f.series.is_empty()) {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            if let Some(help) = &family.help {
                let help = help.replace('\\', r"\\").replace('\n', r"\n");
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} histogram");
            let mut series: Vec<_> = family.series.iter().collect();
            series.sort_by(|a, b| a.0.labels().cmp(b.0.labels()));
            for (key, histogram) in series {
                histogram.render(key, out);
            }
        }
    }

    /// Publishes the sources' series (as a scrape does; an OTLP export calls it before each
    /// collection).
    pub fn publish(&self) {
        let sources = self.inner.sources.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let recorder = ScrapeRecorder::new(self);
        for source in &sources {
            source.publish(&recorder);
        }
        let retired: Vec<Vec<Label>> = sources.iter().flat_map(|source| source.retired()).collect();
        self.retire(&retired);
        *self.inner.scraped.write().unwrap_or_else(PoisonError::into_inner) = recorder.finish();
    }

    /// Drops every histogram (and OpenTelemetry twin) carrying all the labels of one of `sets`.
    fn retire(&self, sets: &[Vec<Label>]) {
        if sets.is_empty() {
            return;
        }
        let carries = |key: &Key| sets.iter().any(|set| set.iter().all(|l| key.labels().any(|k| k == l)));
        {
            let mut families = self.inner.histograms.write().unwrap_or_else(PoisonError::into_inner);
            for family in families.values_mut() {
                family.series.retain(|key, _| !carries(key));
            }
        }
        if let Some(otel) = &self.inner.otel {
            otel.retain(|key| !carries(key));
        }
        self.inner.retirements.fetch_add(1, Ordering::Release);
    }

    /// How many times series were retired so far (see [`ScrapeSource::retired`]).
    pub(crate) fn retirements(&self) -> u64 {
        self.inner.retirements.load(Ordering::Acquire)
    }

    /// The OpenTelemetry twins, when the series are exported over OTLP too.
    pub(crate) fn otel(&self) -> Option<&OtelMirror> {
        self.inner.otel.as_ref()
    }

    fn remember_help(&self, key: &KeyName, description: &str) {
        let mut help = self.inner.help.write().unwrap_or_else(PoisonError::into_inner);
        if help.get(key.as_str()).is_none_or(|known| known != description) {
            help.insert(key.as_str().to_owned(), description.to_owned());
        }
    }

    /// A handle that does not keep the registry alive.
    pub(crate) fn downgrade(&self) -> WeakRegistry {
        WeakRegistry(Arc::downgrade(&self.inner))
    }

    /// Makes this registry the process's global `metrics` recorder; an error if one is set
    /// already.
    pub fn install(&self) -> Result<(), metrics::SetRecorderError<MetricsRegistry>> {
        metrics::set_global_recorder(self.clone())
    }
}

/// A [`MetricsRegistry`] handle that does not keep it alive (for callbacks it owns).
#[derive(Clone)]
pub(crate) struct WeakRegistry(std::sync::Weak<Inner>);

impl fmt::Debug for WeakRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakRegistry").field("alive", &(self.0.strong_count() > 0)).finish()
    }
}

impl WeakRegistry {
    /// The registry, if it still exists.
    pub(crate) fn upgrade(&self) -> Option<MetricsRegistry> {
        self.0.upgrade().map(|inner| MetricsRegistry { inner })
    }
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources = self.inner.sources.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("MetricsRegistry").field("sources", &sources).finish_non_exhaustive()
    }
}

impl Recorder for MetricsRegistry {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember_help(&key, &description);
        self.inner.recorder.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember_help(&key, &description);
        self.inner.recorder.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if bounds(key.as_str()).is_none() {
            return self.inner.recorder.describe_histogram(key, unit, description);
        }
        let mut families = self.inner.histograms.write().unwrap_or_else(PoisonError::into_inner);
        families.entry(key.as_str().to_owned()).or_default().help = Some(description.into_owned());
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let prometheus = || self.inner.recorder.register_counter(key, metadata);
        match &self.inner.otel {
            None => prometheus(),
            Some(otel) => otel.counter(key, prometheus),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let prometheus = || self.inner.recorder.register_gauge(key, metadata);
        match &self.inner.otel {
            None => prometheus(),
            Some(otel) => otel.gauge(key, prometheus),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let prometheus = || match bounds(key.name()) {
            None => self.inner.recorder.register_histogram(key, metadata),
            Some(bounds) => {
                let mut families = self.inner.histograms.write().unwrap_or_else(PoisonError::into_inner);
                let family = families.entry(key.name().to_owned()).or_default();
                Histogram::from_arc(
                    family
                        .series
                        .entry(key.clone())
                        .or_insert_with(|| Arc::new(BucketHistogram::new(bounds)))
                        .clone(),
                )
            }
        };
        match &self.inner.otel {
            None => prometheus(),
            Some(otel) => otel.histogram(key, prometheus),
        }
    }
}
