//! A response cache for gRPC calls, as a tower layer: [`CacheLayer`].
//!
//! Some model-serving calls give the same answer every time: an embedding, a classification, a
//! generation at temperature 0. The cache answers a repeated one from memory and, while the
//! first is still being computed, makes identical requests wait for that one upstream call
//! instead of sending their own (request coalescing, as a CDN's "request collapsing").
//!
//! - **Opt-in per method** ([`CacheRule::method`]), with a request predicate
//!   ([`CacheRule::when`]) given the request head and its whole body; [`first_message`]
//!   gives the protobuf message to decode (e.g. to check `temperature == 0`). A request of any
//!   other method goes through untouched: its body is not read.
//! - **Keyed by method and request bytes**, exactly (no hash collision can serve a wrong
//!   answer). A protobuf encoder may write one request in more than one way (map fields in any
//!   order: prost and Go write a map in its hash order), so a rule can key by a canonical form
//!   instead ([`CacheRule::key_with`]; the gateway's KServe rules sort the parameter maps). The request body is read first, bounded by
//!   [`max_request_bytes`](CacheConfig::max_request_bytes) (64 KiB; a larger one goes upstream
//!   unchanged, uncached) and in time by [`read_timeout`](CacheConfig::read_timeout) (5 s, or
//!   the request's own deadline if sooner; a client that stalls its body past it gets
//!   `DEADLINE_EXCEEDED`, counted in [`CacheStats::timed_out`]), then handed on unchanged in
//!   the same body type ([`ReplayBody`]), as the key layer (`switchyard-keys`) replays what it
//!   peeked.
//! - **Bounded by bytes** ([`max_bytes`](CacheConfig::max_bytes), 64 MiB, counting keys,
//!   bodies and headers), with moka's TinyLFU admission and LRU eviction, and a **TTL**
//!   ([`ttl`](CacheConfig::ttl), 60 s, kept on tokio's clock). An answer larger than
//!   [`max_response_bytes`](CacheConfig::max_response_bytes) (1 MiB) is passed on, not stored.
//! - **Coalescing**: identical requests in flight make one upstream call (moka's `try_get_with`);
//!   all of them get its answer. If the call fails, every one of them gets the error (with the
//!   same gRPC status) and nothing is stored. The call is bounded in time by
//!   [`response_timeout`](CacheConfig::response_timeout) (60 s, or the deadline of the request
//!   that made it if sooner; an answer to store, a told-to-be-stored stream included, must
//!   arrive whole within it): an upstream that stalls its answer is dropped, every waiter gets
//!   `DEADLINE_EXCEEDED`, nothing is stored, and [`CacheStats::response_timed_out`] counts it.
//! - **Never stores an error or a stream unless told to** ([`CacheRule::with_errors`],
//!   [`CacheRule::with_streams`]): an answer whose `grpc-status` is not OK reaches every
//!   coalesced caller and is forgotten; an answer of more than one message is handed to its
//!   caller as it streams (never held to its end) and the other callers make their own calls.
//!   A request of more than one message goes upstream uncached too. A method named in a rule
//!   is read as unary: name a bidirectional stream only with `with_streams`, and only if its
//!   clients end their request stream before reading answers.
//! - **Per-call metadata is not stored**: the replica's ORCA load report
//!   (`endpoint-load-metrics-bin`, in the trailers or a trailers-only response's headers) is
//!   stripped from the stored answer; the caller whose call fetched it gets it unchanged.
//!
//! # Where it goes
//!
//! Everywhere a tower layer goes: a tonic client (over a `Channel`), a tonic server
//! (`Server::builder().layer(CacheLayer::new(..))`), a gateway pool (`{ name = "cache", .. }`
//! in the pool's `layers`). In a pool it sits above the balancer, so a cached answer takes no
//! endpoint's capacity and a coalesced group counts once on the board.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::BodyExt;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use switchyard_cache::{CacheConfig, CacheLayer, CacheRule};
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = calls.clone();
//! // A server answering one message (the request's own) with status OK.
//! let upstream = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
//!     counted.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let body = req.into_body().collect().await?.to_bytes();
//!         let mut trailers = http::HeaderMap::new();
//!         trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
//!         let body = http_body_util::Full::new(body).with_trailers(async { Some(Ok(trailers)) });
//!         Ok::<_, tonic::Status>(http::Response::new(tonic::body::Body::new(body)))
//!     }
//! });
//! let layer = CacheLayer::new(CacheConfig::new([CacheRule::method("/demo.Embed/Embed")]));
//! let mut service = layer.layer(upstream);
//!
//! for _ in 0..3 {
//!     let message = Bytes::from_static(&[0, 0, 0, 0, 2, 0x0a, 0x00]);
//!     let request = http::Request::post("/demo.Embed/Embed").body(tonic::body::Body::new(
//!         http_body_util::Full::new(message.clone()),
//!     )).unwrap();
//!     let response = service.ready().await.unwrap().call(request).await.unwrap();
//!     assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), message);
//! }
//! assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream call for three requests");
//! assert_eq!(layer.stats().hits, 2);
//! # }
//! ```
#![warn(missing_docs)]

mod body;
mod config;
mod error;
mod grpc;
mod layer;
mod service;
mod store;

pub use body::ReplayBody;
pub use config::{
    CacheConfig, CacheRule, DEFAULT_MAX_BYTES, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_READ_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, DEFAULT_TTL, KeyFn, Predicate,
};
pub use error::SharedError;
pub use grpc::first_message;
pub use layer::CacheLayer;
pub use service::Cache;
pub use store::CacheStats;
