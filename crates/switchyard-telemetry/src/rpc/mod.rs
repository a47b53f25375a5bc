//! The RPC layer: a span and RED metrics for every gRPC call, on a server or a client.
//!
//! [`RpcLayer`] wraps any tower service of `http::Request`s and `http::Response`s (a tonic server's
//! routes, a tonic `Channel`, a gateway's proxy). For each call it can:
//!
//! - **trace**: open a span named `package.Service/Method` after the OpenTelemetry RPC semantic
//!   conventions (`rpc.system` = `grpc`, `rpc.service`, `rpc.method`, `server.address`,
//!   `server.port`, then `rpc.grpc.status_code`, and Switchyard's `switchyard.pool` and
//!   `switchyard.endpoint` when a balancer picked one). A server continues the trace the
//!   request's `traceparent` / `tracestate` metadata carries (W3C trace context); both sides
//!   write the new span's context into the request's metadata, so that a gateway forwards its
//!   own span as the parent and a client's server sees the client's span. The spans are
//!   `tracing` spans; `tracing-opentelemetry` turns them into OpenTelemetry spans (see
//!   [`init`](crate::init)).
//! - **measure**: `rpc_server_duration_seconds` (or `rpc_client_...`) per service, method and
//!   status code, whose `_count` is the number of calls; the calls in flight; the bytes of each
//!   request and of each response (`rpc_server_request_size_bytes`,
//!   `rpc_server_response_size_bytes`); in a [`MetricsRegistry`](crate::MetricsRegistry).
//!
//! The inner service gets the request with its body wrapped in an [`RpcRequestBody`], which
//! counts the bytes in place as they pass (no allocation, no copy) and records them when the body
//! ends. Under a tonic server (`Server::builder().layer(..)`) and a gateway that is seamless (tonic's
//! routes take any body); a tonic `Channel` takes only tonic's own body type, so a client uses
//! [`RpcLayer::for_channel`], which boxes the counted body back into it (one more boxed body per
//! call, tonic's own type erasure).
//!
//! A call ends when its response body ends, so a stream is measured to its trailers; the status
//! is the trailers' `grpc-status` (or the headers', for a trailers-only answer), `CANCELLED` if the
//! response is dropped first, and the status of the error ([`switchyard_core::status_of`]) if the
//! service fails.

mod body;
mod frame;
mod future;
mod layer;
mod request;
mod service;
mod span;
mod stats;

pub use body::RpcBody;
pub use future::ResponseFuture;
pub use layer::{ChannelRpcLayer, IntoTonicBody, RpcLayer};
pub use request::RpcRequestBody;
pub use service::Rpc;
pub use span::record_pool;

/// Which side of an RPC a layer sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Serving RPCs: spans of kind server, `rpc_server_*` metrics.
    Server,
    /// Sending RPCs: spans of kind client, `rpc_client_*` metrics.
    Client,
}
