//! One balancer for gRPC model-serving services, with pluggable policies that can be switched at
//! run time, per-endpoint load tracking, and outlier ejection.
//!
//! [`Balance`] is a tower [`Service`](tower::Service) that sends each request to one endpoint.
//! tower's own `p2c::Balance` has one built-in policy and picks before it sees the request;
//! this one shows each request (with its extensions, where routing keys travel) to a [`Policy`]
//! chosen at construction and switchable at any time through a [`PolicyHandle`]:
//! round robin, smooth weighted round robin, least connections, least response time, P2C
//! peak-EWMA, random, and least response time plus the replicas' own ORCA load reports
//! (`load-report`, the default). Consistent hashing and prefix-cache-aware policies are to come from a hash-routing
//! crate (not yet in the workspace), through the same trait and registry.
//!
//! Each endpoint's load lives in one [`EndpointState`]: requests in flight (a stream counts until
//! its trailers), a peak-EWMA latency, the last load report its replica sent in the
//! `endpoint-load-metrics-bin` trailer, and outcome counters. The balancer publishes them on a
//! [`LoadBoard`], which the policies and the gateway's admin API read (and the coming autoscaler
//! and telemetry crates will); nothing else counts load.
//! Endpoints that keep failing are ejected for a while ([`OutlierConfig`]). Each endpoint may
//! have a concurrency limit of its own, learnt from that same state by a `switchyard-limit`
//! algorithm ([`Balance::with_endpoint_limit`]); policies then skip endpoints at their limit.
//!
//! A `Balance` is called through `&mut self`, as tower services are; [`Shared`] makes it a
//! cloneable service that many tasks (or threads) call in place, which is how the gateway and a
//! shared tonic client use it. Any tower layer composes over it (`ServiceBuilder` on a tonic
//! client, a gateway pool's layers).
//!
//! - **Discovery** is a stream of [`Change`](tower::discover::Change)s applied off the request
//!   path: what the stream has ready at construction is applied at once, the rest by a task of
//!   the balancer's own, whether or not requests flow. Re-inserting an id with the same address
//!   updates it in place (its load, latency and ejection kept); a removed endpoint with requests
//!   in flight stays on the board, [draining](EndpointState::is_draining), and gets no new one.
//! - **Policies** are named and parameterised by a [`PolicySpec`] and built by the
//!   [`PolicyRegistry`] ([`policy::registry`]), which other crates add to. A policy sees the
//!   [`Endpoints`]: the eligible ones, every member with its eligibility, and a membership
//!   generation that moves only when members are added or removed; it may answer that none fits.
//! - **Outcomes**: a response ends as a [`switchyard_core::Outcome`] read from its `grpc-status`
//!   and `grpc-retry-pushback-ms`; the board counts them apart, ejection counts endpoint
//!   failures, and an [`Observer`] is told once per request (endpoint, time to first byte,
//!   latency, outcome), with the [`PickedEndpoint`] in the request's and response's extensions.
//!   Only an answer (a first body frame, an `OK`, or a request held to its deadline) is a sample
//!   of an endpoint's speed and capacity: a refusal or an error that comes back at once is not,
//!   or the busiest endpoint, shedding load, would look the fastest. A request its caller gave
//!   up on before a first byte is a censored sample, a lower bound that only raises the
//!   estimates; and while an endpoint's backlog is overdue (no first byte for longer than its
//!   estimate gives it), least response time counts the stall
//!   ([`EndpointState::stalled_for`]), so a replica that stops or slows down loses its traffic
//!   before any of its requests ends.
//! - **Retried requests**: a retry (`switchyard-retry`) goes to an endpoint its
//!   [`TriedEndpoints`](switchyard_core::TriedEndpoints) does not name, and an attempt no retry
//!   can save, a [`FinalAttempt`](switchyard_core::FinalAttempt), to one not under suspicion
//!   ([`EndpointState::is_suspect`]: its last call failed, or it stalled), when there is one:
//!   a replica that starts failing or slows down is tried again by the calls a retry can save.
//! - **Errors** are [`switchyard_core::Error`]s naming the balancer ([`Balance::with_name`]) and
//!   the endpoint: no endpoint, none fits, unreachable, failed during the call; their gRPC status
//!   is [`switchyard_core::status_of`]'s.
//!
//! # Why load-report is the default
//!
//! For LLM serving the latency users feel first is the time to first token, and a replica's TTFT
//! is set by the prefill work queued ahead of a request and by the replica's speed. The
//! [`LeastResponseTime`](policy::LeastResponseTime) policy estimates exactly that for every
//! endpoint, from nothing but the endpoint's own answers (so it balances any gRPC server, with or
//! without load reports): the work still waiting for a first byte there, times the time per unit
//! of work the endpoint has shown. In the policy lab's `hetero` scenario (eight replicas, one at
//! quarter speed and one at half, the Azure conversation trace at 70 % of capacity) its p99 TTFT
//! is within 1.3× of an ideal central dispatcher that knows every replica's true state, where
//! in-flight counts (least connections) and tower's P2C peak-EWMA, whose latency sample mostly
//! reflects the last prompt's length, fall further behind; the committed report
//! (`reports/lab/hetero.json`) has the figures, and the root package's `tests/lab.rs` fails if a
//! change moves them.
//!
//! But a balancer rarely is the only one: every client process and every gateway replica runs
//! its own, and each sees only what it sent. The default,
//! [`LoadReport`](policy::LoadReport), is least response time plus the load the replicas'
//! own ORCA reports show from the other balancers (in the trailers of each response and the
//! headers of each stream, or out of band: the root package's `switchyard::oob_reports` subscribes a balancer to every endpoint's
//! ORCA stream, and the gateway's pools do with `load_reports`). With replicas that send no
//! reports it picks exactly as least response time, and with one balancer too (`hetero`,
//! `hetero-mooncake` and the lab's `herd` at one balancer give the same figures for both),
//! except that it also counts the calls its clients gave up on that still run on a replica (lab
//! `overload` without a limit, `burst`'s overloaded baselines). With eight independent balancers (lab `herd`,
//! `reports/lab/herd.md`) and reports every 10 ms its p99 TTFT is 1.16-1.28 × one balancer's,
//! where least response time is at 1.7-2.0 ×; with the reports of its own responses alone it
//! is at 1.66-1.79 ×, least response time at 1.85-2.0 × (seed 1). A
//! pick that reads reports costs about twice least response time's (under 1 µs over 8
//! endpoints; criterion, `reports/bench/balance-criterion.md`): with one balancer and no
//! foreign load, `least-response-time` picks alike for less. Both scan every endpoint of pools
//! up to 32 (O(n) per request) and compare 16 at random in larger ones;
//! [`P2cPeakEwma`](policy::P2cPeakEwma) stays the cheaper choice for very large pools.
//!
//! # Example
//!
//! Three in-process endpoints (in real use: tonic `Channel`s, one per replica), balanced by
//! least connections, switched to round robin while running:
//!
//! ```
//! use std::convert::Infallible;
//! use switchyard_balance::{Backend, Balance, CompleteOnResponse, PolicyHandle, PolicyKind, discover};
//! use switchyard_core::Endpoint;
//! use tower::{Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backends = (0..3).map(|i| {
//!     let service = tower::service_fn(move |_req: http::Request<()>| async move { Ok::<_, Infallible>(i) });
//!     Backend::new(Endpoint::new(format!("replica-{i}"), format!("http://10.0.0.{i}:9001")), service)
//! });
//! let policy = PolicyHandle::of(PolicyKind::LeastConnections, 0);
//! let mut balancer = Balance::new(discover::from_backends(backends))
//!     .with_policy(policy.clone())
//!     .with_completion(CompleteOnResponse);
//! let board = balancer.board();
//!
//! let first = balancer.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! policy.set(PolicyKind::RoundRobin.build(0));
//! let second = balancer.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! assert!(first < 3 && second < 3);
//! assert_eq!(board.snapshot().iter().map(|e| e.load.completed).sum::<u64>(), 2);
//! # }
//! ```
#![warn(missing_docs)]

mod board;
pub mod capacity;
mod completion;
mod directory;
pub mod discover;
mod endpoint;
mod endpoint_limit;
mod error;
mod future;
mod method_speed;
mod observer;
mod outlier;
pub mod policy;
mod rng;
mod service;
mod shared;
/// The windowed minimum (of RTTs, of costs), kept in `switchyard-limit` where AIMD learns its base
/// RTT with it; re-exported here for the balancer's capacity estimate.
pub use switchyard_limit::windowed_min;

pub use board::{EndpointLoad, LoadBoard};
pub use completion::{CompleteOnResponse, Completion, HttpCompletion, TrackCompletion, TrackedBody};
pub use endpoint::{EndpointState, OwnLoad, ReportSnapshot, TrackingConfig};
pub use endpoint_limit::EndpointLimit;
pub use error::PolledAfterCompletion;
pub use future::ResponseFuture;
pub use observer::{Observation, Observer, PickedEndpoint};
pub use outlier::OutlierConfig;
pub use policy::{
    Endpoints, Policy, PolicyError, PolicyHandle, PolicyKind, PolicyRegistry, PolicySpec, RequestInfo,
    UnknownPolicy,
};
pub use rng::fresh_seed;
pub use service::{Backend, Balance, DEFAULT_NO_ENDPOINT_WAIT, RequestExtensions};
pub use shared::Shared;
