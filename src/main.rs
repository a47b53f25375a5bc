//! The `switchyard` command line (see [`switchyard::cli`]), on mimalloc.

use std::process::ExitCode;

/// mimalloc: the gateway allocates a little per request on every thread; glibc's malloc was about
/// 5 % of its CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    switchyard::cli::run().await
}
