#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `deploy/kubernetes/` checked against the Kubernetes API, with no cluster.
//!
//! - **Schemas.** Every YAML document is read into its `k8s-openapi` type (Kubernetes 1.33) and
//!   written back: a field the type does not know (which its deserializer would silently drop,
//!   as the API server's pruning would) or a value it would change is an error naming the field's
//!   path; a value of the wrong type is an error naming its path too (`serde_path_to_error`).
//!   KEDA's `ScaledObject` is a custom resource: it is read the same way into the typed struct
//!   below of the fields KEDA's reference documents (scaleTargetRef, replica counts, intervals,
//!   fallback, advanced.horizontalPodAutoscalerConfig with the Kubernetes HPA `behavior` type,
//!   triggers of type `prometheus` with their metadata keys, all strings), unknown fields denied.
//!   The kustomization and the prometheus-adapter rules (inside a ConfigMap) are read into small
//!   typed structs of their documented fields in the same way.
//! - **Cross-references.** Deployment selectors match their pod labels; each Service selects
//!   exactly one Deployment and its target ports are that Deployment's container ports; the
//!   gateway's config (in its ConfigMap) parses with the gateway's own parser, is the file the
//!   gateway Deployment mounts and names in `--config`, listens on its container ports, and its
//!   `kubernetes` discovery source names the worker Service and a port of it; the worker serves
//!   `--metrics-listen` on its `metrics` port, is ready by gRPC health on its `grpc` port, and
//!   Prometheus' annotations point at the metrics ports; the RBAC Role grants EndpointSlices
//!   list/watch and `deployments/scale` get/patch on the worker Deployment, bound to the gateway's
//!   service account; the HPA and the ScaledObject scale the worker Deployment on a metric the
//!   gateway exports, for a pool its config has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard::gateway::GatewayConfig;
use switchyard_telemetry::names;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// The YAML files under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `value` read into `T`, then written back: an error names the path of a field of the wrong type,
/// of one `T` does not know, or of a value that does not come back as it was.
fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let object: T = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| format!("at `{}`: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    match difference(value, &back, String::new()) {
        None => Ok(object),
        Some(problem) => Err(problem),
    }
}

/// Where `written` (the document) and `read` (as its type wrote it back) differ first.
fn difference(written: &Value, read: &Value, path: String) -> Option<String> {
    let at =
        |key: &dyn std::fmt::Display| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => w.iter().find_map(|(key, value)| match r.get(key) {
            None => Some(format!("at `{}`: unknown field `{key}`", at(key))),
            Some(read) => difference(value, read, at(key)),
        }),
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => {
            w.iter().zip(r).enumerate().find_map(|(i, (w, r))| difference(w, r, format!("{path}[{i}]")))
        }
        (Value::Number(w), Value::Number(r)) if w.as_f64() == r.as_f64() => None,
        (w, r) if w == r => None,
        (w, r) => Some(format!("at `{path}`: {w} reads as {r}")),
    }
}

// KEDA's ScaledObject (keda.sh/v1alpha1), the fields of its reference
// (https://keda.sh/docs/2.17/reference/scaledobject-spec/) and of the Prometheus scaler
// (https://keda.sh/docs/2.17/scalers/prometheus/) that these manifests may use.

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScaledObject {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ScaledObjectSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScaledObjectSpec {
    scale_target_ref: ScaleTargetRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    polling_interval: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_period: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_cooldown_period: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_replica_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_replica_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_replica_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<Fallback>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advanced: Option<Advanced>,
    triggers: Vec<Trigger>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScaleTargetRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    env_source_container_name: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Fallback {
    failure_threshold: i32,
    replicas: i32,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Advanced {
    #[serde(skip_serializing_if = "Option::is_none")]
    restore_to_original_replica_count: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    horizontal_pod_autoscaler_config: Option<HpaConfig>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HpaConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    behavior: Option<HorizontalPodAutoscalerBehavior>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Trigger {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metric_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    use_cached_metrics: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authentication_ref: Option<AuthenticationRef>,
    metadata: PrometheusMetadata,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthenticationRef {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

/// The Prometheus scaler's metadata: every value a string, as in all KEDA trigger metadata.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PrometheusMetadata {
    server_address: String,
    query: String,
    threshold: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    activation_threshold: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_headers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_null_values: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_parameters: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unsafe_ssl: Option<String>,
}

/// A kustomization (kustomize.config.k8s.io/v1beta1): the fields used here.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KustomizeImage {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_tag: Option<String>,
}

/// prometheus-adapter's configuration (its `config.yaml`): the external rules used here.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdapterConfig {
    external_rules: Vec<AdapterRule>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdapterRule {
    series_query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<AdapterResources>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<AdapterName>,
    metrics_query: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdapterResources {
    #[serde(skip_serializing_if = "Option::is_none")]
    overrides: Option<BTreeMap<String, AdapterResource>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespaced: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AdapterResource {
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    resource: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AdapterName {
    #[serde(skip_serializing_if = "Option::is_none")]
    matches: Option<String>,
    #[serde(rename = "as")]
    name_as: String,
}

/// Every document, typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    hpas: Vec<HorizontalPodAutoscaler>,
    scaled_objects: Vec<ScaledObject>,
    kustomizations: Vec<(PathBuf, Kustomization)>,
}

impl Manifests {
    fn load() -> Self {
        let mut manifests = Self::default();
        let mut problems = Vec::new();
        let files = yaml_files(&root());
        assert!(!files.is_empty(), "no manifests under {}", root().display());
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            for (i, document) in documents.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
                let origin = format!("{} document {}", file.strip_prefix(root()).unwrap().display(), i + 1);
                if let Err(problem) = manifests.add(&file, &document) {
                    problems.push(format!("{origin}: {problem}"));
                }
            }
        }
        assert!(problems.is_empty(), "manifests that do not validate:\n{}", problems.join("\n"));
        manifests
    }

    fn add(&mut self, file: &Path, document: &Value) -> Result<(), String> {
        let api_version = document["apiVersion"].as_str().unwrap_or_default();
        let kind = document["kind"].as_str().unwrap_or_default();
        match (api_version, kind) {
            ("v1", "Namespace") => self.namespaces.push(typed(document)?),
            ("v1", "ServiceAccount") => self.service_accounts.push(typed(document)?),
            ("v1", "ConfigMap") => self.config_maps.push(typed(document)?),
            ("v1", "Service") => self.services.push(typed(document)?),
            ("apps/v1", "Deployment") => self.deployments.push(typed(document)?),
            ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(typed(document)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => self.role_bindings.push(typed(document)?),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => self.hpas.push(typed(document)?),
            ("keda.sh/v1alpha1", "ScaledObject") => self.scaled_objects.push(typed(document)?),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
                self.kustomizations.push((file.to_path_buf(), typed(document)?));
            }
            (api_version, kind) => return Err(format!("no schema here for {api_version} {kind}")),
        }
        Ok(())
    }

    fn deployment(&self, name: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| {
            s.metadata.name.as_deref() == Some(name) && s.metadata.namespace.as_deref() == Some(namespace)
        })
    }
}

fn template_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    let spec = deployment.spec.as_ref().unwrap();
    spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

fn containers(deployment: &Deployment) -> &[Container] {
    &deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers
}

fn annotations(deployment: &Deployment) -> BTreeMap<String, String> {
    let spec = deployment.spec.as_ref().unwrap();
    spec.template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default()
}

/// The container port named `name` of the deployment's containers.
fn container_port(deployment: &Deployment, name: &str) -> Option<i32> {
    containers(deployment)
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// The value after `flag` in the first container's arguments.
fn flag<'a>(deployment: &'a Deployment, flag: &str) -> Option<&'a str> {
    let args = containers(deployment)[0].args.as_ref()?;
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// The port of `IP:PORT`.
fn port_of(address: &str) -> i32 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn subset(small: &BTreeMap<String, String>, large: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| large.get(k) == Some(v))
}

#[test]
fn every_manifest_reads_into_its_kubernetes_type_with_no_unknown_field() {
    let m = Manifests::load();
    assert_eq!(m.deployments.len(), 3, "the gateway, the worker and the autoscaler");
    assert_eq!(m.services.len(), 2);
    // The gateway's and the autoscaler's.
    assert_eq!((m.roles.len(), m.role_bindings.len(), m.service_accounts.len()), (2, 2, 2));
    assert_eq!((m.hpas.len(), m.scaled_objects.len()), (1, 1));

    // The kustomization lists every manifest beside it (the scaling examples are applied apart).
    let (path, kustomization) = &m.kustomizations[0];
    let dir = path.parent().unwrap();
    let listed: BTreeSet<PathBuf> = kustomization.resources.iter().map(|r| dir.join(r)).collect();
    for file in &listed {
        assert!(file.is_file(), "the kustomization lists {}, which does not exist", file.display());
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_some_and(|e| e == "yaml") && file != *path {
            assert!(listed.contains(&file), "the kustomization does not list {}", file.display());
        }
    }
}

#[test]
fn the_check_names_an_unknown_field_and_a_field_of_the_wrong_type() {
    let deployment = |spec: &str| -> Value {
        serde_saphyr::from_str(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n{spec}\n  selector:\n    matchLabels: {{a: b}}\n  template:\n    metadata:\n      labels: {{a: b}}\n    spec:\n      containers:\n        - name: c\n          image: i\n"
        ))
        .unwrap()
    };
    typed::<Deployment>(&deployment("  replicas: 2")).unwrap();
    let unknown = typed::<Deployment>(&deployment("  replicass: 2")).unwrap_err();
    assert!(unknown.contains("`spec.replicass`"), "{unknown}");
    let wrong = typed::<Deployment>(&deployment("  replicas: two")).unwrap_err();
    assert!(wrong.contains("`spec.replicas`"), "{wrong}");
    let annotation: Value = serde_saphyr::from_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  annotations:\n    prometheus.io/scrape: true\n",
    )
    .unwrap();
    let error = typed::<ConfigMap>(&annotation).unwrap_err();
    assert!(error.contains("metadata.annotations"), "{error}");
    let keda: Value = serde_saphyr::from_str(
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec:\n  scaleTargetRef: {name: w}\n  triggers:\n    - type: prometheus\n      metadata: {serverAddress: http://p, query: up, threshold: '1', treshold: '2'}\n",
    )
    .unwrap();
    let error = typed::<ScaledObject>(&keda).unwrap_err();
    assert!(error.contains("spec.triggers[0].metadata") && error.contains("treshold"), "{error}");
}

#[test]
fn services_select_their_deployments_and_target_their_container_ports() {
    let m = Manifests::load();
    for deployment in &m.deployments {
        let name = deployment.metadata.name.clone().unwrap();
        let selector = deployment.spec.as_ref().unwrap().selector.match_labels.clone().unwrap_or_default();
        assert!(!selector.is_empty(), "{name}: an empty selector");
        assert!(
            subset(&selector, &template_labels(deployment)),
            "{name}: its selector does not match its pods"
        );
    }
    for service in &m.services {
        let name = service.metadata.name.clone().unwrap();
        let spec = service.spec.as_ref().unwrap();
        let selector = spec.selector.clone().unwrap_or_default();
        assert!(!selector.is_empty(), "Service {name}: no selector");
        let selected: Vec<&Deployment> = m
            .deployments
            .iter()
            .filter(|d| {
                d.metadata.namespace == service.metadata.namespace && subset(&selector, &template_labels(d))
            })
            .collect();
        assert_eq!(selected.len(), 1, "Service {name} selects {} Deployments", selected.len());
        for port in spec.ports.iter().flatten() {
            let ok = match &port.target_port {
                Some(IntOrString::String(target)) => container_port(selected[0], target).is_some(),
                Some(IntOrString::Int(target)) => containers(selected[0])
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .any(|p| p.container_port == *target),
                None => false,
            };
            assert!(ok, "Service {name}: port {:?} targets no container port", port.name);
        }
    }
}

/// The gateway's config from its ConfigMap, and the ConfigMap's name and key.
fn gateway_config(m: &Manifests) -> (String, String, String) {
    let (map, key, text) = m
        .config_maps
        .iter()
        .flat_map(|c| c.data.iter().flatten().map(move |(k, v)| (c, k, v)))
        .find(|(_, key, _)| key.as_str() == "gateway.toml")
        .expect("a ConfigMap with gateway.toml");
    (map.metadata.name.clone().unwrap(), key.clone(), text.clone())
}

#[test]
fn the_gateway_config_parses_and_its_discovery_names_the_worker_service_and_port() {
    let m = Manifests::load();
    let (map_name, key, text) = gateway_config(&m);

    // The gateway's own parser: with the `kubernetes` feature the config is valid as it is;
    // without it, the only fault is that this build lacks the discovery source.
    let built_with_kubernetes = cfg!(feature = "kubernetes");
    match GatewayConfig::from_toml(&text) {
        Ok(config) => {
            assert!(built_with_kubernetes, "a kubernetes source parsed in a build without it");
            assert_eq!(config.pools.len(), 1);
            assert!(config.pools[0].layers.iter().any(|l| l.name() == "limit"));
        }
        Err(e) => {
            assert!(!built_with_kubernetes, "the ConfigMap's gateway.toml: {e}");
            assert!(e.to_string().contains("--features kubernetes"), "{e}");
        }
    }

    let raw: toml::Table = toml::from_str(&text).unwrap();
    let gateway = m.deployment("switchyard-gateway");
    // It listens where its container ports are, and Prometheus scrapes its admin listener.
    let listen = port_of(raw["listen"].as_str().unwrap());
    let admin = port_of(raw["admin"].as_str().unwrap());
    assert_eq!(container_port(gateway, "grpc"), Some(listen));
    assert_eq!(container_port(gateway, "admin"), Some(admin));
    assert_eq!(annotations(gateway).get("prometheus.io/port"), Some(&admin.to_string()));
    assert_eq!(annotations(gateway).get("prometheus.io/scrape").map(String::as_str), Some("true"));

    // The Deployment runs this file: the ConfigMap mounted, its key the `--config` path.
    let pod = gateway.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.config_map.as_ref().is_some_and(|c| c.name == map_name))
        .expect("the gateway mounts its ConfigMap");
    let mount = containers(gateway)[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.name == volume.name)
        .expect("a mount of the config volume");
    assert_eq!(flag(gateway, "--config"), Some(format!("{}/{key}", mount.mount_path).as_str()));

    // Its kubernetes source names the worker Service, and a port of it.
    let mut sources = 0;
    for pool in raw["pool"].as_array().unwrap() {
        for source in pool.get("discovery").and_then(toml::Value::as_array).into_iter().flatten() {
            if source["kind"].as_str() != Some("kubernetes") {
                continue;
            }
            sources += 1;
            let namespace = source.get("namespace").and_then(toml::Value::as_str).unwrap_or("default");
            let name = source["service"].as_str().unwrap();
            let service =
                m.service(namespace, name).unwrap_or_else(|| panic!("no Service {namespace}/{name}"));
            let port = source["port"].as_str().expect("the port named, since the Service has two");
            assert!(
                service
                    .spec
                    .as_ref()
                    .unwrap()
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some(port)),
                "Service {name} has no port {port:?}"
            );
            assert_eq!(namespace, gateway.metadata.namespace.as_deref().unwrap());
        }
    }
    assert_eq!(sources, 1, "one kubernetes discovery source");
}

#[test]
fn the_worker_serves_metrics_and_is_ready_by_grpc_health() {
    let m = Manifests::load();
    let worker = m.deployment("switchyard-worker");
    let grpc = container_port(worker, "grpc").expect("a grpc port");
    let metrics = container_port(worker, "metrics").expect("a metrics port");
    assert_eq!(flag(worker, "--listen").map(port_of), Some(grpc));
    assert_eq!(flag(worker, "--metrics-listen").map(port_of), Some(metrics));
    assert_eq!(annotations(worker).get("prometheus.io/port"), Some(&metrics.to_string()));
    let container = &containers(worker)[0];
    let readiness =
        container.readiness_probe.as_ref().and_then(|p| p.grpc.as_ref()).expect("a gRPC readiness probe");
    assert_eq!(readiness.port, grpc);
    assert!(readiness.service.as_deref().unwrap_or("").is_empty(), "the worker's overall health");
    // Room for the worker's drain after SIGTERM.
    let drain = humantime::parse_duration(flag(worker, "--drain-timeout").unwrap()).unwrap();
    let grace =
        worker.spec.as_ref().unwrap().template.spec.as_ref().unwrap().termination_grace_period_seconds;
    assert!(grace.unwrap() as u64 > drain.as_secs(), "terminationGracePeriodSeconds within --drain-timeout");
}

/// The Role bound to the service account the Deployment `name` runs as, in its namespace.
fn role_of<'a>(m: &'a Manifests, name: &str) -> &'a Role {
    let deployment = m.deployment(name);
    let account =
        deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap().service_account_name.clone();
    let account = account.unwrap_or_else(|| panic!("{name} runs as its service account"));
    let namespace = deployment.metadata.namespace.clone().unwrap();
    assert!(
        m.service_accounts.iter().any(|a| a.metadata.name.as_ref() == Some(&account)
            && a.metadata.namespace.as_ref() == Some(&namespace))
    );
    let binding = m
        .role_bindings
        .iter()
        .find(|b| {
            b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount" && s.name == account && s.namespace.as_ref() == Some(&namespace)
            })
        })
        .unwrap_or_else(|| panic!("no RoleBinding of {name}'s service account {account}"));
    assert_eq!(binding.metadata.namespace.as_ref(), Some(&namespace));
    assert_eq!(binding.role_ref.kind, "Role");
    let role = m
        .roles
        .iter()
        .find(|r| r.metadata.name.as_ref() == Some(&binding.role_ref.name))
        .expect("the bound Role");
    assert_eq!(role.metadata.namespace.as_ref(), Some(&namespace));
    role
}

/// Whether `role` lets `verb` on `resource` of `group` named `name`.
fn grants(role: &Role, group: &str, resource: &str, verb: &str, name: &str) -> bool {
    role.rules.iter().flatten().any(|rule| {
        let has = |list: &Option<Vec<String>>, x: &str| list.iter().flatten().any(|v| v == x || v == "*");
        has(&rule.api_groups, group)
            && has(&rule.resources, resource)
            && rule.verbs.iter().any(|v| v == verb || v == "*")
            && rule
                .resource_names
                .as_ref()
                .is_none_or(|names| names.is_empty() || names.iter().any(|n| n == name))
    })
}

#[test]
fn the_autoscaler_scales_and_resizes_the_workers_of_a_gateway_pool_and_may_do_nothing_else() {
    let m = Manifests::load();
    let autoscaler = m.deployment("switchyard-autoscaler");
    assert_eq!(autoscaler.spec.as_ref().unwrap().replicas, Some(1), "one autoscaler: two would fight");
    assert_eq!(containers(autoscaler)[0].args.as_ref().unwrap()[0], "autoscale");
    let worker = m.deployment("switchyard-worker");
    assert_eq!(flag(autoscaler, "--deployment"), worker.metadata.name.as_deref());
    assert_eq!(flag(autoscaler, "--namespace"), worker.metadata.namespace.as_deref());
    let (_, _, config) = gateway_config(&m);
    let config = GatewayConfig::from_toml(&config).unwrap();
    let pool = flag(autoscaler, "--pool").expect("--pool");
    assert!(config.pools.iter().any(|p| p.name == pool), "--pool {pool}: not a pool of the gateway");
    let metrics = port_of(flag(autoscaler, "--metrics-listen").expect("--metrics-listen"));
    assert_eq!(container_port(autoscaler, "metrics"), Some(metrics));
    assert_eq!(annotations(autoscaler).get("prometheus.io/port"), Some(&metrics.to_string()));

    let role = role_of(&m, "switchyard-autoscaler");
    for verb in ["get", "patch"] {
        assert!(
            grants(role, "apps", "deployments/scale", verb, "switchyard-worker"),
            "deployments/scale {verb}"
        );
    }
    assert!(grants(role, "apps", "deployments", "get", "switchyard-worker"));
    assert!(grants(role, "", "pods", "list", "any") && grants(role, "", "pods/resize", "patch", "any"));
    assert!(
        !grants(role, "apps", "deployments/scale", "patch", "switchyard-gateway"),
        "only the workers' scale"
    );
    assert!(
        !grants(role, "discovery.k8s.io", "endpointslices", "list", "any"),
        "no discovery: it reads Prometheus"
    );
}

#[test]
fn rbac_grants_endpointslices_list_watch_and_the_workers_scale_get_patch_to_the_gateway() {
    let m = Manifests::load();
    let role = role_of(&m, "switchyard-gateway");
    let grants =
        |group: &str, resource: &str, verb: &str, name: &str| grants(role, group, resource, verb, name);
    for verb in ["list", "watch"] {
        assert!(grants("discovery.k8s.io", "endpointslices", verb, "any"), "endpointslices {verb}");
    }
    for verb in ["get", "patch"] {
        assert!(grants("apps", "deployments/scale", verb, "switchyard-worker"), "deployments/scale {verb}");
    }
    assert!(!grants("apps", "deployments/scale", "patch", "switchyard-gateway"), "only the workers' scale");
}

#[test]
fn the_hpa_and_keda_scale_the_workers_on_a_metric_the_gateway_exports() {
    let m = Manifests::load();
    let worker = m.deployment("switchyard-worker");
    let (_, _, text) = gateway_config(&m);
    let raw: toml::Table = toml::from_str(&text).unwrap();
    let pools: Vec<&str> =
        raw["pool"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();

    // The HPA, on prometheus-adapter's external metric.
    let hpa = &m.hpas[0];
    let spec = hpa.spec.as_ref().unwrap();
    assert_eq!(
        (spec.scale_target_ref.kind.as_str(), spec.scale_target_ref.name.as_str()),
        ("Deployment", "switchyard-worker")
    );
    assert_eq!(spec.scale_target_ref.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(hpa.metadata.namespace, worker.metadata.namespace);
    assert!(spec.min_replicas.unwrap_or(1) <= spec.max_replicas);
    let external =
        spec.metrics.iter().flatten().find_map(|m| m.external.as_ref()).expect("an External metric");
    let pool =
        external.metric.selector.as_ref().and_then(|s| s.match_labels.as_ref()).and_then(|l| l.get("pool"));
    assert!(pool.is_some_and(|p| pools.contains(&p.as_str())), "the metric's pool is one of {pools:?}");
    assert_eq!(external.target.type_, "AverageValue");
    assert!(external.target.average_value.is_some());

    let (adapter, _) = m
        .config_maps
        .iter()
        .find_map(|c| c.data.as_ref()?.get("config.yaml").map(|t| (t.clone(), c)))
        .expect("prometheus-adapter's ConfigMap");
    let adapter: Value = serde_saphyr::from_str(&adapter).unwrap();
    let adapter: AdapterConfig =
        typed(&adapter).unwrap_or_else(|e| panic!("prometheus-adapter's config.yaml: {e}"));
    let rule = adapter
        .external_rules
        .iter()
        .find(|r| r.name.as_ref().is_some_and(|n| n.name_as == external.metric.name))
        .unwrap_or_else(|| panic!("no adapter rule serves {}", external.metric.name));
    assert!(
        rule.series_query.starts_with(&format!("{}{{", names::ENDPOINT_IN_FLIGHT)),
        "{}",
        rule.series_query
    );
    assert!(rule.metrics_query.contains(names::ENDPOINT_IN_FLIGHT), "{}", rule.metrics_query);

    // KEDA, on the same series straight from Prometheus.
    let scaled = &m.scaled_objects[0];
    assert_eq!(scaled.spec.scale_target_ref.name, "switchyard-worker");
    assert_eq!(scaled.spec.scale_target_ref.kind.as_deref().unwrap_or("Deployment"), "Deployment");
    assert_eq!(scaled.metadata.namespace, worker.metadata.namespace);
    assert!(scaled.spec.min_replica_count.unwrap_or(0) <= scaled.spec.max_replica_count.unwrap_or(100));
    for trigger in &scaled.spec.triggers {
        assert_eq!(trigger.kind, "prometheus");
        assert!(
            ["AverageValue", "Value"].contains(&trigger.metric_type.as_deref().unwrap_or("AverageValue")),
            "{:?}",
            trigger.metric_type
        );
        let query = &trigger.metadata.query;
        assert!(query.contains(names::ENDPOINT_IN_FLIGHT), "{query}");
        assert!(
            pools.iter().any(|p| query.contains(&format!("pool=\"{p}\""))),
            "{query} names no pool of {pools:?}"
        );
        assert!(trigger.metadata.threshold.parse::<f64>().is_ok_and(|t| t > 0.0));
        assert!(trigger.metadata.server_address.starts_with("http"));
    }
}
