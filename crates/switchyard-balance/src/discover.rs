//! A fixed list of endpoints as a discovery stream.

use std::convert::Infallible;

use switchyard_core::EndpointId;
use tower::discover::Change;

use crate::Backend;

/// The discovery stream of a fixed list of endpoints: it inserts each, then ends.
pub type StaticDiscover<S> =
    futures::stream::Iter<std::vec::IntoIter<Result<Change<EndpointId, Backend<S>>, Infallible>>>;

/// A discovery stream that inserts `backends`, in order, and ends.
pub fn from_backends<S>(backends: impl IntoIterator<Item = Backend<S>>) -> StaticDiscover<S> {
    let changes: Vec<_> =
        backends.into_iter().map(|b| Ok(Change::Insert(b.endpoint.id.clone(), b))).collect();
    futures::stream::iter(changes)
}
