//! Plain types shared by every Switchyard crate.
//!
//! Switchyard is tower middleware for gRPC model-serving services: balancing today; hash routing,
//! limiting, shedding, discovery, autoscaling and telemetry are coming as crates of their own. Its
//! crates meet on the small vocabulary defined here, so that a routing key extracted by one layer
//! is read by another, and every endpoint's load has one shape for every reader (the balancer and
//! the gateway's admin API today; the autoscaler and the telemetry when they come).
//!
//! - [`Endpoint`] and [`EndpointId`]: a replica that can serve requests, and its stable name.
//! - [`Load`]: the balancer's snapshot of one endpoint (in-flight requests, peak-EWMA latency and the
//!   last [`ReportedLoad`] its replica sent).
//! - [`ReportedLoad`] and the [`orca`] module: the replica's own report (queue depth, running
//!   requests, KV-cache utilisation), carried in the `endpoint-load-metrics-bin` trailer as an ORCA
//!   `OrcaLoadReport`.
//! - [`RoutingKey`], [`PrefixBlocks`], [`RequestSize`], [`Priority`], [`Deadline`] and
//!   [`ModelName`]: the request keys, per-request facts that travel in `http::Request` extensions
//!   from the layer that extracts them (`switchyard-keys`) to the layers that use them;
//!   [`TriedEndpoints`], the endpoints a retried request went to before, which the balancer avoids;
//!   [`PickRecorder`], where the balancer says which endpoint it picked for an attempt still out
//!   (a hedge avoids it); [`FinalAttempt`], an attempt no retry can save, which the balancer keeps
//!   off endpoints under suspicion.
//! - [`Outcome`]: how a request ended (ok, unavailable, connect failure, overloaded with its
//!   pushback, deadline, cancelled, other), read from `grpc-status` and the trailers.
//! - [`Spec`]: a component (a policy, a layer) by name with parameters, as configs write it.
//! - [`Error`] and [`ErrorKind`]: the typed errors of every layer, and [`status_of`], the one
//!   mapping from an error to the gRPC [`Status`] a client sees; [`StatusLayer`] applies it on a
//!   tonic server.
//!
//! The crate does no I/O.
//!
//! # Example
//!
//! ```
//! use switchyard_core::{Endpoint, PrefixBlocks, ReportedLoad, RoutingKey, orca};
//!
//! let replica = Endpoint::new("replica-0", "http://127.0.0.1:9001").with_weight(2);
//! assert_eq!(replica.id.as_str(), "replica-0");
//!
//! // A layer near the edge puts routing facts into the request's extensions...
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(RoutingKey::new("session-42"));
//! req.extensions_mut().insert(PrefixBlocks::from_text("You are a helpful assistant.", 16));
//! // ...and the balancer's policy reads them later.
//! assert!(req.extensions().get::<RoutingKey>().is_some());
//!
//! // A replica reports its load in a trailer; the balancer decodes it.
//! let report = ReportedLoad { queue_depth: 3, running: 12, kv_cache_utilization: 0.5, ..Default::default() };
//! let value = orca::encode_header_value(&report);
//! assert_eq!(orca::decode_header_value(&value).unwrap(), report);
//! ```
#![warn(missing_docs)]

mod deadline;
mod endpoint;
pub mod error;
mod frames_then;
pub mod kv;
mod load;
pub mod orca;
mod outcome;
mod priority;
mod routing;
mod size;
mod spec;
mod status_layer;
mod tried;

pub use deadline::{Deadline, ModelName, parse_grpc_timeout};
pub use endpoint::{Endpoint, EndpointId};
pub use error::{Code, Error, ErrorKind, Status, status_of};
pub use frames_then::FramesThen;
pub use kv::{KvEvent, KvEventKind};
pub use load::{Load, ReportedLoad};
pub use outcome::{Outcome, RETRY_PUSHBACK_HEADER, retry_pushback};
pub use priority::{ParsePriorityError, Priority};
pub use routing::{BYTES_PER_TOKEN, PrefixBlocks, PrefixHasher, RoutingKey, stable_hash};
pub use size::RequestSize;
pub use spec::{Spec, SpecError};
pub use status_layer::{StatusFuture, StatusLayer, StatusService};
pub use tried::{FinalAttempt, PickRecorder, TriedEndpoints};
