//! The prefix cache's block events, numbered, in a bounded ring for the replica's subscribers.
//!
//! Every block the cache stores or evicts becomes one [`KvEvent`] with the next sequence number.
//! The ring keeps the last `capacity` of them and drops the oldest: a subscriber never makes the
//! replica hold more. A subscriber reads the events after the last one it applied
//! ([`KvRead::Events`]); if they have left the ring (it fell behind, or it is new) it gets a
//! [`KvRead::Snapshot`] of the blocks held now, numbered with the sequence it stands for, and goes
//! on from there. Either way it misses nothing and applies nothing twice.

use std::collections::VecDeque;

use switchyard_core::KvEvent;

/// What a subscriber reads next; see [`EngineHandle::kv_read`](crate::EngineHandle::kv_read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvRead {
    /// The events after the subscriber's sequence, oldest first (empty: nothing new).
    Events(Vec<KvEvent>),
    /// The blocks the cache holds right after event `sequence`, least recently used first; the
    /// events after `sequence` follow in later reads.
    Snapshot {
        /// The last event the snapshot includes (0: none yet).
        sequence: u64,
        /// Block ids held, least recently used first.
        blocks: Vec<u64>,
    },
}

/// The ring of recent block events.
#[derive(Debug)]
pub(crate) struct KvLog {
    events: VecDeque<KvEvent>,
    capacity: usize,
    last: u64,
}

impl KvLog {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { events: VecDeque::with_capacity(capacity.min(4096)), capacity, last: 0 }
    }

    /// The sequence number of the last event (0: none yet).
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    pub(crate) fn push(&mut self, event: impl FnOnce(u64) -> KvEvent) {
        self.last += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event(self.last));
    }

    /// Up to `max` events after `after`, or `None` when some of them have left the ring (or
    /// `after` is not one of this log's sequences).
    pub(crate) fn after(&self, after: u64, max: usize) -> Option<Vec<KvEvent>> {
        if after > self.last {
            return None;
        }
        if after == self.last {
            return Some(Vec::new());
        }
        let first = self.events.front()?.sequence;
        if after + 1 < first {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(self.events.iter().skip(skip).take(max.max(1)).copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resume_after_a_sequence_until_it_leaves_the_ring() {
        let mut log = KvLog::new(3);
        assert_eq!(log.after(0, 10), Some(vec![]));
        for b in 1..=4 {
            log.push(|s| KvEvent::stored(s, b * 10));
        }
        assert_eq!(log.last(), 4);
        assert_eq!(log.after(4, 10), Some(vec![]));
        assert_eq!(log.after(2, 10), Some(vec![KvEvent::stored(3, 30), KvEvent::stored(4, 40)]));
        assert_eq!(log.after(1, 1), Some(vec![KvEvent::stored(2, 20)]));
        assert_eq!(log.after(0, 10), None, "event 1 has left the ring");
        assert_eq!(log.after(9, 10), None, "a sequence this log never reached");
    }
}
