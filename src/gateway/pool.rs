//! Pools: one balancer over the endpoints of one model or service.

use std::fmt;

use switchyard_balance::discover::StaticDiscover;
use switchyard_balance::{Backend, Balance, LoadBoard, PolicyHandle, PolicyKind, Shared};
use switchyard_core::stable_hash;

use super::body::RequestBody;
use super::config::{ConfigError, PoolConfig};
use super::upstream::EndpointClient;

/// A request on its way to an endpoint.
pub(crate) type UpstreamRequest = http::Request<RequestBody>;

type Balancer = Balance<StaticDiscover<EndpointClient>, EndpointClient, UpstreamRequest>;

/// A pool's balancer, called in place by every stream of the gateway (no task in between).
pub(crate) type Upstream = Shared<Balancer>;

/// One pool of a running gateway: its balancer's load board and policy.
pub struct Pool {
    name: String,
    policy: PolicyHandle,
    board: LoadBoard,
    seed: u64,
    pub(crate) upstream: Upstream,
}

impl Pool {
    /// Starts the pool's balancer over its endpoints, with a connection to each per serving thread
    /// (opened on first use).
    pub(crate) fn start(config: &PoolConfig, threads: usize) -> Result<Self, ConfigError> {
        let mut backends = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let service = EndpointClient::new(&endpoint.address, threads).map_err(|e| ConfigError {
                file: None,
                line: None,
                field: Some(format!("pool {:?} endpoint {}", config.name, endpoint.id)),
                message: e.to_string(),
            })?;
            backends.push(Backend::new(endpoint.clone(), service));
        }
        let seed = stable_hash(config.name.as_bytes());
        let policy = PolicyHandle::of(config.policy, seed);
        // `from_backends` inserts the endpoints at once, so the board shows them before the
        // first request.
        let balancer: Balancer = Balance::from_backends(backends).with_policy(policy.clone());
        let board = balancer.board();
        Ok(Self { name: config.name.clone(), policy, board, seed, upstream: Shared::new(balancer) })
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
