//! Request keys, extracted once: the layer that reads a request's metadata and, for KServe model
//! methods, its first message, and puts what routing, admission and limits need into the
//! request's extensions.
//!
//! | key | from |
//! | --- | --- |
//! | [`RoutingKey`](switchyard_core::RoutingKey) | the `x-session-id` header ([`KeysConfig::session_header`]) |
//! | [`Priority`](switchyard_core::Priority) | the `x-priority` header (an unknown value is ignored) |
//! | [`Deadline`](switchyard_core::Deadline) | `grpc-timeout`, counted from when the request arrived |
//! | [`ModelName`](switchyard_core::ModelName) | the `x-model-name` header, else field 1 of a KServe model method's first message |
//! | [`RequestSize`](switchyard_core::RequestSize) | `ModelInfer` / `ModelStreamInfer`: the `prompt_tokens` parameter, else the `text_input` length / [`BYTES_PER_TOKEN`](switchyard_core::BYTES_PER_TOKEN) (rounded up); `max_tokens`, else 64 |
//! | [`PrefixBlocks`](switchyard_core::PrefixBlocks) | `ModelInfer` / `ModelStreamInfer`: the `prefix_hashes` parameter, else the chained hashes of the text's 512-token blocks ([`PrefixBlocks::from_text`](switchyard_core::PrefixBlocks::from_text); unless [`prefix_from_text`](KeysConfig::prefix_from_text) is off) |
//!
//! A size or prefix is inserted only when the message gives one (a prompt, or the parameter).
//!
//! The body is read by a resumable scan of the protobuf wire format (the `scan` module): each
//! frame's bytes are examined once, fields it does not need are skipped by length without being
//! held contiguous, and it stops as soon as every key is known. What it read is then replayed
//! ahead of the rest of the body, unchanged ([`Replay`]). It is bounded for hostile clients: at
//! most [`max_peek_bytes`](KeysConfig::max_peek_bytes) (1 MiB; past it, keys found so far are
//! kept and the request goes on), [`max_peek_frames`](KeysConfig::max_peek_frames) (1024;
//! past it, `RESOURCE_EXHAUSTED`), a [`peek_timeout`](KeysConfig::peek_timeout) (5 s, or the
//! request's own deadline if sooner; past it, `DEADLINE_EXCEEDED`), and a per-connection
//! [`connection_budget`](KeysConfig::connection_budget) of bytes held at once (16 MiB; a peek
//! that finds it used up stops there, with the keys found so far, and the request goes on: no
//! peek waits for another's budget, so streams sharing a connection cannot starve each other).
//! Budget permits are released as the held frames are replayed (handed on by the body), or when
//! the body is dropped.
//!
//! Failures are a [`switchyard_core::Error`] in the `BoxError` (kinds `TooLarge` and
//! `DeadlineExceeded`); [`switchyard_core::status_of`] turns them into the gRPC status. A
//! compressed or malformed first message is no error: it gives no keys (or those read before
//! the fault) and goes on, for the server to judge.
//!
//! # Where it goes
//!
//! - **A gateway or any hyper server**: build one [`Keys`] per pool or listener with
//!   [`KeysLayer`], and give each accepted connection its own clone with
//!   [`Keys::for_connection`] (plain clones share one budget). The inner service takes
//!   `http::Request<Replay<B>>`; its errors and the layer's are `BoxError`s, for the layer that
//!   answers them with [`status_of`](switchyard_core::status_of).
//! - **A tonic server**: `Server::builder().layer(KeysLayer::new(config))` (tonic's `Routes`
//!   take any body type). tonic clones one service for every connection, so there the budget is
//!   the server's, shared by all its connections: size `connection_budget` for that.
//! - **A tonic client**: there is no body to peek; [`KeysConfig::extract_request`] fills the
//!   same extensions from the typed request, with the same scanner, before the call goes into
//!   the client's tower stack.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use switchyard_core::{ModelName, RoutingKey};
//! use switchyard_keys::{KeysConfig, KeysLayer, MODEL_INFER, Replay};
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The first message of a ModelInfer call: model_name = "llama", nothing else.
//! let message = [0x0a, 5, b'l', b'l', b'a', b'm', b'a'];
//! let mut wire = vec![0, 0, 0, 0, message.len() as u8];
//! wire.extend_from_slice(&message);
//!
//! let inner = tower::service_fn(|req: http::Request<Replay<Full<Bytes>>>| async move {
//!     let model = req.extensions().get::<ModelName>().cloned();
//!     let session = req.extensions().get::<RoutingKey>().cloned();
//!     let body = req.into_body().collect().await?.to_bytes();
//!     Ok::<_, std::convert::Infallible>((model, session, body))
//! });
//! let mut service = KeysLayer::new(KeysConfig::default()).layer(inner);
//!
//! let request = http::Request::post(MODEL_INFER)
//!     .header("x-session-id", "chat-7")
//!     .body(Full::new(Bytes::from(wire.clone())))
//!     .unwrap();
//! let (model, session, body) = service.ready().await.unwrap().call(request).await.unwrap();
//! assert_eq!(model, Some(ModelName::new("llama")));
//! assert_eq!(session, Some(RoutingKey::new("chat-7")));
//! assert_eq!(body.as_ref(), wire.as_slice(), "the body goes on unchanged");
//! # }
//! ```
#![warn(missing_docs)]

mod config;
mod layer;
mod metadata;
mod peek;
mod pool;
mod prefix;
mod replay;
mod scan;
mod typed;

pub use config::{
    DEFAULT_BLOCK_TOKENS, DEFAULT_CONNECTION_BUDGET, DEFAULT_MAX_PEEK_BYTES, DEFAULT_MAX_PEEK_FRAMES,
    DEFAULT_MAX_TOKENS, DEFAULT_MODEL_HEADER, DEFAULT_PEEK_TIMEOUT, DEFAULT_PRIORITY_HEADER,
    DEFAULT_SESSION_HEADER, KeysConfig,
};
pub use layer::{Keys, KeysLayer, ResponseFuture};
pub use metadata::{KSERVE_SERVICE, MODEL_INFER, MODEL_STREAM_INFER};
pub use pool::PoolKeys;
pub use replay::Replay;
pub use scan::{MAX_EXTRA_BLOCK_SIZES, MAX_TOKENS, PREFIX_HASHES, PROMPT_TOKENS, TEXT_INPUT};
