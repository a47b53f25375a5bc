//! The counters and gauges the [`ScrapeSource`](crate::ScrapeSource)s publish, made anew at every
//! scrape.
//!
//! A source sets the whole of its state at each scrape (a board's endpoints, a limit's figures:
//! absolute counts and current values), so its series can be rebuilt each time rather than kept:
//! a series a source no longer publishes (an endpoint gone from its pool's board) then leaves
//! `/metrics` at the next scrape, and a live one loses nothing, since its value comes from the
//! source, not from what the registry remembers. The `metrics` exporter's recorder cannot forget
//! a series, so these are kept and rendered here.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use crate::histogram::escape;
use crate::registry::MetricsRegistry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One name's series: counts for a counter, `f64` bits for a gauge.
#[derive(Debug)]
struct Family {
    kind: Kind,
    series: HashMap<Key, Arc<AtomicU64>>,
}

/// The series one scrape's sources published, by name.
#[derive(Debug, Default)]
pub(crate) struct ScrapedSeries {
    families: BTreeMap<String, Family>,
}

impl ScrapedSeries {
    /// Writes every family in the Prometheus text format, with its `# HELP` from `help`.
    pub(crate) fn render(&self, help: &HashMap<String, String>, out: &mut String) {
        for (name, family) in self.families.iter().filter(|(_, f)| !f.series.is_empty()) {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            if let Some(help) = help.get(name) {
                let help = help.replace('\\', r"\\").replace('\n', r"\n");
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let mut series: Vec<_> = family.series.iter().collect();
            series.sort_by(|a, b| a.0.labels().cmp(b.0.labels()));
            for (key, value) in series {
                out.push_str(name);
                let mut labels = key.labels().peekable();
                if labels.peek().is_some() {
                    out.push('{');
                    for (i, label) in labels.enumerate() {
                        let comma = if i == 0 { "" } else { "," };
                        let _ = write!(out, "{comma}{}=\"{}\"", label.key(), escape(label.value()));
                    }
                    out.push('}');
                }
                let bits = value.load(Ordering::Relaxed);
                match family.kind {
                    Kind::Counter => {
                        let _ = writeln!(out, " {bits}");
                    }
                    Kind::Gauge => {
                        let _ = writeln!(out, " {}", gauge_text(f64::from_bits(bits)));
                    }
                }
            }
        }
    }
}

/// A gauge's value as the text format writes it.
fn gauge_text(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

/// The recorder the sources publish into at one scrape: counters and gauges into a fresh
/// [`ScrapedSeries`] (and their OpenTelemetry twins, when the registry has them); descriptions
/// and histograms to the registry itself.
pub(crate) struct ScrapeRecorder<'a> {
    registry: &'a MetricsRegistry,
    families: Mutex<BTreeMap<String, Family>>,
}

impl<'a> ScrapeRecorder<'a> {
    pub(crate) fn new(registry: &'a MetricsRegistry) -> Self {
        Self { registry, families: Mutex::default() }
    }

    /// The series published.
    pub(crate) fn finish(self) -> ScrapedSeries {
        ScrapedSeries { families: self.families.into_inner().unwrap_or_else(PoisonError::into_inner) }
    }

    fn cell(&self, key: &Key, kind: Kind) -> Arc<AtomicU64> {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let family =
            families.entry(key.name().to_owned()).or_insert_with(|| Family { kind, series: HashMap::new() });
        if family.kind != kind {
            // One name, two kinds: the text format cannot say it; the first kind is kept and
            // this series goes nowhere.
            return Arc::default();
        }
        let initial = match kind {
            Kind::Counter => 0,
            Kind::Gauge => 0f64.to_bits(),
        };
        family.series.entry(key.clone()).or_insert_with(|| Arc::new(AtomicU64::new(initial))).clone()
    }
}

/// A scraped handle and its OpenTelemetry twin.
struct Twin<H> {
    cell: Arc<AtomicU64>,
    otel: H,
}

impl CounterFn for Twin<Counter> {
    fn increment(&self, value: u64) {
        CounterFn::increment(&*self.cell, value);
        self.otel.increment(value);
    }

    fn absolute(&self, value: u64) {
        CounterFn::absolute(&*self.cell, value);
        self.otel.absolute(value);
    }
}

impl GaugeFn for Twin<Gauge> {
    fn increment(&self, value: f64) {
        GaugeFn::increment(&*self.cell, value);
        self.otel.increment(value);
    }

    fn decrement(&self, value: f64) {
        GaugeFn::decrement(&*self.cell, value);
        self.otel.decrement(value);
    }

    fn set(&self, value: f64) {
        GaugeFn::set(&*self.cell, value);
        self.otel.set(value);
    }
}

impl Recorder for ScrapeRecorder<'_> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.registry.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.registry.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.registry.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let cell = self.cell(key, Kind::Counter);
        match self.registry.otel() {
            None => Counter::from_arc(cell),
            Some(otel) => {
                let twin = otel.counter(key, Counter::noop);
                Counter::from_arc(Arc::new(Twin { cell, otel: twin }))
            }
        }
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        let cell = self.cell(key, Kind::Gauge);
        match self.registry.otel() {
            None => Gauge::from_arc(cell),
            Some(otel) => {
                let twin = otel.gauge(key, Gauge::noop);
                Gauge::from_arc(Arc::new(Twin { cell, otel: twin }))
            }
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.registry.register_histogram(key, metadata)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use metrics::Label;

    use crate::registry::{METADATA, ScrapeSource};

    use super::*;

    /// Publishes a counter and a gauge per endpoint it holds; retires those it is told to.
    #[derive(Debug, Default)]
    struct Endpoints {
        ids: Mutex<Vec<(&'static str, u64)>>,
        gone: Mutex<Vec<&'static str>>,
    }

    impl ScrapeSource for Endpoints {
        fn publish(&self, recorder: &dyn Recorder) {
            for (id, count) in self.ids.lock().unwrap().iter() {
                let key = |name| Key::from_parts(name, vec![Label::new("endpoint", *id)]);
                recorder.register_counter(&key("x_total"), &METADATA).absolute(*count);
                recorder.register_gauge(&key("x_in_flight"), &METADATA).set(0.5);
            }
        }

        fn retired(&self) -> Vec<Vec<Label>> {
            self.gone.lock().unwrap().drain(..).map(|id| vec![Label::new("endpoint", id)]).collect()
        }
    }

    #[test]
    fn a_series_no_longer_published_leaves_and_a_retired_histogram_with_it() {
        let registry = MetricsRegistry::new();
        registry.describe_counter("x_total".into(), None, "Xs.".into());
        let source = Arc::new(Endpoints::default());
        registry.add_source(source.clone());
        *source.ids.lock().unwrap() = vec![("a", 3), ("b", 4)];
        let latency = |id| {
            registry.register_histogram(
                &Key::from_parts("x_seconds", vec![Label::new("endpoint", id)]),
                &METADATA,
            )
        };
        latency("a").record(0.01);
        latency("b").record(0.01);
        let text = registry.render();
        assert!(text.contains("# HELP x_total Xs.\n# TYPE x_total counter\n"), "{text}");
        for line in [
            "x_total{endpoint=\"a\"} 3\n",
            "x_total{endpoint=\"b\"} 4\n",
            "x_in_flight{endpoint=\"b\"} 0.5\n",
            "x_seconds_count{endpoint=\"b\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }

        // b leaves: its counter and gauge are not published, its histogram is retired.
        *source.ids.lock().unwrap() = vec![("a", 5)];
        source.gone.lock().unwrap().push("b");
        let before = registry.retirements();
        let text = registry.render();
        assert!(!text.contains("endpoint=\"b\""), "{text}");
        assert!(text.contains("x_total{endpoint=\"a\"} 5\n"), "{text}");
        assert!(text.contains("x_seconds_count{endpoint=\"a\"} 1\n"), "{text}");
        assert_eq!(registry.retirements(), before + 1);

        // Registered again, b's histogram starts anew; a's is the one it was.
        latency("b").record(0.02);
        latency("a").record(0.02);
        let text = registry.render();
        assert!(text.contains("x_seconds_count{endpoint=\"b\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_count{endpoint=\"a\"} 2\n"), "{text}");
    }

    #[test]
    fn gauges_render_as_the_text_format_writes_them() {
        assert_eq!(gauge_text(2.0), "2");
        assert_eq!(gauge_text(0.25), "0.25");
        assert_eq!(gauge_text(f64::INFINITY), "+Inf");
        assert_eq!(gauge_text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(gauge_text(f64::NAN), "NaN");
    }
}
