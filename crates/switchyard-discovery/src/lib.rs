//! Endpoint discovery for the Switchyard balancer: sources that stream
//! [`tower::discover::Change`]s of [`Endpoint`]s as replicas come and go.
//!
//! A [`Source`] is a `Stream` of [`EndpointChange`]s with one set of semantics whatever its
//! backend: a snapshot first, then differences; no duplicate inserts; a removal for what
//! vanished; an unchanged endpoint not announced again; a failing backend reported as an `Err`
//! item while the last good set stays (see [`Source`]). Every source keeps a [`Membership`] to
//! guarantee it.
//!
//! - [`Source::fixed`]: a static list.
//! - [`channel`]: endpoints inserted and removed by code (the autoscaler, tests, a user's own
//!   discovery), through a bounded channel.
//! - [`Source::file`]: a TOML or JSON file, read again when it changes ([`file`](mod@file)).
//! - [`Source::dns`]: A/AAAA or SRV records, resolved again on their TTL ([`dns`]).
//! - [`Source::with_health`]: any source, with endpoints held back until their gRPC health is
//!   SERVING ([`health`]).
//! - `etcd` (feature `etcd`): endpoints registered under a key prefix, watched from a revision,
//!   and a registration helper with a lease for replicas.
//! - `Source::kubernetes` (feature `kubernetes`): a Service's EndpointSlices, with the ready,
//!   serving and terminating conditions honoured.
//!
//! The balancer takes a stream of `Change<EndpointId, Backend<S>>`: map each inserted endpoint to
//! the service that reaches it (a tonic `Channel` from the [`Connector`], with its connect
//! timeout and HTTP/2 keep-alive; the gateway's own upstream) and hand the stream to
//! `switchyard_balance::Balance::new`, which applies the changes off the request path, updates an
//! endpoint re-inserted with the same address in place, and lets a removed one drain.
//! `examples/custom_discovery.rs` shows a source of one's own feeding the balancer this way.
//!
//! # Example
//!
//! A channel source, as an autoscaler would feed it:
//!
//! ```
//! use futures::StreamExt;
//! use switchyard_core::Endpoint;
//! use switchyard_discovery::{EndpointChange, channel};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (publisher, mut source) = channel(16);
//! publisher.insert(Endpoint::new("a", "http://10.0.0.1:9001")).await.unwrap();
//! publisher.insert(Endpoint::new("a", "http://10.0.0.1:9001")).await.unwrap(); // no change
//! publisher.remove("a").await.unwrap();
//! drop(publisher);
//! let changes: Vec<_> = source.by_ref().map(Result::unwrap).collect().await;
//! assert!(matches!(&changes[..], [EndpointChange::Insert(..), EndpointChange::Remove(..)]));
//! # }
//! ```
#![warn(missing_docs)]

mod channel;
pub mod config;
pub mod connect;
pub mod cut_status;
pub mod dns;
pub mod drain;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
mod fixed;
pub mod health;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
mod membership;
mod source;

pub use channel::{Publisher, SourceGone, channel};
pub use config::{EndpointSpec, SourceConfig};
pub use connect::{Connected, Connector};
pub use cut_status::CutStatus;
pub use drain::ConnectionDrain;
pub use error::DiscoveryError;
pub use health::{HealthConfig, HeldBack};
pub use membership::{EndpointChange, Membership};
pub use source::{SOURCE_LABEL, Source};
pub use switchyard_core::Endpoint;
