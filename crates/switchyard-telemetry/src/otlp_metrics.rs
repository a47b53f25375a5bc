//! The registry's series mirrored into OpenTelemetry instruments, for export over OTLP.
//!
//! Every handle the [`MetricsRegistry`](crate::MetricsRegistry) gives out then records twice:
//! into its Prometheus recorder (for `/metrics`) and into an instrument of an OpenTelemetry
//! `Meter` of the same name and attributes, which the SDK's periodic reader exports. Counters
//! set to an absolute value (the load-board series) add the difference; gauges keep their value
//! to apply increments; histograms take the same buckets as in Prometheus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{CounterFn, GaugeFn, HistogramFn, Key};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::registry::{DURATION_BUCKETS, SIZE_BUCKETS};

/// Makes the OpenTelemetry twin of each handle.
///
/// Handles are made once per key and kept: the load-board series are registered again at every
/// scrape, and a counter's twin must remember the total it has added.
#[derive(Debug)]
pub(crate) struct OtelMirror {
    meter: Meter,
    counters: Mutex<HashMap<Key, metrics::Counter>>,
    gauges: Mutex<HashMap<Key, metrics::Gauge>>,
    histograms: Mutex<HashMap<Key, metrics::Histogram>>,
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels().map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned())).collect()
}

impl OtelMirror {
    pub(crate) fn new(meter: Meter) -> Self {
        Self { meter, counters: Mutex::default(), gauges: Mutex::default(), histograms: Mutex::default() }
    }

    /// Forgets the twins of the keys `keep` refuses (retired series): a series registered again
    /// under such a key starts a new twin.
    pub(crate) fn retain(&self, keep: impl Fn(&Key) -> bool) {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner).retain(|key, _| keep(key));
        self.gauges.lock().unwrap_or_else(PoisonError::into_inner).retain(|key, _| keep(key));
        self.histograms.lock().unwrap_or_else(PoisonError::into_inner).retain(|key, _| keep(key));
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
                let counter = self.meter.u64_counter(key.name().to_owned()).build();
                metrics::Counter::from_arc(Arc::new(MirroredCounter {
                    prometheus: prometheus(),
                    counter,
                    attributes: attributes(key),
                    total: AtomicU64::new(0),
                }))
            })
            .clone()
    }

    pub(crate) fn gauge(&self, key: &Key, prometheus: impl FnOnce() -> metrics::Gauge) -> metrics::Gauge {
        let mut gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        gauges
            .entry(key.clone())
            .or_insert_with(|| {
                let gauge = self.meter.f64_gauge(key.name().to_owned()).build();
                metrics::Gauge::from_arc(Arc::new(MirroredGauge {
                    prometheus: prometheus(),
                    gauge,
                    attributes: attributes(key),
                    value: AtomicU64::new(0f64.to_bits()),
                }))
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
    counter: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
    /// The total so far, so that `absolute` adds the difference.
    total: AtomicU64,
}

impl CounterFn for MirroredCounter {
    fn increment(&self, value: u64) {
        self.prometheus.increment(value);
        self.total.fetch_add(value, Ordering::Relaxed);
        self.counter.add(value, &self.attributes);
    }

    fn absolute(&self, value: u64) {
        self.prometheus.absolute(value);
        let before = self.total.fetch_max(value, Ordering::Relaxed);
        if value > before {
            self.counter.add(value - before, &self.attributes);
        }
    }
}

struct MirroredGauge {
    prometheus: metrics::Gauge,
    gauge: opentelemetry::metrics::Gauge<f64>,
    attributes: Vec<KeyValue>,
    /// The value as `f64` bits, so that increments apply to it.
    value: AtomicU64,
}

impl MirroredGauge {
    fn update(&self, change: impl Fn(f64) -> f64) {
        let mut now = 0.0;
        let _ = self.value.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
            now = change(f64::from_bits(bits));
            Some(now.to_bits())
        });
        self.gauge.record(now, &self.attributes);
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
