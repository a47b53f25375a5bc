//! A programmatic source: endpoints inserted and removed by code (the autoscaler, tests, a
//! user's own discovery), through a bounded channel.

use futures::StreamExt;
use switchyard_core::{Endpoint, EndpointId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::membership::Membership;
use crate::source::Source;

/// What a [`Publisher`] asks of its source.
#[derive(Debug)]
enum Command {
    Insert(Endpoint),
    Remove(EndpointId),
    Replace(Vec<Endpoint>),
}

/// The sending side of a [`channel`] source. Cloneable; the source ends when every publisher
/// is dropped.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Command>,
}

/// The source is gone (its balancer was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the discovery channel's source is gone")]
pub struct SourceGone;

impl Publisher {
    /// Adds `endpoint`, or updates the one with its id. Waits while the channel is full.
    pub async fn insert(&self, endpoint: Endpoint) -> Result<(), SourceGone> {
        self.tx.send(Command::Insert(endpoint)).await.map_err(|_| SourceGone)
    }

    /// Removes the endpoint `id` (nothing if there is none). Waits while the channel is full.
    pub async fn remove(&self, id: impl Into<EndpointId>) -> Result<(), SourceGone> {
        self.tx.send(Command::Remove(id.into())).await.map_err(|_| SourceGone)
    }

    /// Makes `endpoints` the whole set: the ones not in it are removed, new and changed ones
    /// inserted, the rest left alone. Waits while the channel is full.
    pub async fn replace(&self, endpoints: Vec<Endpoint>) -> Result<(), SourceGone> {
        self.tx.send(Command::Replace(endpoints)).await.map_err(|_| SourceGone)
    }
}

/// A source fed by code, and its [`Publisher`]. At most `capacity` requests wait in the
/// channel (at least 1); a publisher waits while it is full, so a fast producer is slowed to
/// the balancer's pace rather than buffered without bound.
///
/// Duplicate inserts and removals of unknown ids are dropped by the source (it keeps a
/// [`Membership`]), so the stream keeps the [`Source`] semantics whatever the publishers send.
pub fn channel(capacity: usize) -> (Publisher, Source) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let changes = ReceiverStream::new(rx)
        .scan(Membership::new(), |membership, command| {
            let batch = match command {
                Command::Insert(endpoint) => membership.insert(endpoint).into_iter().collect(),
                Command::Remove(id) => membership.remove(&id).into_iter().collect(),
                Command::Replace(endpoints) => membership.replace(endpoints),
            };
            futures::future::ready(Some(futures::stream::iter(batch.into_iter().map(Ok))))
        })
        .flatten();
    (Publisher { tx }, Source::new("channel", changes))
}
