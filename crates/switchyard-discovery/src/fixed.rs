//! A fixed list of endpoints.

use switchyard_core::Endpoint;

use crate::membership::Membership;
use crate::source::Source;

impl Source {
    /// A source that inserts `endpoints` (once each: a later duplicate id replaces an earlier
    /// one) and ends. Its changes are ready at once, so a balancer built over it has the
    /// endpoints before its first request.
    pub fn fixed(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        let changes = Membership::new().replace(endpoints);
        Source::new("static", futures::stream::iter(changes.into_iter().map(Ok)))
    }
}
