//! Hash and prefix-cache-aware routing for the Switchyard balancer.
//!
//! An LLM replica answers fastest when a prompt's prefix is already in its KV cache. The
//! policies here send related requests to the same replica, each as a
//! [`switchyard_balance::Policy`] of the balancer, registered by name:
//!
//! | name | policy | routes by |
//! | --- | --- | --- |
//! | `consistent-hash` | [`ConsistentHash::new`] | session key (or first prefix block) on a ring |
//! | `bounded-load-hash` | [`ConsistentHash::bounded`] | the same, no endpoint past `c` × its share |
//! | `prefix-aware` | [`PrefixAware`] | cached prefix blocks (approximate index) against waiting work |
//! | `prefix-aware-precise` | [`PrefixAwarePrecise`] | the same on the replicas' KV-event streams ([`precise`]) |
//!
//! Keys travel in request extensions: the key layer puts a
//! [`RoutingKey`](switchyard_core::RoutingKey) (from `x-session-id`) and the prompt's
//! [`PrefixBlocks`](switchyard_core::PrefixBlocks) there, and [`request_key`] reads them. Load
//! comes from the balancer's endpoint states, the ones its
//! [`LoadBoard`](switchyard_balance::LoadBoard) publishes.
//!
//! [`register`] adds the policies to a [`PolicyRegistry`]; the `switchyard` binary registers
//! them in the process-wide registry at start, so that the gateway's config, `--policy` and the
//! lab can name them.
//!
//! # Example
//!
//! ```
//! use switchyard_balance::policy::{self, PolicySpec};
//!
//! let registry = policy::PolicyRegistry::with_builtins();
//! switchyard_hash::register(&registry)?;
//! let spec: PolicySpec = serde_json::from_str(r#"{"name": "bounded-load-hash", "load_factor": 1.5}"#)?;
//! assert_eq!(registry.build(&spec, 0)?.name(), "bounded-load-hash");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod consistent;
mod key;
pub mod precise;
pub mod prefix;
mod ring;

use std::sync::Arc;

pub use consistent::{ConsistentHash, DEFAULT_LOAD_FACTOR};
pub use key::{DEFAULT_KEY_BLOCKS, request_key};
pub use precise::{KvFeed, KvSubscriber, PrefixAwarePrecise, PrefixAwarePreciseConfig};
pub use prefix::{PrefixAware, PrefixAwareConfig, PrefixIndex};
pub use ring::{DEFAULT_POINTS_PER_WEIGHT, MAX_POINTS, Ring};
use switchyard_balance::policy::{Policy, PolicyError, PolicyRegistry, PolicySpec};

/// The names this crate registers, in the order reports list them.
pub const POLICY_NAMES: [&str; 4] =
    ["consistent-hash", "bounded-load-hash", "prefix-aware", "prefix-aware-precise"];

type Factory = fn(&PolicySpec, u64) -> Result<Arc<dyn Policy>, PolicyError>;

/// Registers this crate's policies in `registry`. Registering twice in one registry is not an
/// error: names already there are left as they are.
pub fn register(registry: &PolicyRegistry) -> Result<(), PolicyError> {
    let entries: [(&str, &str, Factory); 4] = [
        (
            "consistent-hash",
            "ring hash of the session key (or first prefix block), nginx's `hash consistent`",
            |spec, _| Ok(Arc::new(ConsistentHash::from_spec(spec, false)?)),
        ),
        (
            "bounded-load-hash",
            "consistent hashing with bounded loads: no endpoint past load_factor (1.25) x its share in flight",
            |spec, _| Ok(Arc::new(ConsistentHash::from_spec(spec, true)?)),
        ),
        (
            "prefix-aware",
            "prefill a cached prefix saves against the least-response-time wait, loads bounded",
            |spec, _| Ok(Arc::new(PrefixAware::from_spec(spec)?)),
        ),
        (
            "prefix-aware-precise",
            "prefix-aware on the replicas' exact KV-cache blocks (their event streams), approximate where a stream is down",
            |spec, _| Ok(Arc::new(PrefixAwarePrecise::from_spec(spec)?)),
        ),
    ];
    for (name, description, factory) in entries {
        match registry.register(name, description, factory) {
            Ok(()) | Err(PolicyError::Duplicate { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
