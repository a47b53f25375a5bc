//! Connecting: each discovered endpoint becomes a tonic [`Channel`] the balancer can send to.
//!
//! Each endpoint's connections are opened through its [`ConnectionDrain`]: once the source
//! removes the endpoint (or moves its id to another address), what is still open on them is cut
//! after the connector's drain timeout (see [`drain`](crate::drain)).

use std::collections::HashMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use switchyard_core::{Endpoint, EndpointId};
use tonic::transport::Channel;
use tower::discover::Change;

use crate::cut_status::CutStatus;
use crate::drain::{ConnectionDrain, DEFAULT_DRAIN_TIMEOUT};
use crate::error::DiscoveryError;
use crate::membership::EndpointChange;

/// How a [`Connector`] connects to endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connector {
    /// The longest wait for a TCP connection (3 s by default).
    pub connect_timeout: Duration,
    /// How often an HTTP/2 connection is pinged, so a dead replica is found on an idle
    /// connection too (20 s by default).
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed (10 s by default).
    pub keep_alive_timeout: Duration,
    /// How long a removed endpoint's connections stay open for the requests in flight on them
    /// before they are cut (30 s by default).
    pub drain_timeout: Duration,
}

impl Default for Connector {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// An endpoint and the channel that reaches it.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its channel: connected on first use, and again after it breaks; a call cut by the drain
    /// timeout ends with `UNAVAILABLE` ([`CutStatus`]).
    pub channel: CutStatus<Channel>,
    /// The drain of the channel's connections: retired when the endpoint is removed, it counts
    /// the connections still open.
    pub drain: ConnectionDrain,
}

impl Connector {
    /// A channel to `endpoint`, connected lazily (the first request connects), with no drain
    /// (see [`channel_with_drain`](Self::channel_with_drain)). An address tonic cannot use (not a
    /// URI) is an error naming the endpoint.
    pub fn channel(&self, endpoint: &Endpoint) -> Result<Channel, DiscoveryError> {
        Ok(self.target(endpoint)?.connect_lazy())
    }

    /// A channel to `endpoint`, connected lazily, whose connections are opened through `drain`:
    /// once it is retired and its timeout has passed, the calls still open on them fail and the
    /// connections close.
    pub fn channel_with_drain(
        &self,
        endpoint: &Endpoint,
        drain: &ConnectionDrain,
    ) -> Result<Channel, DiscoveryError> {
        let drain = drain.clone();
        let connector = tower::service_fn(move |uri: http::Uri| {
            let drain = drain.clone();
            async move {
                let host = uri.host().unwrap_or_default();
                let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                let port = uri.port_u16().unwrap_or(80);
                let stream = tokio::net::TcpStream::connect((host, port)).await?;
                let _ = stream.set_nodelay(true);
                Ok::<_, std::io::Error>(TokioIo::new(drain.wrap(stream)))
            }
        });
        Ok(self.target(endpoint)?.connect_with_connector_lazy(connector))
    }

    fn target(&self, endpoint: &Endpoint) -> Result<tonic::transport::Endpoint, DiscoveryError> {
        let target = tonic::transport::Endpoint::from_shared(endpoint.address.clone()).map_err(|e| {
            DiscoveryError::Backend {
                source_name: format!("endpoint {}", endpoint.id),
                message: format!("address {:?} is not usable: {e}", endpoint.address),
            }
        })?;
        Ok(target
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            .keep_alive_while_idle(true))
    }

    /// The changes of `source` with a channel for each inserted endpoint. An endpoint whose
    /// address is not usable is an error item (the source goes on), and is removed in case an
    /// earlier version of it was inserted. A removed endpoint's drain is retired (so is the old
    /// one of an id inserted again at another address): its connections are cut after the
    /// drain timeout.
    pub fn connect<S>(
        self,
        source: S,
    ) -> impl Stream<Item = Result<Change<EndpointId, Connected>, DiscoveryError>>
    where
        S: Stream<Item = Result<EndpointChange, DiscoveryError>>,
    {
        // The drain of each endpoint inserted and not removed since.
        let mut drains: HashMap<EndpointId, ConnectionDrain> = HashMap::new();
        source.flat_map(move |change| {
            let items = match change {
                Ok(Change::Insert(id, endpoint)) => {
                    if let Some(old) = drains.remove(&id) {
                        old.retire();
                    }
                    let drain = ConnectionDrain::new(self.drain_timeout);
                    match self.channel_with_drain(&endpoint, &drain) {
                        Ok(channel) => {
                            drains.insert(id.clone(), drain.clone());
                            let channel = CutStatus::new(channel, self.drain_timeout);
                            vec![Ok(Change::Insert(id, Connected { endpoint, channel, drain }))]
                        }
                        Err(e) => vec![Err(e), Ok(Change::Remove(id))],
                    }
                }
                Ok(Change::Remove(id)) => {
                    if let Some(drain) = drains.remove(&id) {
                        drain.retire();
                    }
                    vec![Ok(Change::Remove(id))]
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
    }
}
