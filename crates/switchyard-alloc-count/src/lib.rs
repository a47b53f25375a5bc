//! A global allocator that counts: [`CountingAlloc`] wraps another [`GlobalAlloc`] (mimalloc in
//! `switchyard-count-allocations`, the binary `switchyard bench cost` reads bytes per call from)
//! and counts every allocation, free and byte asked of it.
//!
//! What counts: `alloc`, `alloc_zeroed` and `realloc` are allocations (each is one call into the
//! allocator's entry points, as callgrind counts `mi_malloc_aligned`, `mi_zalloc_aligned` and
//! `mi_realloc_aligned`); their bytes are the size asked for (a `realloc`'s new size); `dealloc`
//! is a free. The counters are relaxed atomics: each is exact, but a reader on another thread may
//! see one counter a few updates ahead of another, which a count over thousands of calls does not
//! notice. On x86-64 a relaxed `fetch_add` is the same locked instruction as any other, about as
//! costly as the allocation itself on mimalloc's fast path; what this binary measures is counts,
//! not time.
//!
//! ```
//! use std::alloc::{GlobalAlloc, Layout, System};
//! use switchyard_alloc_count::CountingAlloc;
//!
//! static COUNTING: CountingAlloc<System> = CountingAlloc::new(System);
//! let layout = Layout::from_size_align(64, 8).expect("a valid layout");
//! let before = COUNTING.counts();
//! // SAFETY: the layout has a non-zero size, and the pointer is freed with the same layout.
//! # #[allow(unsafe_code)]
//! unsafe {
//!     let p = COUNTING.alloc(layout);
//!     COUNTING.dealloc(p, layout);
//! }
//! let after = COUNTING.counts();
//! assert_eq!(after.allocations - before.allocations, 1);
//! assert_eq!(after.frees - before.frees, 1);
//! assert_eq!(after.bytes - before.bytes, 64);
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

/// The counters of a [`CountingAlloc`] at one moment, each since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    pub allocations: u64,
    /// Calls to `dealloc`.
    pub frees: u64,
    /// Bytes asked for by those allocations (a `realloc`'s new size).
    pub bytes: u64,
}

/// `A`, counting its allocations, frees and bytes; see the [crate] docs.
#[derive(Debug)]
pub struct CountingAlloc<A> {
    inner: A,
    allocations: AtomicU64,
    frees: AtomicU64,
    bytes: AtomicU64,
}

impl<A> CountingAlloc<A> {
    /// `inner` with its counters at zero; `const`, for a `#[global_allocator]` static.
    pub const fn new(inner: A) -> Self {
        Self { inner, allocations: AtomicU64::new(0), frees: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        Counts {
            allocations: self.allocations.load(Ordering::Relaxed),
            frees: self.frees.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn allocated(&self, size: usize) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments unchanged, so `inner`'s
// guarantees are this allocator's; the counting touches only atomics and never allocates.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocated(layout.size());
        // SAFETY: the caller's contract for `alloc` is `inner.alloc`'s.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocated(layout.size());
        // SAFETY: as `alloc`.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.allocated(new_size);
        // SAFETY: the caller's contract for `realloc` is `inner.realloc`'s.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.frees.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is `inner.dealloc`'s.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}
