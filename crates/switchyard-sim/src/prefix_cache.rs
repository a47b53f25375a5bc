//! The engine's prefix cache: KV blocks kept after their prefill, keyed by block identity,
//! evicted least recently used first.
//!
//! Deterministic by construction: the recency order lives in a `BTreeMap` from a logical tick to
//! the block id, and the `HashMap` is only ever looked up, never iterated.

use std::collections::{BTreeMap, HashMap};

use switchyard_core::KvEvent;

use crate::kv_log::{KvLog, KvRead};

/// LRU set of cached block ids.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    block_tokens: u64,
    /// Block id -> tick of its last use.
    last_use: HashMap<u64, u64>,
    /// Tick -> block id, oldest first.
    by_age: BTreeMap<u64, u64>,
    tick: u64,
    /// Every block stored and evicted, for the replica's subscribers.
    log: KvLog,
}

impl PrefixCache {
    pub(crate) fn new(block_tokens: u32, event_buffer: usize) -> Self {
        Self {
            block_tokens: u64::from(block_tokens.max(1)),
            last_use: HashMap::new(),
            by_age: BTreeMap::new(),
            tick: 0,
            log: KvLog::new(event_buffer),
        }
    }

    /// The sequence number of the last block event.
    pub(crate) fn last_event(&self) -> u64 {
        self.log.last()
    }

    /// Up to `max_events` block events after `after`, or a snapshot when `after` is `None` or
    /// its successors have left the ring.
    pub(crate) fn kv_read(&self, after: Option<u64>, max_events: usize) -> KvRead {
        if let Some(events) = after.and_then(|after| self.log.after(after, max_events)) {
            return KvRead::Events(events);
        }
        KvRead::Snapshot { sequence: self.log.last(), blocks: self.by_age.values().copied().collect() }
    }

    /// Blocks resident.
    pub(crate) fn blocks(&self) -> u64 {
        self.last_use.len() as u64
    }

    /// KV tokens the resident blocks occupy.
    pub(crate) fn tokens(&self) -> u64 {
        self.blocks().saturating_mul(self.block_tokens)
    }

    /// How many of `ids`' leading blocks are resident (stopping at the first miss).
    pub(crate) fn leading_hits(&self, ids: &[u64]) -> usize {
        ids.iter().take_while(|id| self.last_use.contains_key(id)).count()
    }

    /// Marks `ids`' leading resident blocks as just used, so that eviction takes them last.
    pub(crate) fn touch_leading(&mut self, ids: &[u64]) {
        for id in ids {
            if !self.touch(*id) {
                break;
            }
        }
    }

    /// Evicts least recently used blocks until at most `max_tokens` tokens are resident.
    pub(crate) fn shrink_to(&mut self, max_tokens: u64) {
        while self.tokens() > max_tokens {
            if self.evict_oldest(u64::MAX).is_none() {
                break;
            }
        }
    }

    /// Inserts (or refreshes) `ids` in order, keeping at most `max_tokens` tokens resident by
    /// evicting older blocks. Stops when the only blocks left to evict are ones this call just
    /// inserted or refreshed.
    pub(crate) fn insert(&mut self, ids: &[u64], max_tokens: u64) {
        let first_tick = self.tick;
        for &id in ids {
            if self.touch(id) {
                continue;
            }
            while self.tokens().saturating_add(self.block_tokens) > max_tokens {
                if self.evict_oldest(first_tick).is_none() {
                    return;
                }
            }
            self.tick += 1;
            self.last_use.insert(id, self.tick);
            self.by_age.insert(self.tick, id);
            self.log.push(|seq| KvEvent::stored(seq, id));
        }
    }

    fn touch(&mut self, id: u64) -> bool {
        let Some(at) = self.last_use.get_mut(&id) else { return false };
        self.by_age.remove(at);
        self.tick += 1;
        *at = self.tick;
        self.by_age.insert(self.tick, id);
        true
    }

    /// Evicts the least recently used block if it was last used at or before `at_most_tick`.
    fn evict_oldest(&mut self, at_most_tick: u64) -> Option<u64> {
        let (&tick, &id) = self.by_age.first_key_value()?;
        if tick > at_most_tick {
            return None;
        }
        self.by_age.remove(&tick);
        self.last_use.remove(&id);
        self.log.push(|seq| KvEvent::removed(seq, id));
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_stop_at_the_first_miss_and_lru_goes_first() {
        let mut cache = PrefixCache::new(10, 100);
        cache.insert(&[1, 2, 3], 100);
        assert_eq!(cache.tokens(), 30);
        assert_eq!(cache.leading_hits(&[1, 2, 9, 3]), 2);
        assert_eq!(cache.leading_hits(&[9, 1]), 0);
        cache.touch_leading(&[1]);
        // Room for 3 blocks: inserting 4 evicts the oldest, which is 2 (1 was touched).
        cache.insert(&[4], 30);
        assert_eq!(cache.leading_hits(&[1]), 1);
        assert_eq!(cache.leading_hits(&[2]), 0);
        assert_eq!(cache.leading_hits(&[3, 4]), 2);
        cache.shrink_to(15);
        assert_eq!(cache.blocks(), 1);
        assert_eq!(cache.leading_hits(&[4]), 1);
    }

    #[test]
    fn an_insert_never_evicts_its_own_blocks() {
        let mut cache = PrefixCache::new(10, 100);
        cache.insert(&[1, 2, 3, 4], 20);
        assert_eq!(cache.blocks(), 2);
        assert_eq!(cache.leading_hits(&[1, 2]), 2);
        cache.insert(&[5], 0);
        assert_eq!(cache.blocks(), 0);
    }

    #[test]
    fn every_store_and_eviction_is_an_event_and_a_snapshot_matches_them() {
        use switchyard_core::KvEventKind::{Removed, Stored};
        let mut cache = PrefixCache::new(10, 100);
        cache.insert(&[1, 2], 100);
        cache.insert(&[1, 3], 20); // 1 refreshed (no event); 2 evicted for 3
        let KvRead::Events(events) = cache.kv_read(Some(0), 100) else { panic!("events expected") };
        let seen: Vec<_> = events.iter().map(|e| (e.sequence, e.kind, e.block)).collect();
        assert_eq!(seen, [(1, Stored, 1), (2, Stored, 2), (3, Removed, 2), (4, Stored, 3)]);
        assert_eq!(cache.kv_read(None, 100), KvRead::Snapshot { sequence: 4, blocks: vec![1, 3] });
        assert_eq!(cache.kv_read(Some(4), 100), KvRead::Events(vec![]));
    }
}
