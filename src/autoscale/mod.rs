//! `switchyard autoscale`: the autoscaler as a process, for a fleet of gateways in production.
//!
//! ```text
//! Prometheus (scrapes every gateway's /metrics) ─▶ PrometheusSignals ─▶ LlmAware ─▶ KubernetesScaler
//!                                                                  └─▶ Vertical ─▶ pods/resize
//! ```
//!
//! The signals are the gateways' exported boards, summed by PromQL over the gateways
//! ([`switchyard_autoscale::prometheus`]); the recommender is Switchyard's LLM-aware default
//! ([`LlmAware`]) with its main knobs on the command line; the scaler sets the `scale`
//! subresource of the worker Deployment or StatefulSet (`KubernetesScaler`, a build with
//! `--features kubernetes`), and with `--vertical apply` resizes its pods in place. Every
//! decision is logged with its inputs and exported through the `metrics` facade
//! (`switchyard_autoscale_{desired,current,ready}_replicas`, ...), served on
//! `--metrics-listen`.
//!
//! Before each decision the scaler re-reads the workload's sizes from the API server, so that a
//! change made by someone else (`kubectl scale`, a rollout) is what the recommender sees. A failed
//! read or write is logged and the decision skipped; the next interval tries again. Missing
//! signals (Prometheus down, a gateway not scraped) keep the count, never lower it.
//!
//! `--dry-run` replaces the Kubernetes scaler with one that only logs: the pool is taken to follow
//! every decision at once, from `--replicas`. It is how to watch what the recommender would do
//! against production signals before letting it act.

mod scaler;

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_autoscale::{
    Autoscaler, Bounds, LlmAware, LlmAwareConfig, PrometheusConfig, PrometheusError, PrometheusSignals,
    Vertical, VerticalConfig,
};
use switchyard_telemetry::MetricsRegistry;
use tokio::net::TcpListener;

pub use scaler::CliScaler;

/// What to do with the vertical recommendation (the worker container's CPU and memory requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerticalMode {
    /// No vertical recommendation.
    Off,
    /// Log and export it (`switchyard_autoscale_recommended_*`), change nothing.
    Recommend,
    /// Also resize the workload's running pods in place (Kubernetes in-place pod resize).
    Apply,
}

/// `switchyard autoscale`.
#[derive(Debug, clap::Args)]
pub struct AutoscaleArgs {
    /// The Prometheus server that scrapes the gateways, `http://HOST:PORT[/PATH]`: the signals are
    /// its answers, summed over the gateways.
    #[arg(long, value_name = "URL")]
    pub prometheus: String,
    /// The gateways' pool to size (the `pool` label of their series).
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// PromQL label matchers (without braces) picking the gateways' scrape targets.
    #[arg(long, default_value = r#"job="switchyard-gateway""#)]
    pub selector: String,
    /// The window of the arrival and work rates' `rate()` (whole seconds, at least two scrape
    /// intervals).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub rate_window: Duration,
    /// A gateway scraped longer ago than this, or a replica report older, is a missing signal.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub max_age: Duration,
    /// The worker Deployment to scale (`apps/v1`, in `--namespace`).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["statefulset", "dry_run"])]
    pub deployment: Option<String>,
    /// The worker StatefulSet to scale instead of a Deployment.
    #[arg(long, value_name = "NAME", conflicts_with = "dry_run")]
    pub statefulset: Option<String>,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The worker's container in the pod (what `--vertical apply` resizes).
    #[arg(long, default_value = "worker")]
    pub container: String,
    /// Scale nothing: log and export each decision as if the pool followed it at once.
    #[arg(long)]
    pub dry_run: bool,
    /// `--dry-run`: the pool's size at start.
    #[arg(long, default_value_t = 1, requires = "dry_run")]
    pub replicas: u32,
    /// Fewest replicas.
    #[arg(long, default_value_t = 1)]
    pub min_replicas: u32,
    /// Most replicas.
    #[arg(long, default_value_t = 8)]
    pub max_replicas: u32,
    /// Share of the replicas' learnt capacity to plan for (see `LlmAware`'s docs on calibrating
    /// it).
    #[arg(long, default_value_t = LlmAwareConfig::default().target_utilisation)]
    pub target_utilisation: f64,
    /// A replica's cold start (weights to load): how far ahead the load's trend is projected.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,
    /// A scale-down needs the 75th percentile of this window's demands to fit in fewer replicas.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub scale_down_window: Duration,
    /// At most one scale-down (to the count the window's demands fit in) per this.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub scale_down_step: Duration,
    /// How often to decide (and to query Prometheus).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// With `--min-replicas 0`: scale to zero after the pool has been idle this long.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_to_zero: Option<Duration>,
    /// The worker's CPU and memory requests beside the count: off, recommend (log and export),
    /// or apply (resize the running pods in place).
    #[arg(long, value_enum, default_value_t = VerticalMode::Off)]
    pub vertical: VerticalMode,
    /// Serve Prometheus metrics (`GET /metrics`: the decisions) on this address.
    #[arg(long, value_parser = crate::listen::parse_listen_address)]
    pub metrics_listen: Option<SocketAddr>,
    /// The registry `/metrics` renders (`switchyard_telemetry::init`'s); a new one if `None`.
    #[arg(skip)]
    pub registry: Option<MetricsRegistry>,
}

/// Why `switchyard autoscale` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// A flag's value is not usable.
    #[error("--{flag}: {reason}")]
    Flag {
        /// The flag, without its dashes.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The Prometheus URL is not usable.
    #[error("--prometheus: {0}")]
    Prometheus(#[from] PrometheusError),
    /// The scaler could not read or set the workload.
    #[error("{0}")]
    Scale(#[from] switchyard_autoscale::ScaleError),
    /// The metrics address could not be bound.
    #[error("--metrics-listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

impl AutoscaleArgs {
    /// The recommender's settings, validated.
    pub fn recommender(&self) -> Result<LlmAwareConfig, AutoscaleError> {
        let flag = |flag, reason: String| AutoscaleError::Flag { flag, reason };
        if self.min_replicas > self.max_replicas {
            return Err(flag(
                "min-replicas",
                format!("{} is above --max-replicas {}", self.min_replicas, self.max_replicas),
            ));
        }
        if self.max_replicas == 0 {
            return Err(flag("max-replicas", "must be at least 1".into()));
        }
        if !(self.target_utilisation > 0.0 && self.target_utilisation <= 2.0) {
            return Err(flag("target-utilisation", format!("{} is not in (0, 2]", self.target_utilisation)));
        }
        if self.interval.is_zero() {
            return Err(flag("interval", "must be above zero".into()));
        }
        if self.idle_to_zero.is_some() && self.min_replicas > 0 {
            return Err(flag("idle-to-zero", "needs --min-replicas 0".into()));
        }
        Ok(LlmAwareConfig {
            target_utilisation: self.target_utilisation,
            interval: self.interval,
            cold_start: self.cold_start,
            scale_down_window: self.scale_down_window,
            scale_down_step: self.scale_down_step,
            idle_to_zero: self.idle_to_zero,
            bounds: Bounds { min: self.min_replicas, max: self.max_replicas },
            ..LlmAwareConfig::default()
        })
    }

    /// The signal source's settings.
    pub fn signals(&self) -> Result<PrometheusSignals, AutoscaleError> {
        if self.rate_window < Duration::from_secs(1) {
            return Err(AutoscaleError::Flag { flag: "rate-window", reason: "must be at least 1s".into() });
        }
        let mut config = PrometheusConfig::new(self.prometheus.clone(), self.pool.clone());
        config.selector = self.selector.clone();
        config.rate_window = self.rate_window;
        config.max_age = self.max_age;
        Ok(PrometheusSignals::new(config)?)
    }
}

/// Runs the autoscaler until `shutdown` completes. Fails at start on a bad flag, an unusable
/// Prometheus URL, or a workload the API server does not let it read; after that, errors are
/// logged and the next interval tries again.
pub async fn run(args: AutoscaleArgs, shutdown: impl Future<Output = ()>) -> Result<(), AutoscaleError> {
    let config = args.recommender()?;
    let signals = args.signals()?;
    let mut scaler = CliScaler::from_args(&args).await?;
    let size = scaler.refresh().await?;
    tracing::info!(
        target_workload = %scaler.describe(),
        desired = size.desired,
        ready = size.ready,
        prometheus = %args.prometheus,
        pool = %args.pool,
        "autoscale: started"
    );

    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.map_err(|source| AutoscaleError::Bind { addr, source })?;
            let registry = args.registry.clone().unwrap_or_default();
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("metrics serving on {addr} (GET /metrics)");
            }
            Some(tokio::spawn(crate::worker::serve_metrics(listener, registry, async {
                let _ = metrics_stopped.await;
            })))
        }
        None => None,
    };

    let mut autoscaler = Autoscaler::new(signals.poll(args.interval), LlmAware::new(config), scaler);
    if args.vertical != VerticalMode::Off {
        let vertical = Vertical::new(VerticalConfig::default());
        autoscaler = autoscaler.with_vertical(vertical, args.vertical == VerticalMode::Apply);
    }
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first fetch is under way: decide from the second tick on.
    tick.tick().await;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => break,
        }
        if let Err(error) = autoscaler.scaler_mut().refresh().await {
            tracing::warn!(%error, "autoscale: the workload's size is unknown: no decision");
            continue;
        }
        if let Err(error) = autoscaler.step().await {
            tracing::error!(%error, "autoscale: the decision could not be applied");
        }
    }
    tracing::info!("autoscale: stopped");
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    Ok(())
}
