//! Connecting: each discovered endpoint becomes a tonic [`Channel`] the balancer can send to.

use std::time::Duration;

use futures::{Stream, StreamExt};
use switchyard_core::{Endpoint, EndpointId};
use tonic::transport::Channel;
use tower::discover::Change;

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
}

impl Default for Connector {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// An endpoint and the channel that reaches it.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its channel: connected on first use, and again after it breaks.
    pub channel: Channel,
}

impl Connector {
    /// A channel to `endpoint`, connected lazily (the first request connects). An address tonic
    /// cannot use (not a URI) is an error naming the endpoint.
    pub fn channel(&self, endpoint: &Endpoint) -> Result<Channel, DiscoveryError> {
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
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// The changes of `source` with a channel for each inserted endpoint. An endpoint whose
    /// address is not usable is an error item (the source goes on), and is removed in case an
    /// earlier version of it was inserted.
    pub fn connect<S>(
        self,
        source: S,
    ) -> impl Stream<Item = Result<Change<EndpointId, Connected>, DiscoveryError>>
    where
        S: Stream<Item = Result<EndpointChange, DiscoveryError>>,
    {
        source.flat_map(move |change| {
            let items = match change {
                Ok(Change::Insert(id, endpoint)) => match self.channel(&endpoint) {
                    Ok(channel) => vec![Ok(Change::Insert(id, Connected { endpoint, channel }))],
                    Err(e) => vec![Err(e), Ok(Change::Remove(id))],
                },
                Ok(Change::Remove(id)) => vec![Ok(Change::Remove(id))],
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
    }
}
