//! The scaler `switchyard autoscale` drives: a Kubernetes workload, or nothing (`--dry-run`).

use switchyard_autoscale::{PoolSize, Resources, ScaleError, Scaler};

use super::{AutoscaleArgs, AutoscaleError};

/// The scaler chosen on the command line.
#[derive(Debug)]
pub enum CliScaler {
    /// `--dry-run`: the pool follows every decision at once; nothing is scaled.
    DryRun(PoolSize),
    /// `--deployment` or `--statefulset`: its `scale` subresource, through the API server.
    #[cfg(feature = "kubernetes")]
    Kubernetes(Box<switchyard_autoscale::scaler::kubernetes::KubernetesScaler>),
}

impl CliScaler {
    /// The scaler `args` name; connects to the API server (in-cluster service account or
    /// `KUBECONFIG`) for a workload.
    pub async fn from_args(args: &AutoscaleArgs) -> Result<Self, AutoscaleError> {
        if args.dry_run {
            let n = args.replicas;
            return Ok(Self::DryRun(PoolSize { desired: n, current: n, ready: n }));
        }
        let workload = match (&args.deployment, &args.statefulset) {
            (Some(name), None) => ("deployment", name),
            (None, Some(name)) => ("statefulset", name),
            _ => {
                return Err(AutoscaleError::Flag {
                    flag: "deployment",
                    reason:
                        "name the workload to scale: --deployment NAME or --statefulset NAME (or --dry-run)"
                            .into(),
                });
            }
        };
        Self::kubernetes(args, workload).await
    }

    #[cfg(feature = "kubernetes")]
    async fn kubernetes(
        args: &AutoscaleArgs,
        (kind, name): (&'static str, &String),
    ) -> Result<Self, AutoscaleError> {
        use switchyard_autoscale::scaler::kubernetes::{KubernetesScaler, Workload};
        let kind = if kind == "deployment" { Workload::Deployment } else { Workload::StatefulSet };
        let scaler = KubernetesScaler::try_default(&args.namespace, kind, name.clone())
            .await?
            .with_container(args.container.clone());
        Ok(Self::Kubernetes(Box::new(scaler)))
    }

    #[cfg(not(feature = "kubernetes"))]
    async fn kubernetes(
        _: &AutoscaleArgs,
        (kind, _): (&'static str, &String),
    ) -> Result<Self, AutoscaleError> {
        Err(AutoscaleError::Flag {
            flag: kind,
            reason: "this switchyard was built without the `kubernetes` feature (cargo build --features kubernetes)"
                .into(),
        })
    }

    /// Re-reads the pool's size (from the API server for a workload).
    pub async fn refresh(&mut self) -> Result<PoolSize, ScaleError> {
        match self {
            Self::DryRun(size) => Ok(*size),
            #[cfg(feature = "kubernetes")]
            Self::Kubernetes(k) => k.refresh().await,
        }
    }

    /// What it scales, for the log.
    pub fn describe(&self) -> String {
        match self {
            Self::DryRun(_) => "nothing (dry run)".into(),
            #[cfg(feature = "kubernetes")]
            Self::Kubernetes(k) => format!("{k:?}"),
        }
    }
}

impl Scaler for CliScaler {
    async fn set_desired(&mut self, replicas: u32) -> Result<(), ScaleError> {
        match self {
            Self::DryRun(size) => {
                tracing::info!(replicas, "autoscale: dry run: not scaled");
                *size = PoolSize { desired: replicas, current: replicas, ready: replicas };
                Ok(())
            }
            #[cfg(feature = "kubernetes")]
            Self::Kubernetes(k) => k.set_desired(replicas).await,
        }
    }

    fn size(&self) -> PoolSize {
        match self {
            Self::DryRun(size) => *size,
            #[cfg(feature = "kubernetes")]
            Self::Kubernetes(k) => k.size(),
        }
    }

    async fn set_resources(&mut self, requests: Resources) -> Result<u32, ScaleError> {
        match self {
            Self::DryRun(_) => {
                tracing::info!(cpu = %requests.cpu_quantity(), memory = %requests.memory_quantity(), "autoscale: dry run: not resized");
                Ok(0)
            }
            #[cfg(feature = "kubernetes")]
            Self::Kubernetes(k) => k.set_resources(requests).await,
        }
    }
}
