//! Switchyard: load balancing for gRPC model-serving services (elastic scaling is to come).
//!
//! This is the application package: the `switchyard` command line and what it is built of:
//! - [`cli`]: the command line both binaries run;
//! - [`allocations`]: the process's allocation counts, when its binary counts them;
//! - [`autoscale`]: `switchyard autoscale`, the autoscaler as a process: signals from Prometheus,
//!   the LLM-aware recommender, the Kubernetes scaler;
//! - [`bench`](mod@bench): the gateway against nginx and HAProxy, real processes over loopback gRPC;
//! - [`cluster`]: the example cluster, workers of unequal speed behind the gateway, loaded with a
//!   production trace and reported with plots;
//! - [`gateway`]: a transparent gRPC load balancer over pools of model servers, with routes by
//!   service and model and an admin API;
//! - [`worker`]: a KServe v2 gRPC model server over a simulated LLM engine;
//! - [`lab`]: the policy lab, every balancing policy against simulated replicas under a paused
//!   clock;
//! - [`loadgen`]: an open-loop load generator that replays production traces;
//! - [`infer`]: one call from the command line, with its TTFT and decoded load report;
//! - [`listen`]: listen addresses as users write them (`localhost:9001`);
//! - [`report`]: percentile summaries, tables and JSON reports;
//! - [`proto`]: the generated KServe v2 and ORCA protocol code;
//! - [`traces`]: the bundled production traces.
//!
//! The reusable middleware lives in the `switchyard-*` crates, re-exported here as [`core`],
//! [`balance`] and [`sim`].
#![warn(missing_docs)]

pub mod allocations;
pub mod autoscale;
pub mod bench;
pub mod cli;
pub mod cluster;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod infer;
pub mod lab;
pub mod listen;
pub mod loadgen;
pub mod oob_reports;
pub mod proto;
pub mod report;
pub mod traces;
pub mod worker;

pub use switchyard_balance as balance;
pub use switchyard_core as core;
pub use switchyard_hash as hash;
pub use switchyard_sim as sim;

/// Registers the policies of the crates beyond the balancer's built-ins (the hash and
/// prefix-aware policies of [`hash`]) in the process-wide policy registry, once. The binary calls
/// it at start, and the lab, the gateway and the cluster call it on entry, so that every one of
/// them can name every policy.
pub fn register_policies() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = switchyard_hash::register(switchyard_balance::policy::registry()) {
            tracing::error!("registering the hash policies: {e}");
        }
    });
}
