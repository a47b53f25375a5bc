//! Admission control: when demand exceeds capacity, serve what fits, within deadlines, most
//! important first, and refuse the rest at once with a hint of when to come back.
//!
//! [`ShedLayer`] puts a bounded queue in front of a service whose `poll_ready` says when it has
//! room (a concurrency limit from `switchyard-limit`, or tower's `ConcurrencyLimit`). A request
//! waits in line by its [`Priority`](switchyard_core::Priority) class (critical, standard,
//! sheddable; from the `Priority` key or the `x-priority` header) and is refused:
//!
//! - when its [`Deadline`](switchyard_core::Deadline) (the key, or `grpc-timeout`) has passed:
//!   `DEADLINE_EXCEEDED`, and it never reaches the service;
//! - when its expected wait (the waiters before it × the average interval between dispatches)
//!   exceeds its remaining deadline;
//! - CoDel-style, when waits have stayed above `target` for a whole `interval` (a spike does not
//!   count) and its expected wait exceeds `target`, or it has waited past `target`: the lowest
//!   class first, critical requests never for delay (only for their deadline or a queue full of
//!   critical requests). The wait CoDel watches is the standing queue's: the longer of the
//!   dispatched request's wait and the oldest waiter's, so that critical requests served ahead
//!   of the line do not hide the waits behind them;
//! - when the queue is full of requests of its class or above; a lower class's newest waiter
//!   gives up its place otherwise.
//!
//! Refusals are [`Error`](switchyard_core::Error)s of kind `Shed`, which a client receives as
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` (through `StatusLayer` on a tonic server,
//! or the gateway), and which it reads back as `Outcome::Overloaded` with the pushback. Every
//! refusal is counted by reason and class ([`ShedStats`]).
//!
//! [`ServerShedLayer`] is the variant for model servers, whose engine queues already: it keeps
//! no queue of its own and decides each arrival from the engine's queue signals (length and
//! head-of-queue wait), by the same rules ([`server`]).
//!
//! CoDel: Nichols and Jacobson, "Controlling Queue Delay", ACM Queue 2012; its use for RPC
//! queues: Maurer, "Fail at Scale", ACM Queue 2015. Priority classes: the Kubernetes Gateway API
//! inference extension.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use switchyard_shed::{ShedConfig, ShedLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shed = ShedLayer::new(ShedConfig { max_queue: 64, ..ShedConfig::default() });
//! let service = shed.layer(tower::limit::ConcurrencyLimit::new(
//!     tower::service_fn(|_req: http::Request<()>| async { Ok::<_, Infallible>("served") }),
//!     8,
//! ));
//! // A request whose deadline has passed never reaches the service.
//! let mut late = http::Request::new(());
//! late.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("0m"));
//! assert!(service.clone().oneshot(late).await.is_err());
//! assert_eq!(service.oneshot(http::Request::new(())).await.unwrap(), "served");
//! assert_eq!(shed.stats().refused_total(), 1);
//! # }
//! ```
#![warn(missing_docs)]

mod config;
mod layer;
mod queue;
pub mod server;
mod service;
mod stats;

pub use config::ShedConfig;
pub use layer::ShedLayer;
pub use server::{QueueSignal, ServerShed, ServerShedLayer};
pub use service::Shed;
pub use stats::{CLASSES, Reason, ShedStats};
