//! Health watching: endpoints held back from the balancer until their server says SERVING.
//!
//! [`Source::with_health`] watches every endpoint its source inserts with the standard gRPC
//! health protocol, `grpc.health.v1.Health/Watch`: the server streams the status of a service
//! (`""`, the whole server, by default) whenever it changes. An endpoint is announced to the
//! balancer only once it is SERVING; when it turns NOT_SERVING (a replica starting to drain, a
//! model reloading) it is removed at once, on that one update, so it gets no new request and its
//! requests in flight finish; when it is SERVING again it is inserted again. A server without
//! `Watch` (UNIMPLEMENTED) is asked with `Check` every `check_interval` instead. A connection
//! that fails counts as not serving, and is tried again after `check_interval`.
//!
//! Passive ejection (the balancer's outlier detection) is separate and unchanged: this layer
//! decides which endpoints the balancer knows, ejection which of those it picks.
//!
//! The endpoints held back (inserted by the source, not SERVING) are listed by the
//! [`HeldBack`] handle, for an admin view. Each watched endpoint has one task and one HTTP/2
//! connection; both end when the endpoint leaves the source or the stream is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::{Endpoint, EndpointId};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::DiscoveryError;
use crate::membership::EndpointChange;
use crate::source::Source;

/// How endpoints are health-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The service whose status counts; `""` (the default) is the whole server.
    pub service: String,
    /// How often `Check` is asked when the server has no `Watch`, and how long to wait before
    /// connecting again after a failure (5 s by default).
    pub check_interval: Duration,
    /// The longest wait for a connection and for a `Check` answer (3 s by default).
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            service: String::new(),
            check_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
        }
    }
}

/// The endpoints a health-watching source holds back now (not SERVING). Cloneable handle.
#[derive(Debug, Clone, Default)]
pub struct HeldBack {
    endpoints: Arc<Mutex<BTreeMap<EndpointId, Endpoint>>>,
}

impl HeldBack {
    /// The endpoints held back, in id order.
    pub fn snapshot(&self) -> Vec<Endpoint> {
        self.endpoints.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    fn hold(&self, endpoint: &Endpoint) {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint.id.clone(), endpoint.clone());
    }

    fn release(&self, id: &EndpointId) {
        self.endpoints.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

impl Source {
    /// The same source with every endpoint held back until its health is SERVING (see the
    /// [module documentation](crate::health)), and the handle listing those held back. Must be
    /// polled within a tokio runtime (each endpoint's watch is a task).
    pub fn with_health(self, config: HealthConfig) -> (Source, HeldBack) {
        self.with_health_tls(config, None)
    }

    /// [`with_health`](Self::with_health), connecting to the endpoints over TLS with `tls` (the
    /// endpoints' addresses are taken as `https://` whatever their scheme) when given.
    pub fn with_health_tls(
        self,
        config: HealthConfig,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> (Source, HeldBack) {
        let name = self.name().to_owned();
        let held = HeldBack::default();
        let (tx, rx) = mpsc::channel(64);
        let state = Watching {
            source: Some(self),
            rx,
            tx,
            config: Arc::new(Checks { config, tls }),
            watched: HashMap::new(),
            next_generation: 0,
            held: held.clone(),
        };
        let batches = futures::stream::unfold(state, |mut state| async move {
            let batch = state.next_batch().await?;
            Some((futures::stream::iter(batch), state))
        });
        (Source::new(name, batches.flatten()), held)
    }
}

/// A health update from an endpoint's watch task.
struct Update {
    id: EndpointId,
    generation: u64,
    serving: bool,
}

struct Watched {
    endpoint: Endpoint,
    generation: u64,
    /// Whether the balancer has it (inserted, not removed since).
    announced: bool,
    task: AbortHandle,
}

/// How the endpoints are checked: the config, and the TLS to connect with, if any.
struct Checks {
    config: HealthConfig,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

struct Watching {
    source: Option<Source>,
    rx: mpsc::Receiver<Update>,
    tx: mpsc::Sender<Update>,
    config: Arc<Checks>,
    watched: HashMap<EndpointId, Watched>,
    next_generation: u64,
    held: HeldBack,
}

impl Drop for Watching {
    fn drop(&mut self) {
        for watched in self.watched.values() {
            watched.task.abort();
        }
    }
}

type Batch = Vec<Result<EndpointChange, DiscoveryError>>;

impl Watching {
    /// The next non-empty batch; `None` once the source has ended and nothing is watched.
    async fn next_batch(&mut self) -> Option<Batch> {
        loop {
            let batch = match &mut self.source {
                Some(source) => tokio::select! {
                    change = source.next() => match change {
                        Some(Ok(change)) => self.change(change),
                        Some(Err(e)) => vec![Err(e)],
                        None => {
                            self.source = None;
                            Batch::new()
                        }
                    },
                    Some(update) = self.rx.recv() => self.update(update),
                },
                None if self.watched.is_empty() => return None,
                None => match self.rx.recv().await {
                    Some(update) => self.update(update),
                    None => return None,
                },
            };
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }

    fn change(&mut self, change: EndpointChange) -> Batch {
        match change {
            EndpointChange::Insert(id, endpoint) => {
                if let Some(watched) = self.watched.get_mut(&id)
                    && watched.endpoint.address == endpoint.address
                {
                    // Same replica, new weight or labels: pass it on if the balancer has it.
                    watched.endpoint = endpoint.clone();
                    if watched.announced {
                        return vec![Ok(EndpointChange::Insert(id, endpoint))];
                    }
                    self.held.hold(&endpoint);
                    return Batch::new();
                }
                let batch = self.forget(&id);
                let generation = self.next_generation;
                self.next_generation += 1;
                let task =
                    tokio::spawn(watch(endpoint.clone(), generation, self.config.clone(), self.tx.clone()))
                        .abort_handle();
                self.held.hold(&endpoint);
                self.watched.insert(id, Watched { endpoint, generation, announced: false, task });
                batch
            }
            EndpointChange::Remove(id) => self.forget(&id),
        }
    }

    /// Stops watching `id`; its removal if the balancer has it.
    fn forget(&mut self, id: &EndpointId) -> Batch {
        self.held.release(id);
        match self.watched.remove(id) {
            Some(watched) => {
                watched.task.abort();
                if watched.announced { vec![Ok(EndpointChange::Remove(id.clone()))] } else { Batch::new() }
            }
            None => Batch::new(),
        }
    }

    fn update(&mut self, update: Update) -> Batch {
        let Some(watched) = self.watched.get_mut(&update.id) else { return Batch::new() };
        if watched.generation != update.generation || watched.announced == update.serving {
            return Batch::new();
        }
        watched.announced = update.serving;
        if update.serving {
            self.held.release(&update.id);
            tracing::info!(endpoint = %update.id, "endpoint SERVING: released to the balancer");
            vec![Ok(EndpointChange::Insert(update.id, watched.endpoint.clone()))]
        } else {
            self.held.hold(&watched.endpoint);
            tracing::info!(endpoint = %update.id, "endpoint not SERVING: held back");
            vec![Ok(EndpointChange::Remove(update.id))]
        }
    }
}

/// Watches one endpoint's health for as long as it is watched, sending each change of "serving".
async fn watch(endpoint: Endpoint, generation: u64, checks: Arc<Checks>, tx: mpsc::Sender<Update>) {
    let config = &checks.config;
    let id = endpoint.id.clone();
    let mut last = None;
    let mut send = |serving: bool| {
        let changed = last != Some(serving);
        last = Some(serving);
        let (tx, id) = (tx.clone(), id.clone());
        async move {
            if changed {
                let _ = tx.send(Update { id, generation, serving }).await;
            }
        }
    };
    // tonic speaks TLS to `https://` addresses only.
    let address = match (&checks.tls, endpoint.address.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => endpoint.address.clone(),
    };
    let channel = match tonic::transport::Endpoint::from_shared(address) {
        Ok(e) => match &checks.tls {
            None => Ok(e),
            Some(tls) => e.tls_config(tls.clone()),
        },
        Err(e) => Err(e),
    };
    let channel = match channel {
        Ok(e) => e
            .connect_timeout(config.timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(config.timeout)
            .connect_lazy(),
        Err(e) => {
            tracing::error!(endpoint = %id, "cannot health-check {:?}: {e}", endpoint.address);
            return;
        }
    };
    let mut client = HealthClient::new(channel);
    let request = || HealthCheckRequest { service: config.service.clone() };
    loop {
        match client.watch(request()).await {
            Ok(response) => {
                let mut statuses = response.into_inner();
                while let Ok(Some(status)) = statuses.message().await {
                    send(status.status == ServingStatus::Serving as i32).await;
                }
                // The stream ended (the server is going away): not serving until it says so.
                send(false).await;
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => loop {
                // No Watch: ask Check periodically.
                let answer = tokio::time::timeout(config.timeout, client.check(request())).await;
                let serving =
                    matches!(answer, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32);
                send(serving).await;
                tokio::time::sleep(config.check_interval).await;
            },
            Err(status) => {
                tracing::debug!(endpoint = %id, "health watch failed: {}", status.message());
                send(false).await;
            }
        }
        tokio::time::sleep(config.check_interval).await;
    }
}
