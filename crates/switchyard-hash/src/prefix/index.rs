//! The approximate prefix index: which endpoint has been sent which KV-cache blocks, bounded per
//! endpoint and evicted least recently used first, as the replicas' own caches are.
//!
//! # Layout
//!
//! One entry per (block, endpoint) pair, in a slab of 24-byte nodes: the block id, the endpoint's
//! slot, the neighbours in that endpoint's LRU list and the next node of the same block. A hash
//! map from block id to the first node of its chain finds the endpoints holding a block. A
//! lookup of `k` blocks reads `k` map entries and walks chains as long as the number of endpoints
//! holding each block, and stops at the first block no endpoint still matching holds. In pools of
//! up to 64 endpoints the map entry also holds a bit mask of the slots holding the block, and a
//! lookup reads one map entry per block and nothing else (1.1 µs for 32 blocks in an index of
//! 1 M entries at 64 endpoints, in the `hash` bench).
//! Eviction unlinks a node from its LRU list in O(1) and from its block's chain by a walk as
//! long as that chain. Freed nodes are reused, so the slab never grows past the sum of the
//! endpoints' capacities. [`memory_bytes`](PrefixIndex::memory_bytes) counts what the slab and
//! the map hold (46 bytes per entry at 1 M entries; the `hash` bench measures it).
//!
//! Nothing is iterated in hash order, so decisions are deterministic.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const NONE: u32 = u32::MAX;

/// One (block, endpoint) entry.
#[derive(Debug, Clone, Copy)]
struct Node {
    block: u64,
    slot: u32,
    /// Towards the endpoint's most recently used entry.
    newer: u32,
    /// Towards its least recently used one.
    older: u32,
    /// The next entry of the same block.
    next_same_block: u32,
}

/// One endpoint's LRU list.
#[derive(Debug, Clone, Copy)]
struct Lru {
    newest: u32,
    oldest: u32,
    len: u32,
    capacity: u32,
}

/// Block ids are hashes already (or, in traces, small integers): a multiply spreads them over
/// the table without SipHash's cost.
#[derive(Debug, Default, Clone, Copy)]
struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A block's entry in the map: its first node, and which of slots 0 to 63 hold it (bit `s` for
/// slot `s`), so that pools of up to 64 endpoints match without walking the chain.
#[derive(Debug, Clone, Copy)]
struct Head {
    node: u32,
    slots: u64,
}

fn bit(slot: u32) -> u64 {
    if slot < 64 { 1 << slot } else { 0 }
}

/// Which endpoint slot holds which prefix blocks; see the [module documentation](self).
///
/// Endpoints are numbered by slot (`0..slots()`); the policy maps its endpoints to slots.
#[derive(Debug)]
pub struct PrefixIndex {
    nodes: Vec<Node>,
    free: u32,
    heads: HashMap<u64, Head, BuildHasherDefault<BlockHasher>>,
    lrus: Vec<Lru>,
}

impl PrefixIndex {
    /// An empty index with `slots` endpoints of `capacity_blocks` blocks each.
    pub fn new(slots: usize, capacity_blocks: u32) -> Self {
        let lru = Lru { newest: NONE, oldest: NONE, len: 0, capacity: capacity_blocks.max(1) };
        Self { nodes: Vec::new(), free: NONE, heads: HashMap::default(), lrus: vec![lru; slots] }
    }

    /// How many endpoint slots the index has.
    pub fn slots(&self) -> usize {
        self.lrus.len()
    }

    /// Adds slots up to `slots` (new ones empty, of `capacity_blocks`).
    pub fn ensure_slots(&mut self, slots: usize, capacity_blocks: u32) {
        let lru = Lru { newest: NONE, oldest: NONE, len: 0, capacity: capacity_blocks.max(1) };
        if self.lrus.len() < slots {
            self.lrus.resize(slots, lru);
        }
    }

    /// Forgets everything slot `slot` holds (its endpoint left, or restarted).
    pub fn clear_slot(&mut self, slot: usize) {
        while let Some(lru) = self.lrus.get(slot)
            && lru.oldest != NONE
        {
            let node = lru.oldest;
            self.remove(node);
        }
    }

    /// Entries held, over all slots.
    pub fn len(&self) -> usize {
        self.lrus.iter().map(|l| l.len as usize).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries slot `slot` holds.
    pub fn slot_len(&self, slot: usize) -> usize {
        self.lrus.get(slot).map_or(0, |l| l.len as usize)
    }

    /// The sum of the slots' capacities: the most entries the index can hold.
    pub fn capacity(&self) -> usize {
        self.lrus.iter().map(|l| l.capacity as usize).sum()
    }

    /// Bytes the index holds on the heap: its slab, its map's buckets (key, value and control
    /// byte each) and its LRU heads.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + self.heads.capacity() * (size_of::<(u64, Head)>() + 1)
            + self.lrus.capacity() * size_of::<Lru>()
    }

    /// For each slot, how many of `blocks`' leading blocks it holds, into `matched` (one entry per
    /// slot, overwritten). Returns the longest match.
    pub fn longest_matches(&self, blocks: &[u64], matched: &mut [u32]) -> u32 {
        matched.iter_mut().for_each(|m| *m = 0);
        if self.lrus.len() <= 64 {
            return self.longest_matches_by_mask(blocks, matched);
        }
        let mut longest = 0;
        for (i, block) in blocks.iter().enumerate() {
            let i = i as u32;
            let Some(head) = self.heads.get(block) else { break };
            let mut advanced = false;
            let mut node = head.node;
            while node != NONE {
                let n = &self.nodes[node as usize];
                if let Some(m) = matched.get_mut(n.slot as usize)
                    && *m == i
                {
                    *m = i + 1;
                    advanced = true;
                }
                node = n.next_same_block;
            }
            if !advanced {
                break;
            }
            longest = i + 1;
        }
        longest
    }

    /// [`longest_matches`](Self::longest_matches) for up to 64 slots: one map read per block.
    fn longest_matches_by_mask(&self, blocks: &[u64], matched: &mut [u32]) -> u32 {
        let mut alive = u64::MAX;
        let mut longest = 0;
        for (i, block) in blocks.iter().enumerate() {
            let still = alive & self.heads.get(block).map_or(0, |h| h.slots);
            // Slots that matched up to here and stop: their match is `i` blocks.
            Self::settle(alive & !still, i as u32, matched);
            alive = still;
            if alive == 0 {
                return longest;
            }
            longest = i as u32 + 1;
        }
        Self::settle(alive, longest, matched);
        longest
    }

    fn settle(mut slots: u64, blocks: u32, matched: &mut [u32]) {
        if blocks == 0 {
            return;
        }
        while slots != 0 {
            let s = slots.trailing_zeros() as usize;
            if let Some(m) = matched.get_mut(s) {
                *m = blocks;
            }
            slots &= slots - 1;
        }
    }

    /// Records that slot `slot` now holds `blocks` (most recently used), evicting its least
    /// recently used entries past its capacity. Blocks already held are refreshed.
    pub fn insert(&mut self, slot: usize, blocks: &[u64]) {
        if slot >= self.lrus.len() {
            return;
        }
        for &block in blocks {
            if let Some(node) = self.find(block, slot as u32) {
                self.unlink_lru(node);
                self.push_newest(node);
                continue;
            }
            if self.lrus[slot].len >= self.lrus[slot].capacity {
                let oldest = self.lrus[slot].oldest;
                self.remove(oldest);
            }
            let node = self.alloc(Node {
                block,
                slot: slot as u32,
                newer: NONE,
                older: NONE,
                next_same_block: NONE,
            });
            let head = self.heads.entry(block).or_insert(Head { node: NONE, slots: 0 });
            self.nodes[node as usize].next_same_block = head.node;
            head.node = node;
            head.slots |= bit(slot as u32);
            self.push_newest(node);
        }
    }

    /// Forgets that slot `slot` holds `block` (its replica evicted it). Returns whether it did.
    pub fn remove_block(&mut self, slot: usize, block: u64) -> bool {
        match self.find(block, slot as u32) {
            Some(node) => {
                self.remove(node);
                true
            }
            None => false,
        }
    }

    fn find(&self, block: u64, slot: u32) -> Option<u32> {
        let mut node = self.heads.get(&block)?.node;
        while node != NONE {
            let n = &self.nodes[node as usize];
            if n.slot == slot {
                return Some(node);
            }
            node = n.next_same_block;
        }
        None
    }

    fn alloc(&mut self, node: Node) -> u32 {
        if self.free != NONE {
            let at = self.free;
            self.free = self.nodes[at as usize].next_same_block;
            self.nodes[at as usize] = node;
            at
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    fn push_newest(&mut self, node: u32) {
        let slot = self.nodes[node as usize].slot as usize;
        let lru = &mut self.lrus[slot];
        let old_newest = lru.newest;
        lru.newest = node;
        if lru.oldest == NONE {
            lru.oldest = node;
        }
        lru.len += 1;
        let n = &mut self.nodes[node as usize];
        n.older = old_newest;
        n.newer = NONE;
        if old_newest != NONE {
            self.nodes[old_newest as usize].newer = node;
        }
    }

    fn unlink_lru(&mut self, node: u32) {
        let Node { slot, newer, older, .. } = self.nodes[node as usize];
        let lru = &mut self.lrus[slot as usize];
        if newer == NONE {
            lru.newest = older;
        } else {
            self.nodes[newer as usize].older = older;
        }
        if older == NONE {
            lru.oldest = newer;
        } else {
            self.nodes[older as usize].newer = newer;
        }
        lru.len -= 1;
    }

    fn remove(&mut self, node: u32) {
        if node == NONE {
            return;
        }
        self.unlink_lru(node);
        let block = self.nodes[node as usize].block;
        let next = self.nodes[node as usize].next_same_block;
        let slot = self.nodes[node as usize].slot;
        if let Some(head) = self.heads.get_mut(&block) {
            head.slots &= !bit(slot);
            if head.node == node {
                if next == NONE {
                    self.heads.remove(&block);
                } else {
                    head.node = next;
                }
            } else {
                let mut at = head.node;
                while at != NONE {
                    let after = self.nodes[at as usize].next_same_block;
                    if after == node {
                        self.nodes[at as usize].next_same_block = next;
                        break;
                    }
                    at = after;
                }
            }
        }
        self.nodes[node as usize].next_same_block = self.free;
        self.free = node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_are_leading_and_per_slot() {
        let mut index = PrefixIndex::new(3, 100);
        index.insert(0, &[1, 2, 3, 4]);
        index.insert(1, &[1, 2, 9]);
        index.insert(2, &[2, 3]);
        let mut m = [0; 3];
        assert_eq!(index.longest_matches(&[1, 2, 3, 4, 5], &mut m), 4);
        assert_eq!(m, [4, 2, 0], "slot 2 holds 2 and 3 but not the first block");
        assert_eq!(index.longest_matches(&[7, 1], &mut m), 0);
        assert_eq!(m, [0, 0, 0]);
        assert_eq!(index.len(), 9);
    }

    #[test]
    fn each_slot_evicts_its_least_recently_used_past_its_capacity() {
        let mut index = PrefixIndex::new(2, 3);
        index.insert(0, &[1, 2, 3]);
        index.insert(1, &[1, 2, 3]);
        index.insert(0, &[1]); // refresh 1: 2 is now the oldest
        index.insert(0, &[4]);
        let mut m = [0; 2];
        index.longest_matches(&[1], &mut m);
        assert_eq!(m, [1, 1]);
        index.longest_matches(&[1, 2], &mut m);
        assert_eq!(m, [1, 2], "slot 0 evicted 2");
        assert_eq!((index.slot_len(0), index.slot_len(1)), (3, 3));
        index.clear_slot(1);
        index.longest_matches(&[1, 2], &mut m);
        assert_eq!(m, [1, 0]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn the_mask_lookup_agrees_with_the_chain_walk() {
        let mut small = PrefixIndex::new(8, 40);
        let mut large = PrefixIndex::new(70, 40);
        let mut x = 7u64;
        for round in 0..3000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let blocks: Vec<u64> = (0..(x >> 61) + 1).map(|b| (x >> 50) % 8 * 10 + b).collect();
            small.insert((round % 8) as usize, &blocks);
            large.insert((round % 8) as usize, &blocks);
            let probe: Vec<u64> = (0..6).map(|b| (x >> 40) % 8 * 10 + b).collect();
            let (mut a, mut b) = (vec![0; 8], vec![0; 70]);
            let la = small.longest_matches(&probe, &mut a);
            let lb = large.longest_matches(&probe, &mut b);
            assert_eq!((la, &a[..]), (lb, &b[..8]), "round {round}");
        }
    }

    #[test]
    fn the_slab_never_grows_past_the_capacity() {
        let mut index = PrefixIndex::new(4, 50);
        let mut x = 1u64;
        for round in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let blocks: Vec<u64> = (0..(x >> 60)).map(|b| (x >> 40) % 300 + b).collect();
            index.insert((round % 4) as usize, &blocks);
            assert!(index.len() <= index.capacity());
        }
        assert!(index.nodes.len() <= index.capacity());
        // The slot masks agree with the chains.
        for h in index.heads.values() {
            let mut mask = 0;
            let mut at = h.node;
            while at != NONE {
                mask |= bit(index.nodes[at as usize].slot);
                at = index.nodes[at as usize].next_same_block;
            }
            assert_eq!(mask, h.slots);
        }
        // Every chain entry is reachable and consistent with the LRU lengths.
        let chained: usize = index
            .heads
            .values()
            .map(|h| {
                let mut n = 0;
                let mut at = h.node;
                while at != NONE {
                    n += 1;
                    at = index.nodes[at as usize].next_same_block;
                }
                n
            })
            .sum();
        assert_eq!(chained, index.len());
    }
}
