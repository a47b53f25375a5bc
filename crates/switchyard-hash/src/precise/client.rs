//! The subscriber: one KV-event stream per endpoint, resumed after every disconnect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use switchyard_core::EndpointId;
use tokio::task::JoinHandle;

use super::feed::KvFeed;
use super::proto::{SubscribeRequest, kv_events_client::KvEventsClient, subscribe_response::Body};

/// How a [`KvSubscriber`] connects and reconnects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubscriberConfig {
    /// Most time a connection attempt takes (2 s).
    pub connect_timeout: Duration,
    /// The first wait before reconnecting after a failure (100 ms); it doubles after each failure
    /// in a row, up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest wait between attempts (5 s).
    pub max_backoff: Duration,
    /// A stream that delivers nothing (not even a heartbeat) for this long is dropped and
    /// reconnected (5 s; the worker sends a heartbeat every second).
    pub idle_timeout: Duration,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        }
    }
}

struct Task {
    address: String,
    handle: JoinHandle<()>,
}

/// Keeps one `switchyard.kv.v1.KvEvents/Subscribe` stream open per endpoint and applies what it
/// delivers to a [`KvFeed`]; see the [module documentation](super).
///
/// [`insert`](Self::insert) follows an endpoint (a task that connects, subscribes from the
/// feed's [`resume_point`](KvFeed::resume_point), applies snapshots and events, and on any
/// failure marks the endpoint down and reconnects with back-off); [`remove`](Self::remove) stops
/// it and forgets its blocks. Dropping the subscriber stops every task. Needs a tokio runtime.
pub struct KvSubscriber {
    feed: Arc<KvFeed>,
    config: SubscriberConfig,
    /// The TLS its streams connect with, if any.
    tls: Option<tonic::transport::ClientTlsConfig>,
    tasks: Mutex<BTreeMap<EndpointId, Task>>,
}

impl std::fmt::Debug for KvSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("KvSubscriber").field("endpoints", &tasks.keys().collect::<Vec<_>>()).finish()
    }
}

impl KvSubscriber {
    /// A subscriber feeding `feed`.
    pub fn new(feed: Arc<KvFeed>, config: SubscriberConfig) -> Self {
        Self { feed, config, tls: None, tasks: Mutex::new(BTreeMap::new()) }
    }

    /// The same subscriber, connecting to the endpoints over TLS with `tls` (their addresses are
    /// then taken as `https://`, whatever their scheme).
    pub fn with_tls(mut self, tls: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The feed it applies the streams to.
    pub fn feed(&self) -> &Arc<KvFeed> {
        &self.feed
    }

    /// Follows endpoint `id` at `address` (`http://HOST:PORT`, or `HOST:PORT`). The same
    /// address again changes nothing; a new one restarts its stream (what is known is kept until
    /// a snapshot of another instance replaces it).
    pub fn insert(&self, id: EndpointId, address: &str) {
        let address = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
        // tonic speaks TLS to `https://` addresses only.
        let address = match (&self.tls, address.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => address,
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = tasks.get(&id)
            && task.address == address
            && !task.handle.is_finished()
        {
            return;
        }
        if let Some(old) = tasks.remove(&id) {
            old.handle.abort();
        }
        self.feed.follow(&id);
        let handle = tokio::spawn(follow(
            self.feed.clone(),
            id.clone(),
            address.clone(),
            self.config,
            self.tls.clone(),
        ));
        tasks.insert(id, Task { address, handle });
    }

    /// Stops following endpoint `id` and forgets its blocks.
    pub fn remove(&self, id: &EndpointId) {
        if let Some(task) = self.tasks.lock().unwrap_or_else(PoisonError::into_inner).remove(id) {
            task.handle.abort();
        }
        self.feed.forget(id);
    }

    /// The endpoints followed.
    pub fn endpoints(&self) -> Vec<EndpointId> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }
}

impl Drop for KvSubscriber {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner).values() {
            task.handle.abort();
        }
    }
}

/// One endpoint's stream, for ever: subscribe, apply, and after any failure mark it down and
/// try again after the back-off.
async fn follow(
    feed: Arc<KvFeed>,
    id: EndpointId,
    address: String,
    config: SubscriberConfig,
    tls: Option<tonic::transport::ClientTlsConfig>,
) {
    let mut backoff = config.min_backoff;
    loop {
        match stream_once(&feed, &id, &address, &config, tls.as_ref()).await {
            Ok(()) => tracing::debug!(endpoint = %id, "KV-event stream ended"),
            Err(StreamError { delivered, message }) => {
                tracing::debug!(endpoint = %id, "KV-event stream failed: {message}");
                if delivered {
                    backoff = config.min_backoff;
                }
            }
        }
        feed.mark_down(&id);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

struct StreamError {
    /// Whether the stream delivered something before it failed (the back-off starts over).
    delivered: bool,
    message: String,
}

async fn stream_once(
    feed: &KvFeed,
    id: &EndpointId,
    address: &str,
    config: &SubscriberConfig,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<(), StreamError> {
    let mut delivered = false;
    let fail = |delivered: bool, message: String| StreamError { delivered, message };
    let mut endpoint = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|e| fail(false, format!("bad address {address:?}: {e}")))?
        .connect_timeout(config.connect_timeout);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| fail(false, format!("TLS: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| fail(false, format!("connect: {e}")))?;
    let (instance, after_sequence) = feed.resume_point(id).unwrap_or((0, 0));
    let mut stream = KvEventsClient::new(channel)
        .subscribe(SubscribeRequest { instance, after_sequence })
        .await
        .map_err(|e| fail(false, format!("subscribe: {}", e.message())))?
        .into_inner();
    let mut events = Vec::new();
    loop {
        let message = match tokio::time::timeout(config.idle_timeout, stream.message()).await {
            Err(_) => return Err(fail(delivered, "no event or heartbeat within the idle timeout".into())),
            Ok(Err(status)) => return Err(fail(delivered, format!("stream: {}", status.message()))),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(message))) => message,
        };
        let applied = match message.body {
            Some(Body::Snapshot(snapshot)) => {
                feed.apply_snapshot(id, message.instance, snapshot.sequence, &snapshot.blocks)
            }
            Some(Body::Events(batch)) => {
                events.clear();
                for e in &batch.events {
                    match e.to_core() {
                        Some(e) => events.push(e),
                        None => return Err(fail(delivered, format!("event {} of unknown kind", e.sequence))),
                    }
                }
                feed.apply_events(id, message.instance, &events)
            }
            None => Ok(()),
        };
        applied.map_err(|e| fail(delivered, e.to_string()))?;
        delivered = true;
    }
}
