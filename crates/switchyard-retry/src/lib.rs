//! Retries for gRPC calls, as a tower layer: only what is safe, on another endpoint, within a
//! retry budget and the call's deadline.
//!
//! A replica that refuses a connection, a stream it never started, or a status that says "try
//! elsewhere" should not fail a call that another replica would serve. [`RetryLayer`] sends such
//! a call again, after gRPC's retry policy (gRFC A6):
//!
//! - **What is retried.** Whatever the method, a request that never reached a replica: the
//!   connection could not be opened or had closed before the stream opened
//!   (`ErrorKind::ConnectFailed`), the replica refused the stream
//!   (`REFUSED_STREAM`), or it closed its connection gracefully (`GOAWAY`) before processing the
//!   stream. For the methods marked idempotent (full paths, or `/pkg.Service/*`), also a
//!   trailers-only response whose status is retryable (`UNAVAILABLE` by default), and a call
//!   that failed with no response at all (its connection failed under it, which the caller
//!   would see as `UNAVAILABLE`: a killed replica's calls in flight). The decision
//!   is made on the response's head: a response with headers and a body is committed (its first
//!   message has come, or may yet), so a stream is never retried after its first message.
//! - **Held responses** (Switchyard's own, off by default): for the idempotent methods listed in
//!   `hold_responses`, the response is read to its trailers (at most `hold_bytes`, 4 MiB) before
//!   the caller gets any of it ([`HeldBody`]), and only then is the call committed: a response
//!   cut mid-way (its stream reset, its connection lost) is retried as a call that had no answer,
//!   and trailers with a retryable status after a message as a trailers-only status. gRFC A6
//!   commits a call at its response's headers, so a replica that fails between its headers and
//!   its trailers fails the call; for a unary method nothing is lost by waiting (its one message
//!   and its trailers come together), for a streaming one every message would wait for the end,
//!   so list unary methods only. A response past the bound is handed on as it came, committed.
//! - **Where.** On another endpoint: each retry carries the endpoints tried so far in its
//!   [`TriedEndpoints`](switchyard_core::TriedEndpoints) extension, and
//!   `switchyard_balance::Balance` picks among the eligible endpoints not in it, when there is
//!   one. The endpoint is read from the typed error, or from the response's `PickedEndpoint`.
//! - **Which attempts are final.** Every attempt of a method not marked idempotent, and the last
//!   attempt of one that is, carries a [`FinalAttempt`](switchyard_core::FinalAttempt): its
//!   failure at a replica reaches the caller. The balancer keeps such attempts off endpoints
//!   under suspicion (their last call failed, or they stalled at ten times their speed) while
//!   another is eligible, so a replica that starts failing or slows down is tried again by the
//!   calls this layer can save.
//! - **How often.** At most `attempts` in all (3 by default, gRPC's cap of 5), and only within a
//!   budget: tower's [`TpsBudget`](tower::retry::budget::TpsBudget), every call depositing and
//!   every retry withdrawing, allows retries of `ratio` of the calls of the last `ttl` (0.1 of
//!   10 s) plus `min_per_second` (10), as linkerd's budget does; so at steady state retries add
//!   at most 10 % to the requests sent upstream, plus the floor's 10 a second, and a failing pool
//!   is not hit with three times its load. With every call failing (a test under the paused
//!   clock, a minute of calls): 600 retries for 6,000 calls at 100 a second with the floor off,
//!   1,200 with it, and 6,600 for 60,000 calls at 1,000 a second. [`RetryLayer::stats`] counts
//!   the retries and the budget's refusals.
//! - **When.** After gRPC's exponential backoff with jitter (a uniform draw below 25 ms, then
//!   50 ms, ... up to 1 s), drawn from a seeded generator; or after the `grpc-retry-pushback-ms`
//!   the server sent, where a negative or malformed value means not to retry. Never past the
//!   call's deadline (its `switchyard_core::Deadline`, else its `grpc-timeout`): a retry that
//!   would start after it is not made, and the last result is returned.
//! - **The body.** The first attempt records the frames it sends, up to `buffer_bytes` (256 KiB;
//!   gRPC's per-RPC buffer limit); a retry sends them again, unchanged, then goes on with the
//!   rest of the client's body ([`RetryBody`]). A call that sends more before its response
//!   begins is committed to its endpoint and not retried.
//!
//! - **Hedging** (optional, `hedge_after`; gRFC A6's hedging policy): a call of an idempotent
//!   method that has no answer after the delay, and whose request has been sent whole (a unary
//!   call's), is sent once more, out of the same budget; the first answer wins (unless it is a
//!   failure a retry would take while the other is still out), and the other attempt is dropped,
//!   which cancels it: its stream is reset, and the balancer counts it as cancelled, not as its
//!   endpoint's failure. The hedge goes to another endpoint, whatever the policy: the first
//!   attempt carries a [`PickRecorder`](switchyard_core::PickRecorder) in which the balancer
//!   notes its pick, and the hedge carries that endpoint in its `TriedEndpoints`. Before, a hedge
//!   left its endpoint to the policy, and at a replica's stop (`switchyard bench faults`, fault
//!   `hang`) a hedge could follow its first attempt onto the stopped replica.
//!
//! The layer sits just above the balancer; below it, requests carry a [`RetryBody`], which the
//! endpoint's service sends like any body; above it, responses carry a [`HeldBody`] (the
//! endpoint's body itself unless the response was held).
//!
//! # Example
//!
//! A tonic client over a balancer of two channels, retrying the inference service's calls:
//!
//! ```no_run
//! use switchyard_balance::{Backend, Balance, Shared};
//! use switchyard_core::Endpoint;
//! use switchyard_retry::{RetryBody, RetryConfig, RetryLayer, MethodPattern};
//! use tower::ServiceBuilder;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut backends = Vec::new();
//! for (id, address) in [("a", "http://127.0.0.1:9001"), ("b", "http://127.0.0.1:9002")] {
//!     let channel = tonic::transport::Endpoint::from_shared(address)?.connect_lazy();
//!     // A tonic channel sends tonic's body: the replayable body goes in one.
//!     let service = ServiceBuilder::new()
//!         .map_request(|req: http::Request<RetryBody<tonic::body::Body>>| req.map(tonic::body::Body::new))
//!         .service(channel);
//!     backends.push(Backend::new(Endpoint::new(id, address), service));
//! }
//! let mut config = RetryConfig::default();
//! config.idempotent = vec![MethodPattern::parse("/inference.GRPCInferenceService/*")?];
//! let retry = RetryLayer::new(config)?;
//! // `Shared`: one balancer that every clone of the client (and every retry) calls in place.
//! let balancer: Balance<_, http::Request<RetryBody<tonic::body::Body>>> = Balance::from_backends(backends);
//! let balancer = Shared::new(balancer);
//! let service = ServiceBuilder::new().layer(retry.clone()).service(balancer);
//! // Any generated client takes it: `GrpcInferenceServiceClient::new(service)`.
//! let _client = tonic::client::Grpc::new(service);
//! println!("retries so far: {}", retry.stats().retries);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod backoff;
mod body;
mod classify;
mod config;
mod hold;
mod layer;
mod service;
mod stats;

pub use body::{RetryBody, Superseded};
pub use config::{BudgetConfig, CodeName, ConfigError, MAX_ATTEMPTS, MethodPattern, RetryConfig};
pub use hold::HeldBody;
pub use layer::RetryLayer;
pub use service::Retry;
pub use stats::RetryStats;
