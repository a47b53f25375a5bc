//! `switchyard` with a counting allocator: the same command line (see [`switchyard::cli`]) on
//! mimalloc wrapped in `switchyard_alloc_count::CountingAlloc`, whose counters the gateway's
//! admin API answers at `GET /debug/allocations`. `switchyard bench cost` runs its gateway for
//! the allocations and bytes per call. Built only with the feature that names it:
//!
//! ```sh
//! cargo build --release --features count-allocations --bin switchyard-count-allocations
//! ```

use std::process::ExitCode;

use switchyard::allocations::{self, AllocationCounts};
use switchyard_alloc_count::CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc<mimalloc::MiMalloc> = CountingAlloc::new(mimalloc::MiMalloc);

fn counts() -> AllocationCounts {
    let counts = GLOBAL.counts();
    AllocationCounts { allocations: counts.allocations, bytes: counts.bytes }
}

#[tokio::main]
async fn main() -> ExitCode {
    allocations::register(counts);
    switchyard::cli::run().await
}
