//! What the process has allocated, when the binary counts it.
//!
//! `switchyard` itself does not count (mimalloc, untouched, is its allocator). The second binary,
//! `switchyard-count-allocations` (`cargo build --release --features count-allocations --bin
//! switchyard-count-allocations`), wraps mimalloc in `switchyard_alloc_count::CountingAlloc` and
//! [`register`]s a reader of its counters here; the gateway's admin API then answers
//! `GET /debug/allocations` with [`read`]'s counts, and `switchyard bench cost` reads them before
//! and after its windows of calls for the allocations and bytes per call.
//!
//! The library sees a plain function pointer, not the allocator: which allocator a binary has is
//! the binary's choice, and nothing in the library changes with it.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The process's allocations since it started, as `GET /debug/allocations` answers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationCounts {
    /// Calls into the allocator that allocate (`alloc`, `alloc_zeroed`, `realloc`).
    pub allocations: u64,
    /// Bytes asked for by those calls.
    pub bytes: u64,
}

static READER: OnceLock<fn() -> AllocationCounts> = OnceLock::new();

/// Registers the function that reads the process's allocation counters, once; `false` when one
/// was already registered (the first stays).
pub fn register(reader: fn() -> AllocationCounts) -> bool {
    READER.set(reader).is_ok()
}

/// The counts now, when a reader is registered.
pub fn read() -> Option<AllocationCounts> {
    READER.get().map(|reader| reader())
}
