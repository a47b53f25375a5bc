//! Kubernetes: the ready endpoints of a Service, from its EndpointSlices.
//!
//! [`Source::kubernetes`] watches the EndpointSlices labelled `kubernetes.io/service-name=SERVICE`
//! in a namespace with `kube`'s runtime watcher (a list, then a watch from its resource version,
//! resumed after a lost connection and listed again when the version has expired), and announces
//! the union of their endpoints, as whole snapshots, so that only differences reach the balancer.
//!
//! The endpoint conditions are honoured as the EndpointSlice API defines them:
//! - **ready** (unset means ready): only a ready endpoint takes new requests;
//! - **terminating**: a terminating endpoint (its pod is being deleted) takes no new request
//!   even while it is still **serving**: it is removed from the set, so the balancer drains it
//!   (its requests in flight finish);
//! - **serving** alone (ready false, not terminating: e.g. failing its readiness probe) is not
//!   enough: the endpoint is held out until it is ready.
//!
//! Each address of a slice endpoint becomes the endpoint `IP:PORT` (`http://IP:PORT`, IPv6 in
//! brackets) with the port named in the configuration (or the slice's only port), labelled with
//! its `pod`, `node` and `zone` when the slice says.
//!
//! The API server is reached with the usual client configuration (in a pod: its service account;
//! elsewhere: `~/.kube/config`, `KUBECONFIG`). Watch errors are reported (the first of a run as
//! an error item) and retried with kube's default back-off; the endpoints known stay. Needs the
//! crate's feature `kubernetes`.
//!
//! **No API server runs in the tests.** They run the watcher against kube's mock service
//! (`tower_test::mock`, the approach kube's own tests use), which answers its list and watch
//! requests with the files in `tests/fixtures/k8s/`. Those are hand-written, not recorded from a
//! cluster: they follow the `discovery.k8s.io/v1` wire format as the API server sends it (the
//! list's items without `kind`/`apiVersion`, the list's `resourceVersion` the first watch starts
//! from; `uid`, `generation`, `generateName`, the Service as owner, `managedFields`, the
//! `last-change-trigger-time` annotation; `targetRef`, `nodeName`, `zone`; one `{"type", "object"}`
//! JSON document per line in a watch, a `DELETED` carrying the object's last state at the
//! deletion's version; `BOOKMARK` events whose object has only `metadata.resourceVersion` set
//! (the other fields at their zero values), after which the server ends the watch and the
//! watcher watches again from the bookmark's version). Whitespace differs (the server sends a
//! list on one line), and what a real API server adds beyond this (watch timeouts by the
//! clock, `410 Gone` for an expired version, pagination with `continue`) is not exercised.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use switchyard_core::Endpoint;

use crate::error::DiscoveryError;
use crate::source::Source;

/// Which Service's endpoints a Kubernetes source follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesTarget {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The name of the port to use; the slice's only port if `None`.
    pub port: Option<String>,
}

impl Source {
    /// The ready endpoints of `target`'s EndpointSlices (see the [module
    /// documentation](crate::kubernetes)), with a client from the environment's configuration,
    /// built when the source is first polled (a failure to build it is the source's only item).
    pub fn kubernetes(target: KubernetesTarget) -> Self {
        let name = source_name(&target);
        let failed_name = name.clone();
        let slices = futures::stream::once(Client::try_default()).flat_map(move |client| match client {
            Ok(client) => slice_events(client, &target).boxed(),
            Err(e) => futures::stream::iter([Err(DiscoveryError::Setup {
                source_name: failed_name.clone(),
                message: format!("no Kubernetes client configuration: {e}"),
            })])
            .boxed(),
        });
        Source::from_snapshots(name, slices)
    }

    /// [`kubernetes`](Self::kubernetes) with a client of the caller's (tests give kube's mock
    /// service).
    pub fn kubernetes_with_client(client: Client, target: KubernetesTarget) -> Self {
        Source::from_snapshots(source_name(&target), slice_events(client, &target))
    }
}

fn source_name(target: &KubernetesTarget) -> String {
    format!("kubernetes:{}/{}", target.namespace, target.service)
}

/// The watcher's events as snapshots of the Service's ready endpoints.
fn slice_events(
    client: Client,
    target: &KubernetesTarget,
) -> impl Stream<Item = Result<Vec<Endpoint>, DiscoveryError>> + Send + 'static {
    let api: Api<EndpointSlice> = Api::namespaced(client, &target.namespace);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", target.service));
    let state = Slices {
        name: source_name(target),
        port: target.port.clone(),
        slices: BTreeMap::new(),
        listing: None,
        failing: false,
    };
    watcher::watcher(api, config).default_backoff().filter_map({
        let mut state = state;
        move |event| futures::future::ready(state.apply(event))
    })
}

/// The endpoints of each slice, by slice name.
struct Slices {
    name: String,
    port: Option<String>,
    slices: BTreeMap<String, Vec<Endpoint>>,
    /// The slices of a listing in progress (between `Init` and `InitDone`).
    listing: Option<BTreeMap<String, Vec<Endpoint>>>,
    failing: bool,
}

impl Slices {
    /// A snapshot when `event` completes one, an error to report, or nothing.
    fn apply(
        &mut self,
        event: Result<Event<EndpointSlice>, watcher::Error>,
    ) -> Option<Result<Vec<Endpoint>, DiscoveryError>> {
        let event = match event {
            Ok(event) => {
                self.failing = false;
                event
            }
            Err(e) => {
                if std::mem::replace(&mut self.failing, true) {
                    tracing::debug!(source = %self.name, "watch failed: {e}");
                    return None;
                }
                return Some(Err(DiscoveryError::Backend {
                    source_name: self.name.clone(),
                    message: e.to_string(),
                }));
            }
        };
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                None
            }
            Event::InitApply(slice) => {
                let endpoints = self.endpoints(&slice);
                self.listing.get_or_insert_with(BTreeMap::new).insert(slice_name(&slice), endpoints);
                None
            }
            Event::InitDone => {
                self.slices = self.listing.take().unwrap_or_default();
                Some(Ok(self.snapshot()))
            }
            Event::Apply(slice) => {
                let endpoints = self.endpoints(&slice);
                self.slices.insert(slice_name(&slice), endpoints);
                Some(Ok(self.snapshot()))
            }
            Event::Delete(slice) => {
                self.slices.remove(&slice_name(&slice));
                Some(Ok(self.snapshot()))
            }
        }
    }

    fn snapshot(&self) -> Vec<Endpoint> {
        self.slices.values().flatten().cloned().collect()
    }

    /// The endpoints of `slice` that may take new requests: ready and not terminating.
    fn endpoints(&self, slice: &EndpointSlice) -> Vec<Endpoint> {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = match &self.port {
            Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())),
            None if ports.len() == 1 => ports.first(),
            None => None,
        };
        let Some(port) = port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else {
            tracing::warn!(
                source = %self.name,
                slice = %slice_name(slice),
                "no usable port (name one with `port` when a slice has several)"
            );
            return Vec::new();
        };
        let mut endpoints = Vec::new();
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else { continue };
                let addr = std::net::SocketAddr::new(ip, port);
                let mut e = Endpoint::new(addr.to_string(), format!("http://{addr}"));
                if let Some(pod) = endpoint.target_ref.as_ref().and_then(|r| r.name.clone()) {
                    e = e.with_label("pod", pod);
                }
                if let Some(node) = &endpoint.node_name {
                    e = e.with_label("node", node.clone());
                }
                if let Some(zone) = &endpoint.zone {
                    e = e.with_label("zone", zone.clone());
                }
                endpoints.push(e);
            }
        }
        endpoints
    }
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}
