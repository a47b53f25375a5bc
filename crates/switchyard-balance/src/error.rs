//! The balancer's own errors (the errors it answers requests with are
//! [`switchyard_core::Error`]s).

/// The response future was polled after it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("balancer response future polled after completion")]
pub struct PolledAfterCompletion;
