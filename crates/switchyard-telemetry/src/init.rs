//! `init`: telemetry set up from configuration or the standard `OTEL_*` environment.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::registry::MetricsRegistry;

/// How often metrics are exported over OTLP unless `OTEL_METRIC_EXPORT_INTERVAL` says: the
/// OpenTelemetry default.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// What [`init`] sets up, as read from the standard OpenTelemetry variables
/// ([`from_env`](Self::from_env)) or written by a program.
///
/// | variable | field | default |
/// | --- | --- | --- |
/// | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` | `otlp_endpoint` | none: no span is exported |
/// | `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` | `otlp_metrics_endpoint` | none: metrics only on `/metrics` |
/// | `OTEL_METRIC_EXPORT_INTERVAL` (ms) | `metrics_interval` | 60 000 |
/// | `OTEL_SERVICE_NAME` | `service_name` | the program's (`switchyard-gateway`, `switchyard-worker`) |
/// | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `sampler` | `parentbased_always_on` |
/// | `OTEL_SDK_DISABLED=true` | both endpoints cleared | |
/// | `OTEL_TRACES_EXPORTER=none`, `OTEL_METRICS_EXPORTER=none` | that endpoint cleared | |
/// | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` | must be `grpc` | `grpc` |
///
/// A value that cannot be used is not fatal: it leaves a warning naming the variable in
/// [`warnings`](Self::warnings) and its default in force, so that a typo in the environment
/// never stops a gateway from serving.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// Where spans go, over the OTLP gRPC protocol (`http://collector:4317`); `None`: nowhere.
    pub otlp_endpoint: Option<String>,
    /// Where the metrics go too, over OTLP/gRPC (besides `/metrics`); `None`: only `/metrics`.
    pub otlp_metrics_endpoint: Option<String>,
    /// How often metrics are exported over OTLP; `None`: every 60 s.
    pub metrics_interval: Option<Duration>,
    /// The `service.name` of the spans; `None`: the program's default.
    pub service_name: Option<String>,
    /// How spans are sampled; `None`: `parentbased_always_on`.
    pub sampler: Option<SamplerConfig>,
    /// What could not be used, each naming its variable.
    pub warnings: Vec<String>,
}

/// A sampler, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with its ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on`: the parent's decision, else on.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with its ratio.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
        }
    }
}

impl TelemetryConfig {
    /// The configuration the process's environment describes.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")))
    }

    /// The configuration these `OTEL_*` variables describe (tests pass their own).
    pub fn from_vars<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let get = |name: &str| vars.get(name).map(|v| v.trim());
        let mut config = Self::default();

        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = get(name)
                && protocol != "grpc"
            {
                config.warnings.push(format!(
                    "{name}={protocol:?} is not supported: switchyard exports over OTLP/gRPC (\"grpc\"), and does"
                ));
            }
        }
        let endpoint = |specific: &'static str, warnings: &mut Vec<String>| {
            let (name, endpoint) = get(specific)
                .map(|e| (specific, e))
                .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e)))?;
            match endpoint.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
                {
                    Some(endpoint.to_string())
                }
                _ => {
                    let warning = format!(
                        "{name}={endpoint:?} is not an http:// or https:// URL (e.g. http://localhost:4317): nothing is exported there"
                    );
                    if !warnings.contains(&warning) {
                        warnings.push(warning);
                    }
                    None
                }
            }
        };
        config.otlp_endpoint = endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &mut config.warnings);
        config.otlp_metrics_endpoint = endpoint("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &mut config.warnings);
        if let Some(ms) = get("OTEL_METRIC_EXPORT_INTERVAL") {
            match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => config.metrics_interval = Some(Duration::from_millis(ms)),
                _ => config.warnings.push(format!(
                    "OTEL_METRIC_EXPORT_INTERVAL={ms:?} is not a positive number of milliseconds: exporting every 60 s"
                )),
            }
        }
        match get("OTEL_SDK_DISABLED") {
            Some(v) if v.eq_ignore_ascii_case("true") => {
                (config.otlp_endpoint, config.otlp_metrics_endpoint) = (None, None);
            }
            Some(v) if v.eq_ignore_ascii_case("false") => {}
            Some(v) => config
                .warnings
                .push(format!("OTEL_SDK_DISABLED={v:?} is neither true nor false: taken as false")),
            None => {}
        }
        match get("OTEL_TRACES_EXPORTER") {
            Some("none") => config.otlp_endpoint = None,
            Some("otlp") | None => {}
            Some(other) => config.warnings.push(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported (\"otlp\" or \"none\"): exporting over OTLP"
            )),
        }
        match get("OTEL_METRICS_EXPORTER") {
            Some("none") => config.otlp_metrics_endpoint = None,
            Some("otlp" | "prometheus") | None => {}
            Some(other) => config.warnings.push(format!(
                "OTEL_METRICS_EXPORTER={other:?} is not supported (\"otlp\" or \"none\"; Prometheus is always on /metrics): exporting over OTLP"
            )),
        }
        config.service_name = get("OTEL_SERVICE_NAME").map(str::to_string);

        if let Some(name) = get("OTEL_TRACES_SAMPLER") {
            let ratio = || match get("OTEL_TRACES_SAMPLER_ARG") {
                None => Ok(1.0),
                Some(arg) => match arg.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(format!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio from 0 to 1")),
                },
            };
            let sampler = match name {
                "always_on" => Ok(SamplerConfig::AlwaysOn),
                "always_off" => Ok(SamplerConfig::AlwaysOff),
                "traceidratio" => ratio().map(SamplerConfig::TraceIdRatio),
                "parentbased_always_on" => Ok(SamplerConfig::ParentBasedAlwaysOn),
                "parentbased_always_off" => Ok(SamplerConfig::ParentBasedAlwaysOff),
                "parentbased_traceidratio" => ratio().map(SamplerConfig::ParentBasedTraceIdRatio),
                other => Err(format!(
                    "OTEL_TRACES_SAMPLER={other:?} is not a known sampler (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                )),
            };
            match sampler {
                Ok(s) => config.sampler = Some(s),
                Err(e) => config.warnings.push(format!("{e}: using parentbased_always_on")),
            }
        }
        config
    }

    /// The same configuration, exporting spans to `endpoint`.
    pub fn with_otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// The same configuration, exporting metrics to `endpoint` every `interval`.
    pub fn with_otlp_metrics(mut self, endpoint: impl Into<String>, interval: Duration) -> Self {
        self.otlp_metrics_endpoint = Some(endpoint.into());
        self.metrics_interval = Some(interval);
        self
    }

    /// The same configuration, with this `service.name`.
    pub fn with_service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }
}

/// What [`init`] set up: the metrics registry, and the span exporter if one is configured.
/// Dropping it flushes and stops the exporter.
pub struct Telemetry {
    registry: MetricsRegistry,
    meter_provider: Option<SdkMeterProvider>,
    /// Publishes the registry's scrape sources for the OTLP exports (their instruments cannot be
    /// made inside the SDK's collection, so not in an observable callback).
    publisher: Option<tokio::task::JoinHandle<()>>,
    provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    warnings: Vec<String>,
}

impl Telemetry {
    /// The registry `/metrics` renders.
    pub fn registry(&self) -> &MetricsRegistry {
        &self.registry
    }

    /// Whether spans are exported: the RPC layers should make them.
    pub fn is_tracing(&self) -> bool {
        self.tracer.is_some()
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for the exporter, if one is
    /// configured; add it to the program's subscriber.
    pub fn tracing_layer<S>(&self) -> Option<impl Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.tracer.clone()?;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
    }

    /// The values that could not be used, each naming its variable: log them as warnings.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Exports the spans still buffered, and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tracer = None;
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("telemetry: exporting the last spans failed: {e}");
        }
        if let Some(publisher) = self.publisher.take() {
            publisher.abort();
        }
        if self.meter_provider.is_some() {
            // The last export shows the sources as they are now.
            self.registry.publish();
        }
        if let Some(provider) = self.meter_provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("telemetry: exporting the last metrics failed: {e}");
        }
    }

    /// Whether metrics are exported over OTLP (besides `/metrics`).
    pub fn is_exporting_metrics(&self) -> bool {
        self.meter_provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.is_tracing())
            .field("metrics", &self.is_exporting_metrics())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// Sets up telemetry from `config` for the program `default_service_name`
/// (`switchyard-gateway`, `switchyard-worker`): a [`MetricsRegistry`] for `/metrics`, and, if an
/// OTLP endpoint is configured, an exporter of spans over OTLP/gRPC (batched, off the request
/// path) with the configured sampler and a `service.name`. With no endpoint nothing is exported
/// and nothing is started: [`Telemetry::is_tracing`] is false and the RPC layers make no spans.
///
/// Installs nothing globally (a program adds [`Telemetry::tracing_layer`] to its subscriber and
/// may [`install`](MetricsRegistry::install) the registry); must run inside a Tokio runtime when
/// an endpoint is configured (the exporter's gRPC channel lives there). An endpoint the exporter
/// cannot use is a warning, not an error.
pub fn init(default_service_name: &str, config: &TelemetryConfig) -> Telemetry {
    let mut warnings = config.warnings.clone();
    let name = config.service_name.clone().unwrap_or_else(|| default_service_name.to_string());
    let (registry, meter_provider, publisher) = match metrics_exporter(config, &name) {
        None => (MetricsRegistry::new(), None, None),
        Some(Err(warning)) => {
            warnings.push(warning);
            (MetricsRegistry::new(), None, None)
        }
        Some(Ok(provider)) => {
            let registry = MetricsRegistry::with_meter(provider.meter("switchyard"));
            // The load-board series are read twice per export interval, so that an export is at
            // most half an interval behind them (a scrape reads them at the scrape).
            let every =
                (config.metrics_interval.unwrap_or(DEFAULT_METRICS_INTERVAL) / 2).max(Duration::from_secs(1));
            let weak = registry.downgrade();
            let publisher = tokio::runtime::Handle::try_current().ok().map(|runtime| {
                runtime.spawn(async move {
                    let mut ticks = tokio::time::interval(every);
                    loop {
                        ticks.tick().await;
                        match weak.upgrade() {
                            Some(registry) => registry.publish(),
                            None => break,
                        }
                    }
                })
            });
            (registry, Some(provider), publisher)
        }
    };
    let (provider, tracer) = match &config.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(Duration::from_secs(10))
                .build();
            match exporter {
                Ok(exporter) => {
                    let sampler = config.sampler.unwrap_or(SamplerConfig::ParentBasedAlwaysOn).sampler();
                    let provider = SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_sampler(sampler)
                        .with_resource(Resource::builder().with_service_name(name.clone()).build())
                        .build();
                    let tracer = provider.tracer("switchyard");
                    (Some(provider), Some(tracer))
                }
                Err(e) => {
                    warnings.push(format!(
                        "OTLP endpoint {endpoint:?} cannot be used ({e}): no spans are exported"
                    ));
                    (None, None)
                }
            }
        }
    };
    Telemetry { registry, meter_provider, publisher, provider, tracer, warnings }
}

/// The OTLP metrics pipeline `config` asks for: `None` if none, a warning if it cannot be built.
fn metrics_exporter(
    config: &TelemetryConfig,
    service_name: &str,
) -> Option<Result<SdkMeterProvider, String>> {
    let endpoint = config.otlp_metrics_endpoint.as_ref()?;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(10))
        .build();
    Some(match exporter {
        Ok(exporter) => {
            let reader = PeriodicReader::builder(exporter)
                .with_interval(config.metrics_interval.unwrap_or(DEFAULT_METRICS_INTERVAL))
                .build();
            Ok(SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(Resource::builder().with_service_name(service_name.to_string()).build())
                .build())
        }
        Err(e) => {
            Err(format!("OTLP metrics endpoint {endpoint:?} cannot be used ({e}): metrics only on /metrics"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_exports_nothing_and_warns_of_nothing() {
        let config = TelemetryConfig::from_vars(Vec::<(String, String)>::new());
        assert_eq!(config, TelemetryConfig::default());
        let telemetry = init("switchyard-test", &config);
        assert!(!telemetry.is_tracing());
        assert!(telemetry.tracing_layer::<tracing_subscriber::Registry>().is_none());
        assert!(telemetry.warnings().is_empty());
    }

    #[test]
    fn the_standard_variables_are_read_and_bad_values_are_warnings_naming_them() {
        let config = TelemetryConfig::from_vars([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "edge"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        assert_eq!(config.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(config.service_name.as_deref(), Some("edge"));
        assert_eq!(config.sampler, Some(SamplerConfig::ParentBasedTraceIdRatio(0.25)));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);

        let config = TelemetryConfig::from_vars([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!((config.otlp_endpoint.as_deref(), config.sampler), (None, None));
        for name in ["OTEL_EXPORTER_OTLP_ENDPOINT=", "OTEL_TRACES_SAMPLER=", "OTEL_EXPORTER_OTLP_PROTOCOL="] {
            assert!(config.warnings.iter().any(|w| w.starts_with(name)), "{name}: {:?}", config.warnings);
        }

        let config = TelemetryConfig::from_vars([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert_eq!((config.otlp_endpoint.as_deref(), config.sampler), (None, None), "disabled");
        assert_eq!(config.otlp_metrics_endpoint, None, "disabled");
        assert!(
            config.warnings.iter().any(|w| w.starts_with("OTEL_TRACES_SAMPLER_ARG=")),
            "{:?}",
            config.warnings
        );

        let config = TelemetryConfig::from_vars([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://metrics:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ]);
        assert_eq!(
            (config.otlp_endpoint.as_deref(), config.otlp_metrics_endpoint.as_deref()),
            (None, Some("https://metrics:4317"))
        );
        assert!(
            config.warnings.iter().any(|w| w.starts_with("OTEL_METRIC_EXPORT_INTERVAL=")),
            "{:?}",
            config.warnings
        );
        let config = TelemetryConfig::from_vars([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        assert_eq!(
            (config.otlp_endpoint.as_deref(), config.otlp_metrics_endpoint.as_deref()),
            (Some("http://collector:4317"), None)
        );
    }
}
