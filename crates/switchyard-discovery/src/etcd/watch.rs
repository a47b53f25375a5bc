//! The etcd source: a snapshot of a prefix, then a watch from the next revision.

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchStream};
use switchyard_core::{Endpoint, EndpointId};

use super::{EtcdTls, RPC_TIMEOUT, connect};
use crate::config::EndpointSpec;
use crate::error::DiscoveryError;
use crate::membership::{EndpointChange, Membership};
use crate::source::Source;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);

type Batch = Vec<Result<EndpointChange, DiscoveryError>>;

impl Source {
    /// The endpoints registered under `prefix` in the etcd cluster at `servers` (e.g.
    /// `["http://127.0.0.1:2379"]`): see the [module documentation](crate::etcd). Connects when
    /// first polled; a server that cannot be reached is an error item, retried.
    pub fn etcd(servers: Vec<String>, prefix: impl Into<String>) -> Self {
        Self::etcd_with_tls(servers, prefix, None)
    }

    /// [`etcd`](Self::etcd) over TLS with `tls` (the servers' addresses `https://`).
    pub fn etcd_with_tls(servers: Vec<String>, prefix: impl Into<String>, tls: Option<EtcdTls>) -> Self {
        let prefix = prefix.into();
        let name = format!("etcd:{prefix}");
        let state = EtcdWatch {
            name: name.clone(),
            servers,
            tls,
            prefix,
            client: None,
            watch: None,
            revision: 0,
            keys: HashMap::new(),
            membership: Membership::new(),
            retry: None,
            failing: false,
        };
        let batches = futures::stream::unfold(state, |mut state| async move {
            let batch = state.next_batch().await;
            Some((futures::stream::iter(batch), state))
        });
        Source::new(name, futures::StreamExt::flatten(batches))
    }
}

struct EtcdWatch {
    name: String,
    servers: Vec<String>,
    tls: Option<EtcdTls>,
    prefix: String,
    client: Option<Client>,
    watch: Option<WatchStream>,
    /// The last revision applied: the watch resumes after it. 0: read a snapshot first.
    revision: i64,
    /// The endpoint id each key announced.
    keys: HashMap<Vec<u8>, EndpointId>,
    membership: Membership,
    /// How long to wait before the next attempt, after a failure.
    retry: Option<Duration>,
    /// A failure has been reported and no success seen since.
    failing: bool,
}

impl EtcdWatch {
    /// The next non-empty batch of changes or errors.
    async fn next_batch(&mut self) -> Batch {
        loop {
            if self.watch.is_none() {
                if let Some(wait) = self.retry {
                    tokio::time::sleep(wait).await;
                }
                match self.open().await {
                    Ok(batch) if batch.is_empty() => continue,
                    Ok(batch) => return batch,
                    Err(message) => match self.fail(message) {
                        Some(error) => return vec![Err(error)],
                        None => continue,
                    },
                }
            }
            let Some(watch) = self.watch.as_mut() else { continue };
            match watch.message().await {
                Ok(Some(response)) => {
                    if response.compact_revision() > 0 {
                        // The revision to resume from is gone: read the prefix again.
                        tracing::info!(source = %self.name, compacted = response.compact_revision(), "watch revision compacted; reading a new snapshot");
                        self.revision = 0;
                        self.watch = None;
                        continue;
                    }
                    if response.canceled() {
                        self.watch = None;
                        self.fail(format!("watch cancelled: {}", response.cancel_reason()));
                        continue;
                    }
                    self.succeeded();
                    let mut batch = Batch::new();
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        self.revision = self.revision.max(kv.mod_revision());
                        match event.event_type() {
                            EventType::Put => batch.extend(self.put(kv)),
                            EventType::Delete => batch.extend(self.delete(kv.key()).map(Ok)),
                        }
                    }
                    if response.events().is_empty()
                        && let Some(header) = response.header()
                    {
                        // A progress notice: every change up to this revision has been seen.
                        self.revision = self.revision.max(header.revision());
                    }
                    if !batch.is_empty() {
                        return batch;
                    }
                }
                Ok(None) => {
                    self.drop_connection();
                    if let Some(e) = self.fail("watch ended".into()) {
                        return vec![Err(e)];
                    }
                }
                Err(e) => {
                    self.drop_connection();
                    if let Some(e) = self.fail(format!("watch failed: {e}")) {
                        return vec![Err(e)];
                    }
                }
            }
        }
    }

    /// Connects if needed, reads a snapshot if there is no revision to resume from, and starts
    /// the watch after the last revision applied. The snapshot's changes.
    async fn open(&mut self) -> Result<Batch, String> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self.client.insert(connect(&self.servers, self.tls.as_ref()).await?),
        };
        let mut batch = Batch::new();
        if self.revision == 0 {
            let options = GetOptions::new().with_prefix();
            let response =
                tokio::time::timeout(RPC_TIMEOUT, client.get(self.prefix.as_bytes(), Some(options)))
                    .await
                    .map_err(|_| format!("reading {} timed out", self.prefix))
                    .and_then(|r| r.map_err(|e| format!("cannot read {}: {e}", self.prefix)));
            let response = match response {
                Ok(response) => response,
                Err(e) => {
                    self.drop_connection();
                    return Err(e);
                }
            };
            let mut keys = HashMap::new();
            let mut endpoints = Vec::new();
            for kv in response.kvs() {
                match self.endpoint(kv) {
                    Ok(endpoint) => {
                        keys.insert(kv.key().to_vec(), endpoint.id.clone());
                        endpoints.push(endpoint);
                    }
                    Err(e) => batch.push(Err(e)),
                }
            }
            self.keys = keys;
            batch.extend(self.membership.replace(endpoints).into_iter().map(Ok));
            self.revision = response.header().map_or(0, |h| h.revision());
        }
        let options =
            WatchOptions::new().with_prefix().with_progress_notify().with_start_revision(self.revision + 1);
        let Some(client) = self.client.as_mut() else { return Err("no client".into()) };
        match tokio::time::timeout(RPC_TIMEOUT, client.watch(self.prefix.as_bytes(), Some(options))).await {
            Ok(Ok(watch)) => {
                self.watch = Some(watch);
                self.succeeded();
                Ok(batch)
            }
            Ok(Err(e)) => {
                self.drop_connection();
                Err(format!("cannot watch {}: {e}", self.prefix))
            }
            Err(_) => {
                self.drop_connection();
                Err(format!("watching {} timed out", self.prefix))
            }
        }
    }

    fn endpoint(&self, kv: &KeyValue) -> Result<Endpoint, DiscoveryError> {
        let key = String::from_utf8_lossy(kv.key());
        let backend = |message: String| DiscoveryError::Backend { source_name: self.name.clone(), message };
        let mut spec: EndpointSpec = serde_json::from_slice(kv.value())
            .map_err(|e| backend(format!("key {key}: not a JSON endpoint: {e}")))?;
        if spec.id.is_none() {
            spec.id = Some(key.strip_prefix(self.prefix.as_str()).unwrap_or(&key).to_owned());
        }
        spec.into_endpoint().map_err(|m| backend(format!("key {key}: {m}")))
    }

    fn put(&mut self, kv: &KeyValue) -> Batch {
        match self.endpoint(kv) {
            Ok(endpoint) => {
                let mut batch = Batch::new();
                // The key announced another id before: that one is gone.
                if let Some(old) = self.keys.insert(kv.key().to_vec(), endpoint.id.clone())
                    && old != endpoint.id
                {
                    batch.extend(self.membership.remove(&old).map(Ok));
                }
                batch.extend(self.membership.insert(endpoint).map(Ok));
                batch
            }
            Err(e) => vec![Err(e)],
        }
    }

    fn delete(&mut self, key: &[u8]) -> Option<EndpointChange> {
        let id = self.keys.remove(key)?;
        self.membership.remove(&id)
    }

    fn drop_connection(&mut self) {
        self.watch = None;
        self.client = None;
    }

    fn succeeded(&mut self) {
        if self.failing {
            tracing::info!(source = %self.name, revision = self.revision, "etcd watch resumed");
        }
        self.failing = false;
        self.retry = None;
    }

    /// Records a failure: the error to report if it starts an outage (later ones are logged).
    fn fail(&mut self, message: String) -> Option<DiscoveryError> {
        self.retry = Some(self.retry.map_or(FIRST_RETRY, |r| (r * 2).min(LAST_RETRY)));
        if std::mem::replace(&mut self.failing, true) {
            tracing::debug!(source = %self.name, "{message}");
            return None;
        }
        Some(DiscoveryError::Backend { source_name: self.name.clone(), message })
    }
}
