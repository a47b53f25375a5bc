//! KV-cache block events: what a replica's prefix cache stored and evicted, in order.
//!
//! A replica numbers its events from 1 up, one sequence number per block event; a reader that
//! has applied every event up to `n` is in the state the replica was in right after event `n`.
//! The simulated engine emits them, the worker streams them (`switchyard.kv.v1.KvEvents`), and
//! the precise prefix-aware policy of `switchyard-hash` indexes them.

/// What happened to a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvEventKind {
    /// The block's KV is now cached (prefilled, or refreshed: already held blocks are not
    /// stored again).
    Stored,
    /// The block was evicted.
    Removed,
}

/// One block event of a replica's prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvEvent {
    /// Its position in the replica's event order, from 1.
    pub sequence: u64,
    /// Stored or removed.
    pub kind: KvEventKind,
    /// The block's id, as [`PrefixBlocks`](crate::PrefixBlocks) holds it.
    pub block: u64,
}

impl KvEvent {
    /// A block stored as event `sequence`.
    pub fn stored(sequence: u64, block: u64) -> Self {
        Self { sequence, kind: KvEventKind::Stored, block }
    }

    /// A block removed as event `sequence`.
    pub fn removed(sequence: u64, block: u64) -> Self {
        Self { sequence, kind: KvEventKind::Removed, block }
    }
}
