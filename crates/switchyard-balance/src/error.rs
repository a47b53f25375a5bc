//! The balancer's errors.

/// The balancer had no endpoint to send the request to: discovery has found none (within the
/// balancer's wait for the first endpoints), or every endpoint was removed.
///
/// A gRPC server or gateway answers it with `UNAVAILABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no endpoint available to serve the request")]
pub struct NoEndpoints;

/// The response future was polled after it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("balancer response future polled after completion")]
pub struct PolledAfterCompletion;
