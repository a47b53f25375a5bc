//! [`Source`]: a named stream of endpoint changes, and the adaptor from snapshots to changes.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use switchyard_core::Endpoint;

use crate::error::DiscoveryError;
use crate::membership::{EndpointChange, Membership};

/// The label under which [`Source::labelled`] records which source announced an endpoint.
pub const SOURCE_LABEL: &str = "source";

/// A discovery source: a stream of [`EndpointChange`]s, with a name for logs and the admin API.
///
/// Every source keeps these semantics:
/// - it announces a **snapshot first** (an insert for each endpoint it finds), **then
///   differences**: an insert for an endpoint that is new or changed, a removal for one that
///   vanished;
/// - it never inserts an endpoint that is unchanged since its last insert (**no duplicate
///   inserts**, nothing re-announced), and never removes one it has not inserted;
/// - when its backend fails it yields an `Err` item (with the file's line, the failing server)
///   and **keeps** the endpoints it announced, then goes on; it ends only if it is finite (a
///   static list).
///
/// A `Source` is what `switchyard_balance::Balance::new` takes once each endpoint is connected
/// (mapped to a `Backend`); see the crate's example.
pub struct Source {
    name: String,
    inner: BoxStream<'static, Result<EndpointChange, DiscoveryError>>,
}

impl Source {
    /// A source named `name` over `changes`, which must keep the semantics above (a stream of
    /// snapshots gets them from [`from_snapshots`](Self::from_snapshots)).
    pub fn new(
        name: impl Into<String>,
        changes: impl Stream<Item = Result<EndpointChange, DiscoveryError>> + Send + 'static,
    ) -> Self {
        Self { name: name.into(), inner: changes.boxed() }
    }

    /// A source over a stream of whole snapshots (every endpoint there is, each time): each
    /// becomes the changes from the previous one ([`Membership::replace`]). An `Err` snapshot is
    /// passed on and the last good set kept.
    pub fn from_snapshots(
        name: impl Into<String>,
        snapshots: impl Stream<Item = Result<Vec<Endpoint>, DiscoveryError>> + Send + 'static,
    ) -> Self {
        let changes = snapshots
            .scan(Membership::new(), |membership, snapshot| {
                let batch: Vec<Result<EndpointChange, DiscoveryError>> = match snapshot {
                    Ok(endpoints) => membership.replace(endpoints).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::future::ready(Some(futures::stream::iter(batch)))
            })
            .flatten();
        Self::new(name, changes)
    }

    /// The source's name, e.g. `file:/etc/switchyard/endpoints.toml`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same source, with every endpoint it inserts labelled [`SOURCE_LABEL`]` = name`, so
    /// that the balancer's board (and the gateway's `/endpoints`) shows where it came from.
    pub fn labelled(self) -> Self {
        let name = self.name.clone();
        let label = name.clone();
        let inner = self.inner.map(move |change| match change {
            Ok(EndpointChange::Insert(id, endpoint)) => {
                Ok(EndpointChange::Insert(id, endpoint.with_label(SOURCE_LABEL, label.clone())))
            }
            other => other,
        });
        Self::new(name, inner)
    }
}

impl Stream for Source {
    type Item = Result<EndpointChange, DiscoveryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish_non_exhaustive()
    }
}
