//! Adaptive concurrency limits: how many requests a service (or one replica) should have in
//! flight at once, learnt from the latency and the drops of the requests it served.
//!
//! A service past its capacity does not serve more, it only queues more: latency grows while
//! throughput stays flat, until callers time out. A concurrency limit keeps the requests in flight
//! near the point where latency starts to grow (the knee), so that excess load waits in a queue
//! that can be managed (`switchyard-shed`) or is refused at once, rather than inside the service.
//!
//! The algorithms are plain state machines ([`LimitAlgorithm`]) fed one [`Sample`] per finished
//! request (its RTT, the requests in flight when it started, whether it was dropped), with no
//! clock and no I/O of their own:
//!
//! | algorithm | signal | source |
//! | --- | --- | --- |
//! | [`Fixed`] | none | tower's `ConcurrencyLimit` |
//! | [`Aimd`] | drops, RTT above a timeout or 1.5 × the base RTT | Netflix concurrency-limits `AIMDLimit`, TCP Reno |
//! | [`Gradient2`] | current RTT against its long average | Netflix `Gradient2Limit` |
//! | [`Vegas`] | queue estimated from RTT against the no-load RTT | Netflix `VegasLimit`, TCP Vegas |
//! | [`EnvoyGradient`] | RTT against a periodically measured min RTT | Envoy adaptive concurrency |
//!
//! [`Windowed`] feeds any of them one averaged sample per window, as Netflix's `WindowedLimit`
//! does, for services whose requests differ in size. Each module documents its formula, its
//! defaults and where they come from. Gradient2 and Vegas default to parameters that find a
//! replica's knee with no hand-set limit ([`Gradient2::knee`], [`Vegas::knee`]; within 20 % of
//! it in 30 s, `tests/convergence.rs`), and AIMD to parameters that back off on queueing at
//! replicas that queue rather than refuse ([`Aimd::knee`], `tests/aimd_queueing.rs`); Netflix's
//! own defaults are [`Gradient2::netflix`], [`Vegas::netflix`] and [`Aimd::netflix`].
//! [`WindowedMin`] is the windowed minimum AIMD's base RTT (and the balancer's capacity
//! estimate) is kept with. Two adapters use
//! them: the [`Limiter`] (requests in flight against the limit, with [`Permit`]s) under the
//! [`LimitLayer`] for a whole service (a tonic server, the worker, a gateway pool); and the
//! balancer's per-endpoint limit, which feeds the same algorithms from its own in-flight
//! tracking. Outcomes classify as [`Signal::of`] says.
//!
//! A stream is judged while it runs too: [`PaceCheck`] watches its tokens against its deadline
//! and its `max_tokens` (an upper bound) and a per-token objective, and says when it is behind,
//! so that its permit is [settled](Permit::settle) as a drop seconds before the deadline it
//! will miss (see [`pace`]).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use switchyard_limit::{LimitLayer, Vegas};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = LimitLayer::new(Vegas::default());
//! let service = layer.layer(tower::service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, Infallible>(http::Response::new(String::from("hello")))
//! }));
//! let response = service.oneshot(http::Request::new(())).await.unwrap();
//! // The permit lives in the body until it ends.
//! assert_eq!(layer.limiter().stats().in_flight, 1);
//! drop(response);
//! assert_eq!(layer.limiter().stats().in_flight, 0);
//! # }
//! ```
#![warn(missing_docs)]

pub mod aimd;
mod algorithm;
mod body;
mod budget;
pub mod envoy;
mod fixed;
mod future;
pub mod gradient2;
mod layer;
mod limiter;
mod messages;
pub mod pace;
mod service;
mod spec;
#[cfg(test)]
mod test_support;
mod track;
pub mod vegas;
pub mod windowed;
pub mod windowed_min;

pub use aimd::{Aimd, AimdParams};
pub use algorithm::{LimitAlgorithm, Sample, Signal};
pub use body::LimitBody;
pub use budget::{BudgetFuture, PaceBudgetLayer, PaceBudgetService};
pub use envoy::{EnvoyGradient, EnvoyGradientParams};
pub use fixed::Fixed;
pub use future::ResponseFuture;
pub use gradient2::{Gradient2, Gradient2Params};
pub use layer::LimitLayer;
pub use limiter::{Limiter, LimiterStats, Permit};
pub use pace::{Pace, PaceBudget, PaceCheck, PaceParams};
pub use service::Limit;
pub use spec::{ALGORITHMS, algorithm_from_spec};
pub use track::{HttpPermit, PacedHttpPermit, TrackPermit};
pub use vegas::{Vegas, VegasParams};
pub use windowed::{Windowed, WindowedParams};
pub use windowed_min::WindowedMin;
