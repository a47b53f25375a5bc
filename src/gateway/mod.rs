//! `switchyard gateway`: a transparent gRPC load balancer in front of model servers, for teams
//! that do not write Rust.
//!
//! The gateway serves HTTP/2 without TLS (h2c, prior knowledge, as gRPC clients speak to
//! `http://` targets), or over TLS with `[tls]` (see [TLS](#tls)), and forwards every request, headers and body streaming through, to one
//! endpoint of a **pool**, picked by that pool's [`Balance`](switchyard_balance::Balance) with
//! its policy (least response time unless told otherwise). It decodes nothing, so any gRPC
//! service and every call shape pass: unary, client-, server- and bidirectional streaming; the
//! response comes back with the endpoint's headers and trailers, and its status (`NOT_FOUND` from
//! the model server stays `NOT_FOUND`, with its message). On the way, the balancer counts each
//! request against its endpoint until its last frame and reads the replica's ORCA load report
//! (`endpoint-load-metrics-bin`) from the trailers, and from a stream's headers where the
//! replica sends one as it admits the request; both still reach the client.
//!
//! The proxy runs thread per core (`--threads`, one per CPU by default): each serving thread has
//! its own single-threaded runtime, its share of the client connections and its own connection to
//! each endpoint, so a request is handled on one thread from start to end; the pools' balancers
//! and load boards are shared by all threads.
//!
//! Headers pass as the client sent them (the `user-agent` too); only `:authority` names the
//! endpoint, as the request's URI does. Deadlines travel with the call: the `grpc-timeout` header
//! reaches the endpoint unchanged and the gateway sets no timeout of its own, so a call past its
//! deadline ends at the client (`DEADLINE_EXCEEDED`, or `CANCELLED` from tonic's own timer) and
//! the endpoint. The gateway counts it as cancelled when the client gives up first (its timer
//! starts first), and as a failed call when the endpoint's `DEADLINE_EXCEEDED` comes back first;
//! neither is the endpoint's failure (no ejection), but a call given up before its first byte
//! tells the balancer that the endpoint takes at least that long (a censored latency sample), and
//! an endpoint whose backlog is overdue gets no new calls under least response time.
//!
//! The gateway answers by itself only when it cannot forward, with trailers-only gRPC statuses
//! mapped from the typed error of the layer that failed ([`switchyard_core::status_of`]):
//! `UNAVAILABLE` when the pool has no endpoint, none fits, or the endpoint's connection fails
//! (nothing is retried unless the pool has `retry`, below; a connection that fails after the
//! response began ends it with `UNAVAILABLE` trailers), `RESOURCE_EXHAUSTED` (with
//! `grpc-retry-pushback-ms` when known) when a layer sheds the request, `DEADLINE_EXCEEDED` when
//! a pool's `timeout` passes, `UNIMPLEMENTED` when no route takes the request (the message names
//! the path and the model). A message names the pool and the endpoint's id, never the upstream's
//! cause (an OS error, an internal address), which goes to the log at debug level.
//!
//! # Quick start
//!
//! ```sh
//! switchyard gateway --backend 127.0.0.1:9001 --backend 127.0.0.1:9002 --policy round-robin
//! ```
//!
//! One pool named `default`, whose endpoint ids are the backends' authorities (`127.0.0.1:9001`);
//! gRPC on `--listen` (127.0.0.1:8080), the admin API on `--admin` (127.0.0.1:9900). `--policy`
//! takes a name, or a JSON table with parameters:
//! `--policy '{"name": "bounded-load-hash", "load_factor": 1.5}'` (requests of one
//! `x-session-id` to one replica, none past 1.5 × its share in flight).
//!
//! # Pools and routes
//!
//! `--config gateway.toml` (see `examples/gateway.toml`) declares several pools, one per model or
//! service, and routes that pick among them:
//!
//! ```toml
//! listen = "127.0.0.1:8080"       # flags of the same names override these five
//! admin = "127.0.0.1:9900"
//! admin_token_file = "admin.token" # optional: the admin API's bearer token (see Admin API)
//! drain_timeout = "30s"
//! threads = 2                     # default: one per CPU
//! model_header = "x-model-name"   # the default
//! default_pool = "llama"          # requests no route takes; with one pool, that pool
//!
//! [[pool]]
//! name = "llama"
//! policy = "load-report"          # the default
//! endpoints = [
//!   { address = "http://127.0.0.1:9001" },                      # id: 127.0.0.1:9001, weight: 1
//!   { address = "127.0.0.1:9002", id = "gpu-b", weight = 2 },
//! ]
//!
//! [[pool]]
//! name = "mistral"
//! endpoints = [{ address = "http://127.0.0.1:9101" }]
//! layers = [{ name = "shed" }]
//! hold_when_empty = true          # scaled to zero: requests wait in the shed queue (within
//!                                 # their deadlines) for a first endpoint, not UNAVAILABLE after 3 s
//!
//! [[route]]                       # first match wins
//! path_prefix = "/inference.GRPCInferenceService/"
//! model = "mistral"
//! pool = "mistral"
//! ```
//!
//! A pool's endpoints may also come from discovery sources, besides or instead of `endpoints`
//! (crate `switchyard-discovery`): each `[[pool.discovery]]` is a source whose endpoints join and
//! leave the pool while it runs (an added endpoint takes traffic as soon as its change is applied;
//! a removed one takes no new request and drains its in-flight ones):
//!
//! ```toml
//! [[pool.discovery]]
//! kind = "file"                   # TOML or JSON list, reloaded on change; relative to this file
//! path = "endpoints.toml"
//! ```
//!
//! Kinds: `static` (`endpoints = [...]`), `file` (`path`), `dns`, `etcd` (`endpoints`, `prefix`;
//! a build with `--features etcd`) and `kubernetes` (a build with `--features kubernetes`);
//! [`switchyard_discovery::config`] lists their fields. Endpoint ids must be unique across a
//! pool's sources.
//!
//! ```toml
//! [pool.health]                   # optional: watch grpc.health.v1.Health of every endpoint
//! service = ""                    # the default: the whole server
//! check_interval = "5s"           # Check's period for servers without Watch; retry after failures
//! timeout = "3s"
//! ```
//!
//! With `[pool.health]` an endpoint takes traffic only while its health is SERVING: it is held
//! back until then, and leaves the balancer on the update that says NOT_SERVING
//! ([`switchyard_discovery::health`]).
//!
//! A route matches when the request's path starts with its `path_prefix` and its model is the
//! route's `model` (each condition only if set). The model is one of the request keys, read once
//! per request by the key layer (`switchyard-keys`) before routing: the value of the model header
//! if the request has one (any method, no body read), otherwise, for the KServe model methods
//! (`ModelInfer`, `ModelStreamInfer`, `ModelReady`, `ModelMetadata`, ...), the `model_name` of the
//! first request message. The same look at `ModelInfer` / `ModelStreamInfer` gives the request's
//! size (its `prompt_tokens`, or its text's length), which least response time weighs, its
//! session key (`x-session-id`), priority (`x-priority`) and deadline (`grpc-timeout`). The peek
//! is a single pass over the first message, bounded (1 MiB of it at most, 1024 frames, 5 s, and
//! 16 MiB held at once per client connection; `[keys]` sets them) and the bytes read are then sent
//! on unchanged. A request whose model cannot be read (compressed, or not within the bound) has
//! no model: routes without `model` and the default pool still take it. A client that splits its
//! first message into too many frames or holds its connection's budget too long is refused
//! (`RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`), without slowing other connections.
//!
//! ```toml
//! [keys]
//! session_header = "x-session-id"   # the defaults
//! max_peek_bytes = 1048576
//! peek_timeout = "5s"
//! connection_budget = 16777216
//! ```
//!
//! What a client may ask of the listener is bounded by `[limits]` (the defaults shown; see
//! [`limits`] for where each acts and how h2's own bounds meet HTTP/2 floods):
//!
//! ```toml
//! [limits]
//! max_message_bytes = 67108864        # RESOURCE_EXHAUSTED once a longer message's prefix is read
//! max_header_list_bytes = 16384       # 431 and the stream reset
//! max_streams_per_connection = 1024   # RST_STREAM REFUSED_STREAM past it
//! max_connections = 10000             # closed at once past it
//! header_read_timeout = "30s"         # closed without the first request's headers by then
//! idle_timeout = "5m"                 # GOAWAY after that long without a stream
//! ```
//!
//! A client that resets most of its streams before their answers (rapid reset) gets GOAWAY
//! `ENHANCE_YOUR_CALM`; one that sends more than 1,000 PING or SETTINGS frames in a second is
//! disconnected. Every refusal is counted on the admin API's `/metrics` as
//! `switchyard_gateway_refused_total{reason}` (`connection_limit`, `header_read_timeout`,
//! `idle_timeout`, `message_too_large`, `h2_calm`, `rapid_reset`, `control_flood`;
//! `header_list_too_large`, `stream_limit` and `protocol_error` for h2's own 431,
//! `REFUSED_STREAM` and resets or GOAWAY for a breach of HTTP/2).
//!
//! A pool may read some keys its own way (`[pool.keys]`, [`switchyard_keys::PoolKeys`]): its
//! session and priority headers, and its prefix block size (the prompt's text is then hashed at
//! that size too, in the same pass; a `prefix_hashes` parameter is taken as it is). They replace
//! the `[keys]` ones once a request is routed to the pool. At most three block sizes besides
//! `[keys]`'s, 1 to 65,536 tokens each.
//!
//! ```toml
//! [pool.keys]
//! session_header = "x-user"
//! priority_header = "x-tier"
//! block_tokens = 256
//! ```
//!
//! Each pool is a tower stack: the layers its `layers` list names (outermost first; see
//! [`layers`]: today `timeout`), then its balancer. Its `policy` is a name or a table with
//! parameters (`policy = { name = "...", ... }`), built by the policy registry, to which crates
//! and programs add their own.
//!
//! A pool may retry (`retry`, [`switchyard_retry`], after gRPC's retry policy, gRFC A6), in its
//! stack just above the balancer, below its `layers`:
//!
//! ```toml
//! [pool.retry]
//! attempts = 3                    # the first included; 2 to 5
//! idempotent = ["/inference.GRPCInferenceService/*"]   # full paths, or a service's `/*`
//! codes = ["UNAVAILABLE"]         # the defaults from here down
//! initial_backoff = "25ms"
//! max_backoff = "1s"
//! backoff_multiplier = 2
//! buffer_bytes = 262144           # request bytes kept for a replay
//! budget = { ratio = 0.1, min_per_second = 10, ttl = "10s" }
//! hedge_after = "100ms"           # off by default
//! hold_responses = ["/inference.GRPCInferenceService/ModelMetadata"]  # none by default
//! hold_bytes = 4194304             # response bytes held at most
//! ```
//!
//! A call that never reached a replica (connection refused or found closed, `REFUSED_STREAM`, a graceful GOAWAY
//! before the replica took the stream) is sent again on an endpoint it has not tried, whatever
//! its method; a trailers-only response with one of `codes` only for the `idempotent` methods; a
//! response that has begun (a stream's first message) never. Retries come out of the budget
//! (`ratio` of the calls of the last `ttl`, plus `min_per_second`: at steady state at most 10 %
//! more requests upstream, plus the floor's 10 a second), wait the backoff (a uniform draw below 25 ms, 50 ms, ... 1 s) or the
//! replica's `grpc-retry-pushback-ms` (a negative or malformed one means no retry), and are not
//! made past the call's deadline (`grpc-timeout`). The request body is replayed from a record of
//! its first `buffer_bytes`; a call that sends more before its response begins is not retried.
//! With `hedge_after`, a unary call of an idempotent method still unanswered after the delay is
//! sent once more (out of the same budget); the first answer wins and the other is cancelled.
//! The responses of the idempotent methods in `hold_responses` (unary ones: a stream's messages
//! would wait for its end) are held until their trailers, at most `hold_bytes`, before the client
//! sees them: a response cut mid-way (a reset stream, a connection lost) or ending with one of
//! `codes` after a message is then retried like one that never came, where gRFC A6 commits a
//! call at its response's headers.
//! Each attempt is picked, counted and limited by the balancer as a request of its own.
//! `/metrics` counts them (`switchyard_pool_retry_calls_total`, `switchyard_pool_retries_total`,
//! `switchyard_pool_retry_budget_exhausted_total`, `switchyard_pool_hedges_total`,
//! `switchyard_pool_retry_held_cut_total`), as the admin
//! API's `layers` does.
//!
//! The config is validated before anything starts; an error names the field and its line, and the
//! command exits with status 1:
//!
//! ```text
//! error: invalid gateway config gateway.toml line 12 `pool[1].policy`: unknown policy "fastest"; expected one of: ...
//! ```
//!
//! # TLS
//!
//! `[tls]` serves the gRPC listener over TLS (rustls, ring provider, ALPN `h2`):
//!
//! ```toml
//! [tls]
//! cert = "server.crt"             # PEM chain, the gateway's certificate first
//! key = "server.key"              # PEM key: PKCS#8, PKCS#1 or SEC1
//! client_ca = "ca.pem"            # optional: clients must present a certificate of these CAs
//! reload_interval = "10s"         # the default: how often cert, key and client_ca are read again
//! ```
//!
//! The files are read again every `reload_interval`; when one changed and they load, new
//! handshakes present the new certificate and check clients against the new CA (open connections
//! keep what they were handshaken with) and nothing restarts; files that do not load are logged
//! and the ones in force stay. With `client_ca`, a client without a certificate of those CAs
//! fails the handshake. `switchyard gateway --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]`
//! sets the same from the command line (over the config's `[tls]`). The handshake runs in the connection's own task on its serving thread,
//! at most 10 s ([`HANDSHAKE_TIMEOUT`]); a plain listener serves the bare TCP stream as before.
//!
//! Towards the replicas, a pool's `tls` reaches every endpoint of the pool over TLS, whatever
//! scheme its address has (so discovery sources that write `http://` addresses feed it
//! unchanged):
//!
//! ```toml
//! [[pool]]
//! name = "llama"
//! endpoints = [{ address = "https://gpu-a.internal:9001" }]
//! tls = { ca = "ca.pem", server_name = "llama.internal", cert = "gw.crt", key = "gw.key" }
//! ```
//!
//! `ca`: the CAs the replicas' certificates must chain to (the system's roots without it);
//! `server_name`: the name they must carry, sent as SNI (the address's host without it; an IP
//! address matches an IP SAN); `cert` and `key`: the gateway's client certificate, for replicas
//! that require one (mutual TLS). An `https://` endpoint in a pool without `tls` is verified
//! against the system's roots (port 443 by default). The pool's health checks, out-of-band load
//! reports and KV-event streams (`prefix-aware-precise`) connect with the same settings, as read
//! when the pool starts. Relative paths in the config are relative to its file; a file that
//! cannot be used stops the gateway at start with an error naming the field and the file. A
//! connection to a replica opened 10 s or more after the files were last read reads them again:
//! a renewed client certificate or a rotated CA reaches new connections without a restart, and
//! files that do not load are logged while the ones in force stay. `switchyard
//! worker --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]` serves TLS, so the whole path
//! can be encrypted.
//!
//! # Admin API
//!
//! HTTP/1.1 JSON on `--admin`, loopback (127.0.0.1:9900) by default. With a bearer token
//! (`--admin-token-file FILE`, `admin_token_file` in the config, or the `SWITCHYARD_ADMIN_TOKEN`
//! environment variable: at least 16 visible ASCII characters; never a flag's value, which `ps`
//! would show), every change (`PUT /policy`, any method but `GET` and `HEAD`) needs
//! `Authorization: Bearer TOKEN`, wherever the API listens; off loopback every call needs it,
//! and the gateway refuses to start there without a token. A call without the token, or with
//! another, gets 401 and `{"error": ...}` saying what was missing. Tokens are compared in
//! constant time.
//!
//! - `GET /endpoints` →
//!   `{"state","pools":[{"name","policy","endpoints":[{"endpoint","load","ejected","draining","source","state"}]}]}`:
//!   the gateway's `state` (`serving`, or `draining` during its drain on shutdown), each endpoint's
//!   load as its pool's balancer tracks it (in flight, latency EWMA, completed,
//!   failed, overloaded, cancelled, the last ORCA report), whether it is ejected, and whether it
//!   is draining (removed by discovery, its last requests still running); its `source` (the
//!   discovery source that announced it, `config` for the fixed list) and `state` (`healthy`,
//!   `ejected`, `draining`);
//! - `PUT /policy` with `{"policy":"round-robin","pool":"default"}` (`pool` optional with one
//!   pool) → `{"pool","policy","previous"}`: the switch is atomic and requests in flight stay
//!   where they are; 400 for an unknown policy (the message lists the known ones), 404 for an
//!   unknown pool;
//! - `GET /metrics` → Prometheus text: each pool's endpoints read from its load board at the
//!   scrape (picks, outcomes, in flight, latency EWMA, reported queue and KV-cache use, ejections)
//!   and its policy; with `--rpc-metrics` also every call's RPC metrics
//!   (`rpc_server_duration_seconds`, ...) and each endpoint's latency histograms from the
//!   balancer's observer (see `switchyard_telemetry`).
//!
//! # Telemetry
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or the standard variables around it) set, each call gets a
//! span after the OpenTelemetry RPC conventions, continuing the trace the client's `traceparent`
//! carries and forwarding its own to the endpoint, exported over OTLP/gRPC with the metrics;
//! `service.name` defaults to `switchyard-gateway`. With nothing set, nothing is exported.
//!
//! # Shutdown
//!
//! On SIGTERM or Ctrl-C the gateway stops accepting connections, refuses new calls on the open
//! ones with `UNAVAILABLE` (retryable: they never reached a replica), lets in-flight requests and
//! streams finish (at most `--drain-timeout`), tells its clients (HTTP/2 GOAWAY), and exits 0.
//! The admin API answers through the drain and shows `"state": "draining"`.
//!
//! # In-process use
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use switchyard::gateway::{Gateway, GatewayConfig};
//! use switchyard::balance::PolicyKind;
//!
//! let config = GatewayConfig::single_pool(&["127.0.0.1:9001".into()], PolicyKind::RoundRobin)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let gateway = Gateway::start(config, listener, None)?;
//! println!("clients connect to http://{}", gateway.local_addr());
//! let board = gateway.pools()[0].board().clone(); // per-endpoint load
//! gateway.shutdown().await?;
//! # Ok(()) }
//! ```

mod admin;
mod admin_auth;
mod body;
mod cache;
mod config;
mod downstream;
mod drain;
mod flood;
mod frame_heads;
mod h2stream;
pub mod layers;
pub mod limits;
mod liveness;
mod pool;
mod process_metrics;
mod proxy;
mod route;
mod sent_frames;
mod server;
mod tls;
mod upstream;
mod upstream_tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use admin_auth::{ADMIN_TOKEN_ENV, AdminToken};
pub use body::{ProxyBody, RequestBody};
pub use config::{
    ConfigError, DEFAULT_DRAIN_TIMEOUT, DEFAULT_MODEL_HEADER, DEFAULT_PROBE_TIMEOUT, GatewayConfig,
    MAX_THREADS, PoolConfig, RouteConfig,
};
pub use h2stream::RecvBody;
pub use limits::Limits;
pub use pool::Pool;
pub use process_metrics::{GATEWAY_TASKS, PROCESS_OPEN_FDS, PROCESS_RESIDENT_MEMORY};
pub use server::{Gateway, GatewayError, GatewayTelemetry};
use switchyard_balance::PolicyKind;
use switchyard_core::Spec;
pub use tls::{DEFAULT_RELOAD_INTERVAL, HANDSHAKE_TIMEOUT, TlsConfig, TlsError};
use tokio::net::TcpListener;
pub use upstream_tls::UpstreamTlsConfig;

/// Where the gateway serves gRPC unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// Where the admin API listens unless told otherwise.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9900);

/// `what`, followed by the names of the registered policies: the help of a `--policy` flag, read
/// from the registry so that it lists every policy there is.
pub fn policy_help(what: &str) -> String {
    format!("{what}: {}", switchyard_balance::policy::registry().names().join(", "))
}

/// How a gateway is set up: flags of `switchyard gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Address to serve gRPC on (h2c, or TLS with the config's `[tls]`), `IP:PORT` or
    /// `HOST:PORT` [default: the config's `listen`, else 127.0.0.1:8080].
    #[arg(long, value_parser = crate::listen::parse_listen_address)]
    pub listen: Option<SocketAddr>,
    /// An endpoint of the `default` pool, e.g. `http://127.0.0.1:9001` or `127.0.0.1:9001`;
    /// repeat for more.
    #[arg(long = "backend", value_name = "URI", conflicts_with = "config")]
    pub backends: Vec<String>,
    /// Balancing policy of the `default` pool (with --backend).
    #[arg(long, default_value_t = PolicyKind::DEFAULT.spec(), conflicts_with = "config", help = policy_help("Balancing policy of the `default` pool (with --backend)"))]
    pub policy: switchyard_balance::PolicySpec,
    /// Put the `shed` pool layer (a bounded queue by `x-priority` and deadline, CoDel-style, with
    /// its defaults: 128 waiting, target 50ms over 500ms) in front of the `default` pool (with
    /// --backend); outermost, before --limit.
    #[arg(long, conflicts_with = "config")]
    pub shed: bool,
    /// Put tower's `load-shed` pool layer in front of the `default` pool instead (with
    /// --backend and --limit): what finds the limit full is refused at once, with no queue.
    #[arg(long, conflicts_with_all = ["config", "shed"], requires = "limit")]
    pub load_shed: bool,
    /// Subscribe the `default` pool (with --backend) to every endpoint's out-of-band ORCA load
    /// reports at this interval (e.g. `20ms`, at least 10 ms), as a pool's `load_reports` does.
    #[arg(long, conflicts_with = "config", value_parser = humantime::parse_duration, value_name = "INTERVAL")]
    pub load_reports: Option<std::time::Duration>,
    /// Put the `limit` pool layer on the `default` pool (with --backend): a concurrency limit
    /// on the whole pool learnt by ALGO, `vegas`, `gradient2`, `aimd`, `envoy-gradient`, or a
    /// JSON table with parameters, e.g. `{"name":"fixed","limit":32}`.
    #[arg(long, value_name = "ALGO", conflicts_with = "config", value_parser = parse_spec_arg)]
    pub limit: Option<Spec>,
    /// A concurrency limit per endpoint of the `default` pool (with --backend), learnt by ALGO
    /// (as --limit), on the board and the admin API: policies skip an endpoint at its limit.
    #[arg(long, value_name = "ALGO", conflicts_with = "config", value_parser = parse_spec_arg)]
    pub endpoint_limit: Option<Spec>,
    /// Address of the admin HTTP API, `IP:PORT` or `HOST:PORT` [default: the config's `admin`,
    /// else 127.0.0.1:9900].
    #[arg(long, value_parser = crate::listen::parse_listen_address)]
    pub admin: Option<SocketAddr>,
    /// A file whose first line is the admin API's bearer token (at least 16 visible ASCII
    /// characters): changes through the admin API need `Authorization: Bearer TOKEN`, and every
    /// call does when --admin is not loopback [default: the config's `admin_token_file`, else the
    /// SWITCHYARD_ADMIN_TOKEN environment variable, else none].
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve the gRPC listener over TLS with this PEM certificate chain (with --tls-key), as the
    /// config's `[tls]` `cert` does, whose other settings stay [default: the config's `[tls]`,
    /// else plaintext h2c].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA of this PEM file (mutual TLS), with --tls-cert
    /// or the config's `[tls]`.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Longest wait for in-flight requests on shutdown, e.g. `30s` [default: the config's
    /// `drain_timeout`, else 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Threads serving the proxy, each with its own connections to the endpoints [default: the
    /// config's `threads`, else one per CPU].
    #[arg(long)]
    pub threads: Option<std::num::NonZeroUsize>,
    /// A TOML file of pools and routes (instead of --backend).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Measure every call (`rpc_server_duration_seconds` per service, method and status, calls
    /// in flight, request and response bytes) on the admin API's `GET /metrics`, beside the
    /// per-endpoint series that are always there.
    #[arg(long)]
    pub rpc_metrics: bool,
    /// Whether each call gets a span (set when an exporter is configured, see
    /// `switchyard_telemetry::init`).
    #[arg(skip)]
    pub tracing: bool,
    /// The registry `/metrics` renders (`switchyard_telemetry::init`'s); a new one if `None`.
    #[arg(skip)]
    pub registry: Option<switchyard_telemetry::MetricsRegistry>,
}

impl GatewayArgs {
    /// The configuration these flags describe: the `--config` file, or one pool of the
    /// `--backend`s; the flags override the file's `listen`, `admin`, `drain_timeout` and `threads`.
    pub fn gateway_config(&self) -> Result<GatewayConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => GatewayConfig::load(path)?,
            None => {
                let mut config = GatewayConfig::single_pool(&self.backends, self.policy.clone())?;
                self.protect_default_pool(&mut config)?;
                config
            }
        };
        config.listen = self.listen.or(config.listen);
        config.admin = self.admin.or(config.admin);
        if let Some(path) = &self.admin_token_file {
            config.admin_token =
                Some(AdminToken::from_file(path).map_err(|e| ConfigError::field("--admin-token-file", e))?);
        } else if config.admin_token.is_none()
            && let Ok(token) = std::env::var(ADMIN_TOKEN_ENV)
        {
            config.admin_token =
                Some(AdminToken::new(&token).map_err(|e| ConfigError::field(ADMIN_TOKEN_ENV, e))?);
        }
        if let Some(timeout) = self.drain_timeout {
            config.drain_timeout = timeout;
        }
        config.threads = self.threads.or(config.threads);
        self.override_tls(&mut config)?;
        Ok(config)
    }

    /// Puts `--tls-cert`/`--tls-key` and `--tls-client-ca` over the config's `[tls]`.
    fn override_tls(&self, config: &mut GatewayConfig) -> Result<(), ConfigError> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let mut tls = TlsConfig::new(cert, key);
            if let Some(file) = &config.tls {
                tls.client_ca.clone_from(&file.client_ca);
                tls.reload_interval = file.reload_interval;
            }
            config.tls = Some(tls);
        }
        if let Some(ca) = &self.tls_client_ca {
            let Some(tls) = config.tls.as_mut() else {
                return Err(ConfigError::field(
                    "--tls-client-ca",
                    "client certificates need a TLS listener: give --tls-cert and --tls-key, or [tls] in the config",
                ));
            };
            tls.client_ca = Some(ca.clone());
        }
        Ok(())
    }
}

impl GatewayArgs {
    /// Adds what `--shed`, `--load-shed`, `--limit` and `--endpoint-limit` ask for to the single pool of the
    /// `--backend`s, and validates it (an error names the flag).
    fn protect_default_pool(&self, config: &mut GatewayConfig) -> Result<(), ConfigError> {
        let Some(pool) = config.pools.first_mut() else { return Ok(()) };
        if self.shed {
            pool.layers.push(Spec::named("shed"));
        }
        if self.load_shed {
            pool.layers.push(Spec::named("load-shed"));
        }
        if let Some(interval) = self.load_reports {
            if interval < crate::oob_reports::MIN_INTERVAL {
                return Err(ConfigError::field(
                    "--load-reports",
                    format!(
                        "{interval:?} is below the {:?} a replica serves at the fastest",
                        crate::oob_reports::MIN_INTERVAL
                    ),
                ));
            }
            pool.load_reports = Some(interval);
        }
        if let Some(algorithm) = &self.limit {
            let mut params = serde_json::Map::new();
            params.insert("algorithm".into(), serde_json::to_value(algorithm).unwrap_or_default());
            pool.layers.push(Spec::with_params("limit", params));
        }
        pool.endpoint_limit = self.endpoint_limit.clone();
        config.validate().map_err(|mut e| {
            e.field = match e.field.as_deref() {
                Some(f) if f.ends_with(".endpoint_limit") => Some("--endpoint-limit".into()),
                Some(f)
                    if f.contains(".layers[")
                        && (!(self.shed || self.load_shed) || !f.contains(".layers[0]")) =>
                {
                    Some("--limit".into())
                }
                Some(f) if f.contains(".layers[") => Some("--shed".into()),
                _ => e.field,
            };
            e
        })
    }
}

/// Reads a `--limit`/`--endpoint-limit` ALGO: a name (`vegas`), or a JSON table with a `name`
/// and parameters (`{"name":"fixed","limit":32}`).
pub fn parse_spec_arg(arg: &str) -> Result<Spec, String> {
    if arg.trim_start().starts_with('{') {
        serde_json::from_str(arg).map_err(|e| format!("not a JSON table with a `name`: {e}"))
    } else {
        Ok(Spec::named(arg))
    }
}

/// Writes a spec as [`parse_spec_arg`] reads it (a name, or a JSON table).
pub fn spec_arg(spec: &Spec) -> String {
    if spec.raw_params().is_empty() {
        spec.name().to_string()
    } else {
        serde_json::to_string(spec).unwrap_or_else(|_| spec.name().to_string())
    }
}

/// Reads the configuration, binds the gRPC and admin addresses and serves until `shutdown`
/// completes, then drains (see [`Gateway::shutdown`]).
pub async fn run(args: GatewayArgs, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    crate::register_policies();
    let config = args.gateway_config()?;
    let listen = config.listen.unwrap_or(DEFAULT_LISTEN);
    let admin = config.admin.unwrap_or(DEFAULT_ADMIN);
    let listener =
        TcpListener::bind(listen).await.map_err(|source| GatewayError::Bind { addr: listen, source })?;
    let admin =
        TcpListener::bind(admin).await.map_err(|source| GatewayError::Bind { addr: admin, source })?;
    let registry = args.registry.clone().unwrap_or_default();
    let telemetry = GatewayTelemetry::new(registry, args.rpc_metrics, args.tracing);
    let gateway = Gateway::start_with_telemetry(config, listener, Some(admin), telemetry)?;
    if let Some(addr) = gateway.admin_addr() {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    shutdown.await;
    tracing::info!("draining: no new connections, waiting for requests in flight");
    gateway.shutdown().await
}
