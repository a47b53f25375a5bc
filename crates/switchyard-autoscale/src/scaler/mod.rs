//! Scalers: what turns a desired replica count into replicas.
//!
//! A [`Scaler`] is asked for a count and reports what exists ([`PoolSize`]: desired, current,
//! ready). It owns the rules every scaler keeps: a new replica joins discovery only once it is
//! ready (health SERVING), and a replica leaves by draining (removed from discovery first, its
//! requests in flight finish, then it stops). The [`process`] scaler starts and stops local
//! `switchyard worker` processes; the lab's scaler starts simulated replicas behind the same
//! trait, so one recommender is measured as it runs.
//!
//! The `kubernetes` scaler (feature `kubernetes`) sets the `scale` subresource of a
//! Deployment or StatefulSet through `kube`; Kubernetes keeps the same rules there (readiness
//! probes, terminating EndpointSlice conditions, SIGTERM then SIGKILL).

#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod process;

use std::future::Future;

use crate::{PoolSize, Resources};

/// Why a scaler could not act.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// A replica could not be started.
    #[error("starting a replica: {0}")]
    Start(String),
    /// Discovery is gone (the balancer was dropped).
    #[error("discovery is gone")]
    DiscoveryGone,
    /// The Kubernetes API server refused or could not be reached.
    #[error("kubernetes: {0}")]
    Api(String),
}

/// Sets a pool's replica count.
pub trait Scaler: Send {
    /// Makes `replicas` the desired count: starts the missing ones (they join discovery when
    /// ready) or drains and stops the extra ones. Returns once the change is under way, not when
    /// it is done.
    fn set_desired(&mut self, replicas: u32) -> impl Future<Output = Result<(), ScaleError>> + Send;

    /// The pool's size now.
    fn size(&self) -> PoolSize;

    /// Gives every replica's worker container the resource `requests` (a
    /// [vertical recommendation](crate::vertical)), in place where the platform can. Returns how
    /// many replicas were resized. A scaler that cannot resize (local processes) resizes none.
    fn set_resources(&mut self, requests: Resources) -> impl Future<Output = Result<u32, ScaleError>> + Send {
        let _ = requests;
        std::future::ready(Ok(0))
    }
}
