//! What a policy sees of the pool's endpoints.

use std::sync::Arc;

use crate::EndpointState;

/// The pool's endpoints as a policy sees them for one pick.
///
/// - [`eligible`](Self::eligible): the endpoints the request may go to (members not ejected, or
///   every member in panic mode, when all are ejected), in a stable order; a pick is an index
///   into this list. Most policies scan only these.
/// - [`members`](Self::members): every endpoint discovery currently lists, ejected ones
///   included (draining ones, already removed, are not members), in membership order, each with
///   its index among the eligible ([`eligible_index`](Self::eligible_index)). A hash ring is built
///   over these, so that an ejection moves only the ejected endpoint's keys.
/// - [`generation`](Self::generation): moves whenever members are added or removed, and only
///   then; a policy rebuilds its structures (a ring) when it changes.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints<'a> {
    eligible: &'a [Arc<EndpointState>],
    members: &'a [Arc<EndpointState>],
    /// For each member, its index in `eligible`; `None` means every member is eligible, in the
    /// same order.
    member_eligible: Option<&'a [Option<usize>]>,
    generation: u64,
}

impl<'a> Endpoints<'a> {
    pub(crate) fn new(
        eligible: &'a [Arc<EndpointState>],
        members: &'a [Arc<EndpointState>],
        member_eligible: &'a [Option<usize>],
        generation: u64,
    ) -> Self {
        Self { eligible, members, member_eligible: Some(member_eligible), generation }
    }

    /// A pool whose members are all eligible, in this order, at `generation` (for tests,
    /// benchmarks and policies that delegate to another).
    pub fn all_eligible(endpoints: &'a [Arc<EndpointState>], generation: u64) -> Self {
        Self { eligible: endpoints, members: endpoints, member_eligible: None, generation }
    }

    /// The endpoints a pick may name, never empty when a policy is asked.
    pub fn eligible(&self) -> &'a [Arc<EndpointState>] {
        self.eligible
    }

    /// Every member, ejected ones included.
    pub fn members(&self) -> &'a [Arc<EndpointState>] {
        self.members
    }

    /// The index among the eligible of member `member`, or `None` if it is not eligible (or out
    /// of range).
    pub fn eligible_index(&self, member: usize) -> Option<usize> {
        match self.member_eligible {
            Some(map) => map.get(member).copied().flatten(),
            None => (member < self.members.len()).then_some(member),
        }
    }

    /// The membership generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}
