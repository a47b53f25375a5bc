//! Elastic scaling for a Switchyard pool: how many replicas it should have, and getting there
//! without failing a request.
//!
//! ```text
//! LoadBoard ─▶ Signals ─▶ Recommender ─▶ Scaler ─▶ replicas start ─▶ SERVING ─▶ discovery Insert
//!                                              └─▶ discovery Remove ─▶ drain ─▶ stop
//! ```
//!
//! - [`signals`]: a snapshot of the pool read in process from the balancer's
//!   [`LoadBoard`](switchyard_balance::LoadBoard) (in flight, work waiting for a first byte in
//!   tokens, learnt capacity, queue depth and KV-cache use from the replicas' reports, arrival
//!   rate), with stale reports treated as missing; and for a fleet of gateways, the same snapshot
//!   from a Prometheus server's query API ([`prometheus`]), summed over the gateways.
//! - [`recommend`]: the algorithms behind one [`Recommender`] trait: Switchyard's LLM-aware
//!   default ([`LlmAware`]) and faithful baselines: the Kubernetes HPA ([`Hpa`]), Knative's KPA
//!   ([`Kpa`]) and llm-d's saturation autoscaler ([`Saturation`]). A missing signal never lowers
//!   the count.
//! - [`scaler`]: the [`Scaler`] trait (set the desired count; report desired, current and ready),
//!   the local [`process`](scaler::process) scaler, and with the feature `kubernetes` the
//!   `scaler::kubernetes` scaler (the `scale` subresource of a Deployment or StatefulSet).
//! - [`vertical`]: the worker container's CPU and memory requests, recommended beside the count
//!   from the sequences a replica runs at once ([`Vertical`]), applied in place by the Kubernetes
//!   scaler; its docs say what is and is not vertical scaling for an LLM replica.
//! - [`WithHeld`]: the requests held in front of a pool scaled to zero (the gateway's shed
//!   queue) added to the signals, the demand that wakes it.
//! - [`Autoscaler`]: the loop, logging every decision with its inputs (`tracing`) and exporting
//!   desired, current and ready replicas through the `metrics` facade.
//!
//! The lab's `burst` scenario (`switchyard lab burst`) runs every recommender over simulated
//! replicas with a cold start and compares them with a fixed pool sized for the peak.
//!
//! # Example
//!
//! The HPA's documented example: replicas at twice their target double.
//!
//! ```
//! use switchyard_autoscale::{Hpa, HpaConfig, PoolSize, Recommender, ReplicaSignals, Signals};
//! use switchyard_core::EndpointId;
//! use tokio::time::Instant;
//!
//! let now = Instant::now();
//! let replica = |i: u32| ReplicaSignals {
//!     id: EndpointId::new(format!("r{i}")),
//!     in_flight: 16,
//!     awaiting_first_byte: 0,
//!     pending_work: 0,
//!     capacity_per_sec: None,
//!     report: None,
//! };
//! let replicas = (0..3).map(replica).collect();
//! let signals = Signals::new(now, replicas);
//! let mut hpa = Hpa::new(HpaConfig { target: 8.0, ..HpaConfig::default() });
//! let size = PoolSize { desired: 3, current: 3, ready: 3 };
//! assert_eq!(hpa.recommend(now, size, Some(&signals)).desired, 6);
//! assert_eq!(hpa.recommend(now, size, None).desired, 3, "a missing metric keeps the count");
//! ```
#![warn(missing_docs)]

mod autoscaler;
mod held;
pub mod prometheus;
pub mod recommend;
pub mod scaler;
pub mod signals;
pub mod vertical;

pub use autoscaler::{
    Autoscaler, CURRENT_METRIC, DESIRED_METRIC, Decision, READY_METRIC, RECOMMENDED_CPU_METRIC,
    RECOMMENDED_MEMORY_METRIC, SCALE_EVENTS_METRIC,
};
pub use held::WithHeld;
pub use prometheus::{PolledSignals, PrometheusConfig, PrometheusError, PrometheusSignals};
pub use recommend::{
    Bounds, Hpa, HpaConfig, Kpa, KpaConfig, LlmAware, LlmAwareConfig, PoolSize, Recommendation, Recommender,
    Saturation, SaturationConfig,
};
pub use scaler::{ScaleError, Scaler};
pub use signals::{BoardSignals, ReplicaSignals, SignalSource, Signals};
pub use vertical::{Resources, Vertical, VerticalConfig, VerticalRecommendation};
