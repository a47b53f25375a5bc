//! The registry's series mirrored into OpenTelemetry instruments, for export over OTLP.
//!
//! Every handle the [`MetricsRegistry`](crate::MetricsRegistry) gives out then records twice:
//! into its Prometheus recorder (for `/metrics`) and into an instrument of an OpenTelemetry
//! `Meter` of the same name and attributes, which the SDK's periodic reader exports. Counters and
//! gauges are observable instruments reporting the series' values at each collection (so a
//! retired series leaves the export); histograms take the same buckets as in Prometheus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{CounterFn, GaugeFn, HistogramFn, Key};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableCounter, ObservableGauge};

use crate::registry::{DURATION_BUCKETS, SIZE_BUCKETS};

/// Makes the OpenTelemetry twin of each handle.
///
/// Counters and gauges are observable instruments, one per name, whose callback reports the
/// series that exist at the collection: a retired series (an endpoint gone from its pool) is no
/// longer observed, and the SDK (0.33: observable sums and gauges report only what the last
/// callback observed) stops exporting it at the next collection. Histograms are synchronous
/// instruments: under the default cumulative temporality the SDK keeps a retired series (no
/// longer recorded into) until the process ends; with
/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta` (or `lowmemory`) it drops it once
/// an interval passes without a record.
///
/// Handles are made once per key and kept: the load-board series are registered again at every
/// scrape, and a counter's twin must remember its total.
#[derive(Debug)]
pub(crate) struct OtelMirror {
    meter: Meter,
    counters: Mutex<HashMap<Key, metrics::Counter>>,
    gauges: Mutex<HashMap<Key, metrics::Gauge>>,
    histograms: Mutex<HashMap<Key, metrics::Histogram>>,
    /// The observable counters, by name: what their callbacks read.
    observed_counters: Mutex<HashMap<String, Observed<ObservableCounter<u64>>>>,
    /// The observable gauges, by name.
    observed_gauges: Mutex<HashMap<String, Observed<ObservableGauge<f64>>>>,
}

/// An observable instrument and the series its callback reports.
#[derive(Debug)]
struct Observed<I> {
    series: Arc<Series>,
    /// Kept for the provider's lifetime (the SDK calls the callback until it shuts down).
    _instrument: I,
}

/// The live series of one name, by key: each one's attributes and value (a `u64` total for a
/// counter, `f64` bits for a gauge).
#[derive(Debug, Default)]
struct Series(Mutex<HashMap<Key, Arc<Value>>>);

#[derive(Debug)]
struct Value {
    attributes: Vec<KeyValue>,
    bits: AtomicU64,
}

impl Series {
    /// The value of `key`, added at zero if new.
    fn value(&self, key: &Key, zero: u64) -> Arc<Value> {
        let mut series = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        series
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Value { attributes: attributes(key), bits: AtomicU64::new(zero) }))
            .clone()
    }

    /// Each live series' attributes and value, as the instrument's callback reports them.
    fn observe(&self, mut observe: impl FnMut(u64, &[KeyValue])) {
        for value in self.0.lock().unwrap_or_else(PoisonError::into_inner).values() {
            observe(value.bits.load(Ordering::Relaxed), &value.attributes);
        }
    }

    fn retain(&self, keep: &impl Fn(&Key) -> bool) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).retain(|key, _| keep(key));
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels().map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned())).collect()
}

impl OtelMirror {
    pub(crate) fn new(meter: Meter) -> Self {
        Self {
            meter,
            counters: Mutex::default(),
            gauges: Mutex::default(),
            histograms: Mutex::default(),
            observed_counters: Mutex::default(),
            observed_gauges: Mutex::default(),
        }
    }

    /// Forgets the twins of the keys `keep` refuses (retired series): counters and gauges are no
    /// longer observed, so their series leave the next export; a series registered again under
    /// such a key starts a new twin.
    pub(crate) fn retain(&self, keep: impl Fn(&Key) -> bool) {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner).retain(|key, _| keep(key));
        self.gauges.lock().unwrap_or_else(PoisonError::into_inner).retain(|key, _| keep(key));
        self.histograms.lock().unwrap_or_else(PoisonError::into_inner).retain(|key, _| keep(key));
        for observed in self.observed_counters.lock().unwrap_or_else(PoisonError::into_inner).values() {
            observed.series.retain(&keep);
        }
        for observed in self.observed_gauges.lock().unwrap_or_else(PoisonError::into_inner).values() {
            observed.series.retain(&keep);
        }
    }

    /// The series of the observable counter `name`, the instrument made on its first use.
    fn counter_series(&self, name: &str) -> Arc<Series> {
        let mut counters = self.observed_counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = counters.get(name) {
            return found.series.clone();
        }
        let series = Arc::new(Series::default());
        let read = series.clone();
        let instrument = self
            .meter
            .u64_observable_counter(name.to_owned())
            .with_callback(move |observer| {
                read.observe(|total, attributes| observer.observe(total, attributes))
            })
            .build();
        counters.insert(name.to_owned(), Observed { series: series.clone(), _instrument: instrument });
        series
    }

    /// The series of the observable gauge `name`, the instrument made on its first use.
    fn gauge_series(&self, name: &str) -> Arc<Series> {
        let mut gauges = self.observed_gauges.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = gauges.get(name) {
            return found.series.clone();
        }
        let series = Arc::new(Series::default());
        let read = series.clone();
        let instrument = self
            .meter
            .f64_observable_gauge(name.to_owned())
            .with_callback(move |observer| {
                read.observe(|bits, attributes| observer.observe(f64::from_bits(bits), attributes));
            })
            .build();
        gauges.insert(name.to_owned(), Observed { series: series.clone(), _instrument: instrument });
        series
    }

    pub(crate) fn counter(
        &self,
        key: &Key,
        prometheus: impl FnOnce() -> metrics::Counter,
    ) -> metrics::Counter {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters
            .entry(key.clone())
            .or_insert_with(|| {
                let total = self.counter_series(key.name()).value(key, 0);
                metrics::Counter::from_arc(Arc::new(MirroredCounter { prometheus: prometheus(), total }))
            })
            .clone()
    }

    pub(crate) fn gauge(&self, key: &Key, prometheus: impl FnOnce() -> metrics::Gauge) -> metrics::Gauge {
        let mut gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        gauges
            .entry(key.clone())
            .or_insert_with(|| {
                let value = self.gauge_series(key.name()).value(key, 0f64.to_bits());
                metrics::Gauge::from_arc(Arc::new(MirroredGauge { prometheus: prometheus(), value }))
            })
            .clone()
    }

    pub(crate) fn histogram(
        &self,
        key: &Key,
        prometheus: impl FnOnce() -> metrics::Histogram,
    ) -> metrics::Histogram {
        let mut histograms = self.histograms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = histograms.get(key) {
            return found.clone();
        }
        let name = key.name().to_owned();
        let builder = self.meter.f64_histogram(name.clone());
        let builder = if name.ends_with("_seconds") {
            builder.with_boundaries(DURATION_BUCKETS.to_vec())
        } else if name.ends_with("_bytes") {
            builder.with_boundaries(SIZE_BUCKETS.to_vec())
        } else {
            builder
        };
        let histogram = metrics::Histogram::from_arc(Arc::new(MirroredHistogram {
            prometheus: prometheus(),
            histogram: builder.build(),
            attributes: attributes(key),
        }));
        histograms.insert(key.clone(), histogram.clone());
        histogram
    }
}

struct MirroredCounter {
    prometheus: metrics::Counter,
    /// The total so far, which the observable counter reports.
    total: Arc<Value>,
}

impl CounterFn for MirroredCounter {
    fn increment(&self, value: u64) {
        self.prometheus.increment(value);
        self.total.bits.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.prometheus.absolute(value);
        self.total.bits.fetch_max(value, Ordering::Relaxed);
    }
}

struct MirroredGauge {
    prometheus: metrics::Gauge,
    /// The value as `f64` bits, which the observable gauge reports.
    value: Arc<Value>,
}

impl MirroredGauge {
    fn update(&self, change: impl Fn(f64) -> f64) {
        let _ = self.value.bits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
            Some(change(f64::from_bits(bits)).to_bits())
        });
    }
}

impl GaugeFn for MirroredGauge {
    fn increment(&self, value: f64) {
        self.prometheus.increment(value);
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.prometheus.decrement(value);
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.prometheus.set(value);
        self.update(|_| value);
    }
}

struct MirroredHistogram {
    prometheus: metrics::Histogram,
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for MirroredHistogram {
    fn record(&self, value: f64) {
        self.prometheus.record(value);
        self.histogram.record(value, &self.attributes);
    }
}
