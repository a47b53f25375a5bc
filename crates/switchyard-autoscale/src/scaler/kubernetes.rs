//! The Kubernetes scaler: sets the `scale` subresource of a Deployment or StatefulSet through
//! `kube`, as `kubectl scale` and the HPA do.
//!
//! Kubernetes owns the rest of the replica's life: the Deployment's pods start, turn ready by
//! their readiness probe (the worker's gRPC health), and join the Service's EndpointSlices, which
//! the gateway follows with the `kubernetes` discovery source; a pod scaled away is terminating,
//! its EndpointSlice condition says so and the balancer drains it, while the kubelet sends it
//! SIGTERM (the worker reports NOT_SERVING, serves on for its grace, then drains) and SIGKILL
//! after `terminationGracePeriodSeconds`. So this scaler only writes the count
//! (`PATCH .../deployments/NAME/scale`, a merge patch of `spec.replicas`) and reads the sizes
//! back (`GET .../scale` for desired and current, the workload's `status.readyReplicas` for
//! ready).
//!
//! The service account needs `get` and `patch` on `deployments/scale` (or
//! `statefulsets/scale`) and `get` on the workload itself (its status is read from the object):
//! `deploy/kubernetes/rbac.yaml` grants exactly that for the worker Deployment.
//!
//! # Vertical: resizing the worker's pods in place
//!
//! [`Scaler::set_resources`] applies a [vertical recommendation](crate::vertical) with Kubernetes'
//! in-place pod resize (beta and on by default since 1.33): for every running pod of the workload
//! (listed by the selector its `scale` reports), a strategic merge patch of the container's
//! `resources.requests` (`cpu`, `memory`) through the pod's `resize` subresource
//! (`PATCH /api/v1/namespaces/NS/pods/NAME/resize`). The pods keep running: with the container's
//! `resizePolicy` of `NotRequired` for both (as `deploy/kubernetes/worker.yaml` sets) the kubelet
//! changes their cgroups without a restart, so no weights are reloaded.
//!
//! The Deployment's template is deliberately not patched: changing it starts a rollout, which
//! replaces every pod (for an LLM, a cold start each). A pod the Deployment creates later starts
//! with the template's requests, and the next recommendation resizes it too. Only requests are
//! patched, never limits (Kubernetes refuses to lower a memory limit in place). The service
//! account needs `list` on `pods` and `patch` on `pods/resize` (in `deploy/kubernetes/rbac.yaml`).
//!
//! **No API server runs in the tests**: they run the scaler against kube's mock service
//! (`tower_test::mock`), which checks the requests it sends and answers them in the API
//! server's format.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::{ScaleError, Scaler};
use crate::{PoolSize, Resources};

/// The kind of workload whose replicas are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// An `apps/v1` Deployment.
    Deployment,
    /// An `apps/v1` StatefulSet.
    StatefulSet,
}

/// Scales one Deployment or StatefulSet through its `scale` subresource.
pub struct KubernetesScaler {
    kind: Workload,
    name: String,
    deployments: Api<Deployment>,
    statefulsets: Api<StatefulSet>,
    pods: Api<Pod>,
    container: String,
    /// The workload's pod selector, as its `scale` reports it.
    selector: Option<String>,
    size: PoolSize,
}

impl std::fmt::Debug for KubernetesScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesScaler")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl KubernetesScaler {
    /// A scaler of the workload `name` of `kind` in `namespace`, through `client` (for example
    /// `kube::Client::try_default()`: in-cluster service account or `KUBECONFIG`). Its size is
    /// unknown (zero) until [`refresh`](Self::refresh).
    pub fn new(client: Client, namespace: &str, kind: Workload, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            deployments: Api::namespaced(client.clone(), namespace),
            statefulsets: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client, namespace),
            container: "worker".into(),
            selector: None,
            size: PoolSize::default(),
        }
    }

    /// A scaler of the workload `name` of `kind` in `namespace`, through the default client (the
    /// in-cluster service account, or `KUBECONFIG`); an error when there is none.
    pub async fn try_default(
        namespace: &str,
        kind: Workload,
        name: impl Into<String>,
    ) -> Result<Self, ScaleError> {
        let client = Client::try_default().await.map_err(|e| {
            ScaleError::Api(format!("no client (in-cluster service account or KUBECONFIG): {e}"))
        })?;
        Ok(Self::new(client, namespace, kind, name))
    }

    /// The container whose resources [`Scaler::set_resources`] resizes (`worker` by default).
    pub fn with_container(mut self, name: impl Into<String>) -> Self {
        self.container = name.into();
        self
    }

    /// Resizes the container of every running pod of the workload in place to `requests`
    /// (see the [module docs](self)); returns how many pods were resized.
    pub async fn resize_pods(&mut self, requests: Resources) -> Result<u32, ScaleError> {
        if self.selector.is_none() {
            self.refresh().await?;
        }
        let selector = self.selector.clone().ok_or_else(|| {
            ScaleError::Api(format!("the scale of {:?} reports no pod selector", self.name))
        })?;
        let pods =
            self.pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| {
                ScaleError::Api(format!("listing the pods of {:?} ({selector}): {e}", self.name))
            })?;
        let patch = Patch::Strategic(serde_json::json!({
            "spec": { "containers": [{
                "name": self.container,
                "resources": { "requests": {
                    "cpu": requests.cpu_quantity(),
                    "memory": requests.memory_quantity(),
                } },
            }] }
        }));
        let params = PatchParams::default();
        let mut resized = 0;
        for pod in pods {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let Some(name) = pod.metadata.name.as_deref() else { continue };
            if !running || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            self.pods
                .patch_subresource("resize", name, &params, &patch)
                .await
                .map_err(|e| ScaleError::Api(format!("resizing pod {name:?}: {e}")))?;
            resized += 1;
        }
        Ok(resized)
    }

    /// Reads the workload's sizes from the API server: desired (`spec.replicas` of its scale),
    /// current (`status.replicas`) and ready (the workload's `status.readyReplicas`).
    pub async fn refresh(&mut self) -> Result<PoolSize, ScaleError> {
        let scale = match self.kind {
            Workload::Deployment => self.deployments.get_scale(&self.name).await,
            Workload::StatefulSet => self.statefulsets.get_scale(&self.name).await,
        }
        .map_err(|e| self.api_error("reading the scale of", e))?;
        let ready = match self.kind {
            Workload::Deployment => {
                self.deployments.get(&self.name).await.map(|d| d.status.and_then(|s| s.ready_replicas))
            }
            Workload::StatefulSet => {
                self.statefulsets.get(&self.name).await.map(|s| s.status.and_then(|s| s.ready_replicas))
            }
        }
        .map_err(|e| self.api_error("reading the status of", e))?;
        let (desired, current) = replicas_of(&scale);
        self.remember_selector(&scale);
        self.size = PoolSize { desired, current, ready: count(ready.unwrap_or(0)) };
        Ok(self.size)
    }

    fn remember_selector(&mut self, scale: &Scale) {
        if let Some(selector) = scale.status.as_ref().and_then(|s| s.selector.clone()) {
            self.selector = Some(selector);
        }
    }

    fn api_error(&self, what: &str, error: kube::Error) -> ScaleError {
        let kind = match self.kind {
            Workload::Deployment => "deployment",
            Workload::StatefulSet => "statefulset",
        };
        ScaleError::Api(format!("{what} {kind} {:?}: {error}", self.name))
    }
}

impl Scaler for KubernetesScaler {
    async fn set_desired(&mut self, replicas: u32) -> Result<(), ScaleError> {
        let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
        let params = PatchParams::default();
        let scale = match self.kind {
            Workload::Deployment => self.deployments.patch_scale(&self.name, &params, &patch).await,
            Workload::StatefulSet => self.statefulsets.patch_scale(&self.name, &params, &patch).await,
        }
        .map_err(|e| self.api_error("scaling", e))?;
        let (desired, current) = replicas_of(&scale);
        self.remember_selector(&scale);
        self.size.desired = desired;
        self.size.current = current;
        self.size.ready = self.size.ready.min(current.max(desired));
        Ok(())
    }

    fn size(&self) -> PoolSize {
        self.size
    }

    async fn set_resources(&mut self, requests: Resources) -> Result<u32, ScaleError> {
        self.resize_pods(requests).await
    }
}

/// `spec.replicas` and `status.replicas` of a scale, as counts.
fn replicas_of(scale: &Scale) -> (u32, u32) {
    let desired = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let current = scale.status.as_ref().map_or(0, |s| s.replicas);
    (count(desired), count(current))
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}
