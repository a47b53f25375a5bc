//! Pools: one balancer over the endpoints of one model or service.

use std::fmt;
use std::time::Duration;

use switchyard_balance::discover::StaticDiscover;
use switchyard_balance::{Backend, Balance, LoadBoard, PolicyHandle, PolicyKind};
use switchyard_core::stable_hash;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;
use tower::buffer::Buffer;

use super::config::{ConfigError, PoolConfig};

/// A request on its way to an endpoint.
pub(crate) type UpstreamRequest = http::Request<Body>;

type Balancer = Balance<StaticDiscover<Channel>, Channel, UpstreamRequest>;

/// A pool's balancer, shared by every connection of the gateway.
pub(crate) type Upstream = Buffer<UpstreamRequest, <Balancer as Service<UpstreamRequest>>::Future>;

/// Requests that may wait for the balancer to pick their endpoint. Picking takes well under a
/// microsecond and the endpoints' own queues are not counted here, so this bounds a burst, not
/// the requests in flight.
const PICK_QUEUE: usize = 1024;

/// Longest wait for a TCP connection to an endpoint before its requests fail with `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One pool of a running gateway: its balancer's load board and policy.
pub struct Pool {
    name: String,
    policy: PolicyHandle,
    board: LoadBoard,
    seed: u64,
    pub(crate) upstream: Upstream,
}

impl Pool {
    /// Connects (lazily) to the pool's endpoints and starts its balancer. Needs a Tokio runtime.
    pub(crate) fn start(config: &PoolConfig) -> Result<Self, ConfigError> {
        let mut backends = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let channel = Channel::from_shared(endpoint.address.clone())
                .map_err(|e| ConfigError {
                    file: None,
                    line: None,
                    field: Some(format!("pool {:?} endpoint {}", config.name, endpoint.id)),
                    message: format!("{:?}: {e}", endpoint.address),
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_lazy();
            backends.push(Backend::new(endpoint.clone(), channel));
        }
        let seed = stable_hash(config.name.as_bytes());
        let policy = PolicyHandle::of(config.policy, seed);
        // `from_backends` inserts the endpoints at once, so the board shows them before the
        // first request (the buffer polls the balancer only when a request comes).
        let balancer: Balancer = Balance::from_backends(backends).with_policy(policy.clone());
        let board = balancer.board();
        Ok(Self {
            name: config.name.clone(),
            policy,
            board,
            seed,
            upstream: Buffer::new(balancer, PICK_QUEUE),
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The board on which the pool's balancer publishes its endpoints' load.
    pub fn board(&self) -> &LoadBoard {
        &self.board
    }

    /// The pool's policy; [`set_policy`](Self::set_policy) switches it.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Switches the pool to a new policy of `kind`, atomically: requests already sent stay where
    /// they are. Returns the name of the previous policy.
    pub fn set_policy(&self, kind: PolicyKind) -> &'static str {
        self.policy.set(kind.build(self.seed)).name()
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("policy", &self.policy.name())
            .field("endpoints", &self.board.len())
            .finish_non_exhaustive()
    }
}
