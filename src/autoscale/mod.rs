//! `switchyard autoscale`: the autoscaler as a process, for a fleet of gateways in production.
//!
//! ```text
//! Prometheus (scrapes every gateway's /metrics) ─▶ PrometheusSignals ─▶ LlmAware ─▶ KubernetesScaler
//!                                                                  └─▶ Vertical ─▶ pods/resize
//! ```
//!
//! The signals are the gateways' exported boards, summed by PromQL over the gateways
//! ([`switchyard_autoscale::prometheus`]); the recommender is Switchyard's LLM-aware default
//! ([`LlmAware`]) with its main knobs on the command line, or with `--recommender` one of the
//! baselines it is measured against, faithful to their published algorithms and defaults: the
//! Kubernetes HPA on requests in flight per replica ([`Hpa`], `--target-in-flight`), Knative's KPA
//! on concurrency ([`Kpa`], `--target-in-flight` as the container-concurrency target) and llm-d's
//! saturation analyzer on KV-cache use and queue length ([`Saturation`]). Each decides at its own
//! interval (the HPA's 15 s sync, the KPA's 2 s tick, llm-d's 60 s cycle; `--interval` for the
//! default); the scaler sets the `scale`
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
    Autoscaler, Bounds, Hpa, HpaConfig, Kpa, KpaConfig, LlmAware, LlmAwareConfig, PrometheusConfig,
    PrometheusError, PrometheusSignals, Recommender, Saturation, SaturationConfig, Vertical, VerticalConfig,
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

/// Which recommender sizes the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecommenderKind {
    /// Switchyard's LLM-aware recommender ([`LlmAware`]): work in tokens against the replicas'
    /// learnt capacity, cold starts counted.
    Switchyard,
    /// The Kubernetes HPA's algorithm on requests in flight per ready replica ([`Hpa`]).
    Hpa,
    /// Knative's KPA on concurrency, with its panic mode ([`Kpa`]).
    Kpa,
    /// llm-d's saturation-based autoscaler on KV-cache use and queue length ([`Saturation`]).
    #[value(name = "llm-d")]
    LlmD,
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
    /// The recommender: Switchyard's LLM-aware default, or a baseline (`hpa`, `kpa`, `llm-d`)
    /// with its published defaults.
    #[arg(long, value_enum, default_value_t = RecommenderKind::Switchyard)]
    pub recommender: RecommenderKind,
    /// `--recommender hpa`: the target requests in flight per ready replica (8 by default);
    /// `kpa`: the container-concurrency target per replica (Knative's 100 by default), of which
    /// the KPA aims at 70 %.
    #[arg(long, value_name = "N")]
    pub target_in_flight: Option<f64>,
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
    /// A scale-down needs the 75th percentile of this window's demands to fit in fewer replicas
    /// (a fall of two replicas or more, only that of the last half cold start, at least a
    /// quarter of this window: see `--no-fast-scale-down`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub scale_down_window: Duration,
    /// At most one scale-down (to the count the window's demands fit in, or one more than the
    /// last half cold start's fit in after a fall of two or more) per this.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub scale_down_step: Duration,
    /// Scale down only when the whole `--scale-down-window` fits in fewer replicas: without
    /// this, a fall of two replicas or more goes down to one more than the last half cold start
    /// fits in (at least a quarter of the window; not while replicas start, nor within that
    /// time of a scale-up), and the last replica waits for the window.
    #[arg(long)]
    pub no_fast_scale_down: bool,
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
    /// The recommender `--recommender` names, its flags validated.
    pub fn build_recommender(&self) -> Result<Box<dyn Recommender>, AutoscaleError> {
        let config = self.recommender()?;
        let bounds = config.bounds;
        let target = match (self.recommender, self.target_in_flight) {
            (RecommenderKind::Switchyard | RecommenderKind::LlmD, Some(_)) => {
                return Err(AutoscaleError::Flag {
                    flag: "target-in-flight",
                    reason: "is read by --recommender hpa and kpa only".into(),
                });
            }
            (_, Some(target)) if !(target.is_finite() && target > 0.0) => {
                return Err(AutoscaleError::Flag {
                    flag: "target-in-flight",
                    reason: format!("{target} is not a positive number"),
                });
            }
            (_, target) => target,
        };
        Ok(match self.recommender {
            RecommenderKind::Switchyard => Box::new(LlmAware::new(config)),
            RecommenderKind::Hpa => {
                let default = HpaConfig::default();
                Box::new(Hpa::new(HpaConfig { target: target.unwrap_or(default.target), bounds, ..default }))
            }
            RecommenderKind::Kpa => {
                let default = KpaConfig::default();
                Box::new(Kpa::new(KpaConfig { target: target.unwrap_or(default.target), bounds, ..default }))
            }
            RecommenderKind::LlmD => {
                Box::new(Saturation::new(SaturationConfig { bounds, ..Default::default() }))
            }
        })
    }

    /// The LLM-aware recommender's settings (and the bounds every recommender takes), validated.
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
        if self.idle_to_zero.is_some() && self.recommender != RecommenderKind::Switchyard {
            return Err(flag("idle-to-zero", "is read by --recommender switchyard only".into()));
        }
        Ok(LlmAwareConfig {
            target_utilisation: self.target_utilisation,
            interval: self.interval,
            cold_start: self.cold_start,
            scale_down_window: self.scale_down_window,
            scale_down_step: self.scale_down_step,
            fast_down: !self.no_fast_scale_down,
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
    let recommender = args.build_recommender()?;
    let interval = recommender.interval();
    let signals = args.signals()?;
    let mut scaler = CliScaler::from_args(&args).await?;
    let size = scaler.refresh().await?;
    tracing::info!(
        target_workload = %scaler.describe(),
        desired = size.desired,
        ready = size.ready,
        prometheus = %args.prometheus,
        pool = %args.pool,
        recommender = recommender.name(),
        interval = ?interval,
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

    let mut autoscaler = Autoscaler::new(signals.poll(interval), recommender, scaler);
    if args.vertical != VerticalMode::Off {
        let vertical = Vertical::new(VerticalConfig::default());
        autoscaler = autoscaler.with_vertical(vertical, args.vertical == VerticalMode::Apply);
    }
    let mut tick = tokio::time::interval(interval);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AutoscaleArgs,
    }

    fn args(extra: &[&str]) -> AutoscaleArgs {
        let base = ["autoscale", "--prometheus", "http://127.0.0.1:9", "--dry-run"];
        Cli::try_parse_from(base.iter().chain(extra)).unwrap().args
    }

    #[test]
    fn the_fast_way_down_is_on_unless_turned_off() {
        assert!(args(&[]).recommender().unwrap().fast_down);
        assert!(!args(&["--no-fast-scale-down"]).recommender().unwrap().fast_down);
    }

    #[test]
    fn the_recommender_flag_picks_the_algorithm_and_its_interval() {
        let picked = |extra: &[&str]| {
            let r = args(extra).build_recommender().unwrap();
            (r.name(), r.interval())
        };
        assert_eq!(picked(&["--interval", "3s"]), ("switchyard", Duration::from_secs(3)));
        assert_eq!(picked(&["--recommender", "hpa"]), ("hpa", Duration::from_secs(15)));
        assert_eq!(
            picked(&["--recommender", "kpa", "--target-in-flight", "16"]),
            ("kpa", Duration::from_secs(2))
        );
        assert_eq!(picked(&["--recommender", "llm-d"]), ("llm-d", Duration::from_secs(60)));
    }

    #[test]
    fn a_flag_the_chosen_recommender_does_not_read_is_an_error_naming_it() {
        let error = |extra: &[&str]| args(extra).build_recommender().err().map(|e| e.to_string());
        let e = error(&["--target-in-flight", "8"]).unwrap();
        assert!(e.starts_with("--target-in-flight") && e.contains("hpa and kpa"), "{e}");
        let e = error(&["--recommender", "hpa", "--target-in-flight", "0"]).unwrap();
        assert!(e.starts_with("--target-in-flight") && e.contains("not a positive"), "{e}");
        let e = error(&["--recommender", "kpa", "--min-replicas", "0", "--idle-to-zero", "5m"]).unwrap();
        assert!(e.starts_with("--idle-to-zero") && e.contains("switchyard only"), "{e}");
        let e = error(&["--recommender", "llm-d", "--min-replicas", "3", "--max-replicas", "2"]).unwrap();
        assert!(e.starts_with("--min-replicas"), "{e}");
    }
}
