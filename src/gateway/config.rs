//! The gateway's configuration: pools of endpoints, routes that pick a pool, and where to listen.
//!
//! One [`GatewayConfig`] is built from the flags (`--backend`, one pool named `default`) or from
//! a TOML file, and validated once by [`GatewayConfig::validate`]. A file's errors name the field
//! and the line ([`ConfigError`]), so that a typo in a fifty-line config is found at once.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use switchyard_balance::PolicyKind;
use switchyard_balance::policy::{self, PolicySpec};
use switchyard_core::Endpoint;
use switchyard_core::Spec;
use switchyard_discovery::{HealthConfig, SourceConfig};
use switchyard_keys::{KeysConfig, PoolKeys};
use toml::Spanned;

use super::admin_auth::AdminToken;
use super::limits::Limits;
use super::tls::TlsConfig;
use super::upstream_tls::UpstreamTlsConfig;

/// The metadata header that names the model when a route matches on `model`: it takes
/// precedence over the `model_name` read from the request body, and needs no peek.
pub const DEFAULT_MODEL_HEADER: &str = "x-model-name";

/// The most serving threads a gateway runs (each keeps a connection to every endpoint).
pub const MAX_THREADS: usize = 1024;

/// The largest prefix block a pool may set (`[pool.keys] block_tokens`): 65,536 tokens.
pub(crate) const MAX_BLOCK_TOKENS: u32 = 65_536;

/// The shortest header read or idle timeout (`[limits]`): 1 ms.
const MIN_LIMIT_TIMEOUT: Duration = Duration::from_millis(1);
/// The longest: 365 days (a deadline past it could overflow the clock).
const MAX_LIMIT_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a gateway waits for in-flight requests on shutdown unless told otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an attempt no retry can save waits for its endpoint to answer a ping unless a pool
/// says otherwise (`probe_timeout`): many times a loaded machine's round trip, far under any
/// call's deadline.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(50);

/// A validated gateway configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Address to serve gRPC on, if the config says (the `--listen` flag overrides it).
    pub listen: Option<SocketAddr>,
    /// Address of the admin HTTP API, if the config says (the `--admin` flag overrides it).
    pub admin: Option<SocketAddr>,
    /// The admin API's bearer token (`admin_token_file`, read when the config is loaded; the
    /// `--admin-token-file` flag overrides it): required for changes, and for every call when the
    /// admin API is off loopback (see `admin_auth`).
    pub admin_token: Option<AdminToken>,
    /// TLS on the gRPC listener (`[tls]`); plain HTTP/2 (h2c) when `None`.
    pub tls: Option<TlsConfig>,
    /// Longest wait for in-flight requests on shutdown.
    pub drain_timeout: Duration,
    /// Threads serving the proxy, each with its own connections; `None`: one per CPU (the
    /// `--threads` flag overrides it).
    pub threads: Option<NonZeroUsize>,
    /// The metadata header that names the model (default `x-model-name`).
    pub model_header: String,
    /// The pools, in the order the config lists them.
    pub pools: Vec<PoolConfig>,
    /// The routes; the first that matches a request picks its pool.
    pub routes: Vec<RouteConfig>,
    /// The key layer's settings (`[keys]`): which headers carry the session key and priority,
    /// and the bounds of its peek at a KServe request's first message. Its model header is
    /// [`model_header`](Self::model_header).
    pub keys: KeysConfig,
    /// The pool of requests no route matches. With a single pool and no `default_pool`, that
    /// pool is the default.
    pub default_pool: Option<String>,
    /// What a client may ask of the listener (`[limits]`): message and header sizes, streams
    /// per connection, connections, and the timeouts of slow and idle connections.
    pub limits: Limits,
}

/// One pool: the endpoints that serve one model or service, and the policy that picks among them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// The pool's name, unique in the config (routes and the admin API use it).
    pub name: String,
    /// The balancing policy: a name, or a name with parameters, from the policy registry
    /// ([`switchyard_balance::policy::registry`]).
    pub policy: PolicySpec,
    /// The pool's layers, outermost first, from the layer registry
    /// ([`layers::registry`](super::layers::registry)): empty by default.
    pub layers: Vec<Spec>,
    /// A concurrency limit per endpoint, learnt by this `switchyard-limit` algorithm
    /// (`endpoint_limit = "aimd"`, or a table with its parameters), shown on the board and the
    /// admin API: none by default. Policies skip an endpoint at its limit; while every endpoint
    /// is, requests wait in the pool's balancer.
    pub endpoint_limit: Option<Spec>,
    /// The endpoints: `http://` URIs, ids unique within the pool.
    pub endpoints: Vec<Endpoint>,
    /// Discovery sources (`[[pool.discovery]]`) that add endpoints besides (or instead of)
    /// [`endpoints`](Self::endpoints). Ids must be unique across a pool's sources.
    pub discovery: Vec<SourceConfig>,
    /// Health watching (`[pool.health]`): endpoints are held back until their gRPC health is
    /// SERVING. Off unless configured.
    pub health: Option<HealthConfig>,
    /// How long the connections of an endpoint discovery removed stay open for the requests
    /// and streams still in flight on them (`drain_timeout = "30s"`, the default); then what is
    /// left is cut with `UNAVAILABLE` and the connections close. `"0s"` cuts at once.
    pub drain_timeout: Duration,
    /// The keys this pool reads differently from the gateway's `[keys]` (`[pool.keys]`: its
    /// session and priority headers, its prefix block size); none by default.
    pub keys: PoolKeys,
    /// Whether the pool holds its requests while it has no endpoint (`hold_when_empty = true`:
    /// a pool scaled to zero) instead of failing them with `UNAVAILABLE` after a few seconds.
    /// They wait in the pool's `shed` queue, which the pool must have: bounded, each request
    /// until its deadline, and the queue's waiting count is what wakes the pool
    /// ([`Pool::held_requests`](super::Pool::held_requests)). Off by default.
    pub hold_when_empty: bool,
    /// Out-of-band load reports (`load_reports = "20ms"`): the pool's balancer subscribes to
    /// every endpoint's ORCA `OpenRcaService` and gets its load at this interval, besides the
    /// reports in its own responses' trailers ([`crate::oob_reports`]). Useful where several
    /// gateways or clients balance over the same replicas; off by default.
    pub load_reports: Option<Duration>,
    /// Retries (`retry = { attempts = 3, idempotent = ["/pkg.Service/*"] }`), in the pool's
    /// stack just above its balancer: what never reached a replica, on another endpoint, and a
    /// retryable status of the methods marked idempotent, within a retry budget
    /// ([`switchyard_retry`]). Off by default.
    pub retry: Option<switchyard_retry::RetryConfig>,
    /// How long an attempt no retry can save (every attempt of a method the pool's `retry` does
    /// not mark idempotent, and the last of one it does) waits for its endpoint to answer an
    /// HTTP/2 `PING` before it goes, when the endpoint has not been heard from within the last
    /// millisecond (`probe_timeout = "50ms"`, the default; 1 ms to 20 s; `"0s"` sends such
    /// attempts at once).
    /// A replica whose process stopped still takes in TCP data but answers no ping: the attempt
    /// then fails as never sent and the retry layer sends it elsewhere, where otherwise it would
    /// wait for its deadline on a call that cannot be sent again. Used only with `retry`.
    pub probe_timeout: Option<Duration>,
    /// TLS towards the endpoints (`tls = { ca, server_name, cert, key }`): every endpoint of the
    /// pool is reached over TLS. `https://` endpoints of a pool without it are verified against
    /// the system's roots.
    pub tls: Option<UpstreamTlsConfig>,
}

/// One route: requests that match every condition it sets go to its pool.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Matches requests whose path starts with this, e.g. `/inference.GRPCInferenceService/`.
    pub path_prefix: Option<String>,
    /// Matches requests for this model: the model header, or the KServe `model_name` of the
    /// first request message.
    pub model: Option<String>,
    /// The pool the matching requests go to.
    pub pool: String,
}

/// A configuration the gateway cannot run with: which field, on which line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the configuration came from, if any.
    pub file: Option<String>,
    /// The line (1-based) of the offending value, when the configuration came from TOML.
    pub line: Option<usize>,
    /// The field, as a path such as `pool[1].policy`; `None` for TOML syntax errors.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid gateway config")?;
        if let Some(file) = &self.file {
            write!(f, " {file}")?;
        }
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { file: None, line: None, field: Some(field.into()), message: message.into() }
    }
}

impl PoolConfig {
    /// A pool named `name` over `endpoints`, with the default policy and no layers.
    pub fn new(name: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        Self {
            name: name.into(),
            policy: PolicyKind::DEFAULT.spec(),
            layers: Vec::new(),
            endpoint_limit: None,
            endpoints,
            discovery: Vec::new(),
            health: None,
            drain_timeout: switchyard_discovery::drain::DEFAULT_DRAIN_TIMEOUT,
            keys: PoolKeys::default(),
            hold_when_empty: false,
            load_reports: None,
            retry: None,
            probe_timeout: Some(DEFAULT_PROBE_TIMEOUT),
            tls: None,
        }
    }

    /// The same pool, retrying by `retry`.
    pub fn with_retry(mut self, retry: switchyard_retry::RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The same pool, whose attempts no retry can save wait at most `timeout` for their
    /// endpoint to answer a ping ([`probe_timeout`](Self::probe_timeout)), held to 1 ms to 20 s;
    /// `None` sends them at once.
    pub fn with_probe_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// The same pool reaching its endpoints over TLS.
    pub fn with_tls(mut self, tls: UpstreamTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same pool with this drain timeout for the endpoints discovery removes.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The same pool reading these keys differently from the gateway's `[keys]`.
    pub fn with_keys(mut self, keys: PoolKeys) -> Self {
        self.keys = keys;
        self
    }

    /// The same pool with its endpoints' health watched.
    pub fn with_health(mut self, health: HealthConfig) -> Self {
        self.health = Some(health);
        self
    }

    /// The same pool with these discovery sources besides its endpoints.
    pub fn with_discovery(mut self, discovery: Vec<SourceConfig>) -> Self {
        self.discovery = discovery;
        self
    }

    /// The same pool with a concurrency limit per endpoint, learnt by the algorithm `limit` names.
    pub fn with_endpoint_limit(mut self, limit: Spec) -> Self {
        self.endpoint_limit = Some(limit);
        self
    }

    /// The same pool with this policy.
    pub fn with_policy(mut self, policy: impl Into<PolicySpec>) -> Self {
        self.policy = policy.into();
        self
    }

    /// The same pool with these layers, outermost first.
    pub fn with_layers(mut self, layers: Vec<Spec>) -> Self {
        self.layers = layers;
        self
    }
}

impl RouteConfig {
    /// A route to `pool` of the requests whose path starts with `path_prefix` and whose model is
    /// `model` (each only if given).
    pub fn new(path_prefix: Option<String>, model: Option<String>, pool: impl Into<String>) -> Self {
        Self { path_prefix, model, pool: pool.into() }
    }
}

impl GatewayConfig {
    /// One pool named `default`, balanced by `policy`, over `backends` (URIs such as
    /// `http://127.0.0.1:9001`; a bare `host:port` means `http://`). Each endpoint's id is its
    /// authority (`127.0.0.1:9001`). Validated.
    pub fn single_pool(backends: &[String], policy: impl Into<PolicySpec>) -> Result<Self, ConfigError> {
        crate::register_policies();
        let policy = policy.into();
        if backends.is_empty() {
            return Err(ConfigError::field(
                "--backend",
                "no backends: give --backend URI (one or more) or --config FILE",
            ));
        }
        let endpoints = backends
            .iter()
            .map(|b| {
                let address = normalize_address(b);
                Endpoint::new(default_id(&address), address)
            })
            .collect();
        let config =
            Self { pools: vec![PoolConfig::new("default", endpoints).with_policy(policy)], ..Self::empty() };
        config.validate().map_err(|mut e| {
            // The flags have no lines; say which flag.
            if e.field.as_deref().is_some_and(|f| f.contains("address")) {
                e.field = Some("--backend".into());
            } else if e.field.as_deref().is_some_and(|f| f.ends_with(".policy")) {
                e.field = Some("--policy".into());
            }
            e
        })?;
        Ok(config)
    }

    /// Reads and validates a TOML config file. See the module documentation of
    /// [`gateway`](crate::gateway) for the format.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(file.clone()),
            line: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        // Relative paths (discovery files, TLS files, the admin token) are relative to the
        // config file.
        let folder = path.parent().unwrap_or(Path::new(""));
        let mut config =
            Self::from_toml_in(&text, folder).map_err(|e| ConfigError { file: Some(file), ..e })?;
        for source in config.pools.iter_mut().flat_map(|p| p.discovery.iter_mut()) {
            if let SourceConfig::File(file) = source
                && file.path.is_relative()
            {
                file.path = folder.join(&file.path);
            }
        }
        Ok(config)
    }

    /// Parses and validates a TOML config; errors carry the line of the offending value. Paths
    /// in it are relative to the working directory.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_in(text, Path::new(""))
    }

    /// The same config with this bearer token on its admin API.
    pub fn with_admin_token(mut self, token: AdminToken) -> Self {
        self.admin_token = Some(token);
        self
    }

    /// The same config serving TLS on its gRPC listener.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// [`from_toml`](Self::from_toml), with relative paths taken from `folder`.
    fn from_toml_in(text: &str, folder: &Path) -> Result<Self, ConfigError> {
        crate::register_policies();
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: None,
            line: e.span().map(|s| line_of(text, s.start)),
            // A value of the wrong type, a missing or unknown field: name the field as
            // validation errors do. TOML syntax errors have no field.
            field: e.span().and_then(|s| field_at(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let mut lines = Lines { text, folder, by_field: BTreeMap::new() };
        let config = raw.into_config(&mut lines)?;
        config.validate().map_err(|e| lines.locate(e))?;
        Ok(config)
    }

    /// Checks what the types cannot: at least one pool, each with endpoints whose addresses are
    /// `http://` URIs and whose ids are unique, unique pool names, routes and `default_pool`
    /// naming existing pools, a valid model header.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_fed(&[])
    }

    /// [`validate`](Self::validate), where the pools named in `fed` have endpoints from a
    /// source given in code (so they need no `endpoints` or `discovery` of their own).
    pub(crate) fn validate_fed(&self, fed: &[&str]) -> Result<(), ConfigError> {
        if let Some(threads) = self.threads
            && threads.get() > MAX_THREADS
        {
            return Err(ConfigError::field(
                "threads",
                format!("{threads} threads: at most {MAX_THREADS} (one per CPU is the default)"),
            ));
        }
        self.validate_limits()?;
        if self.tls.as_ref().is_some_and(|tls| tls.reload_interval.is_zero()) {
            return Err(ConfigError::field("tls.reload_interval", "must be a positive duration"));
        }
        if self.pools.is_empty() {
            return Err(ConfigError::field("pool", "no pools: add a [[pool]] with at least one endpoint"));
        }
        let mut names = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if pool.name.is_empty() {
                return Err(ConfigError::field(format!("pool[{i}].name"), "a pool needs a name"));
            }
            if !names.insert(pool.name.as_str()) {
                return Err(ConfigError::field(
                    format!("pool[{i}].name"),
                    format!("duplicate pool name {:?}", pool.name),
                ));
            }
            if let Err(e) = policy::registry().validate(&pool.policy) {
                return Err(ConfigError::field(format!("pool[{i}].policy"), e.to_string()));
            }
            for (k, layer) in pool.layers.iter().enumerate() {
                if let Err(e) = super::layers::registry().build(layer) {
                    return Err(ConfigError::field(format!("pool[{i}].layers[{k}]"), format!("layer {e}")));
                }
            }
            if let Some(limit) = &pool.endpoint_limit
                && let Err(e) = switchyard_balance::EndpointLimit::from_spec(limit)
            {
                return Err(ConfigError::field(format!("pool[{i}].endpoint_limit"), format!("limit {e}")));
            }
            if pool.endpoints.is_empty() && pool.discovery.is_empty() && !fed.contains(&pool.name.as_str()) {
                return Err(ConfigError::field(
                    format!("pool[{i}].endpoints"),
                    format!("pool {:?} has no endpoints and no [[pool.discovery]]", pool.name),
                ));
            }
            if let Some(tls) = &pool.tls {
                tls.validate().map_err(|(name, m)| ConfigError::field(format!("pool[{i}].tls.{name}"), m))?;
            }
            for (k, source) in pool.discovery.iter().enumerate() {
                source.validate().map_err(|m| ConfigError::field(format!("pool[{i}].discovery[{k}]"), m))?;
            }
            let mut ids = HashSet::new();
            for (j, endpoint) in pool.endpoints.iter().enumerate() {
                check_address(&endpoint.address)
                    .map_err(|m| ConfigError::field(format!("pool[{i}].endpoints[{j}].address"), m))?;
                if !ids.insert(&endpoint.id) {
                    return Err(ConfigError::field(
                        format!("pool[{i}].endpoints[{j}].id"),
                        format!("duplicate endpoint id {:?} in pool {:?}", endpoint.id.as_str(), pool.name),
                    ));
                }
            }
        }
        let known = || self.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
        for (k, route) in self.routes.iter().enumerate() {
            if !names.contains(route.pool.as_str()) {
                return Err(ConfigError::field(
                    format!("route[{k}].pool"),
                    format!("no pool named {:?}; pools: {}", route.pool, known()),
                ));
            }
            match (&route.path_prefix, &route.model) {
                (None, None) => {
                    return Err(ConfigError::field(
                        format!("route[{k}]"),
                        "a route needs `path_prefix` or `model` (use `default_pool` for a catch-all)",
                    ));
                }
                (Some(prefix), _) if !prefix.starts_with('/') => {
                    return Err(ConfigError::field(
                        format!("route[{k}].path_prefix"),
                        format!(
                            "{prefix:?} does not start with '/' (e.g. \"/inference.GRPCInferenceService/\")"
                        ),
                    ));
                }
                _ => {}
            }
        }
        if let Some(default) = &self.default_pool
            && !names.contains(default.as_str())
        {
            return Err(ConfigError::field(
                "default_pool",
                format!("no pool named {default:?}; pools: {}", known()),
            ));
        }
        if self.routes.is_empty() && self.default_pool.is_none() && self.pools.len() > 1 {
            return Err(ConfigError::field(
                "route",
                "several pools but no route and no `default_pool`: no request could reach a pool",
            ));
        }
        if let Err(size) =
            self.keys.clone().with_also_block_tokens(self.pools.iter().filter_map(|p| p.keys.block_tokens))
        {
            let i = self.pools.iter().position(|p| p.keys.block_tokens == Some(size)).unwrap_or(0);
            return Err(ConfigError::field(
                format!("pool[{i}].keys.block_tokens"),
                format!(
                    "{size}: the pools set more than {} block sizes besides [keys] block_tokens ({}); each costs a hash of every prompt",
                    switchyard_keys::MAX_EXTRA_BLOCK_SIZES,
                    self.keys.block_tokens
                ),
            ));
        }
        if http::HeaderName::from_bytes(self.model_header.as_bytes()).is_err()
            || self.model_header.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(ConfigError::field(
                "model_header",
                format!("{:?} is not a valid lower-case header name", self.model_header),
            ));
        }
        Ok(())
    }

    /// The key layer's settings as the gateway runs it: [`keys`](Self::keys) with the
    /// [`model_header`](Self::model_header).
    /// The text of a prompt is also hashed at the block sizes the pools set (`[pool.keys]`).
    pub fn keys_config(&self) -> KeysConfig {
        let keys = match http::HeaderName::from_bytes(self.model_header.as_bytes()) {
            Ok(header) => self.keys.clone().with_model_header(header),
            Err(_) => self.keys.clone(),
        };
        // `validate` refuses too many sizes; were it skipped, the pools' own sizes are dropped
        // (their blocks are then the layer's).
        keys.clone()
            .with_also_block_tokens(self.pools.iter().filter_map(|p| p.keys.block_tokens))
            .unwrap_or(keys)
    }

    /// The limits, as built in code (TOML's are checked as they are read): counts of at least 1,
    /// timeouts from 1 ms to 365 days.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let counts = [
            ("limits.max_message_bytes", u64::from(limits.max_message_bytes)),
            ("limits.max_header_list_bytes", u64::from(limits.max_header_list_bytes)),
            ("limits.max_streams_per_connection", u64::from(limits.max_streams_per_connection)),
            ("limits.max_connections", limits.max_connections as u64),
        ];
        if let Some((field, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(ConfigError::field(*field, "0: expected at least 1"));
        }
        for (field, timeout) in [
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
        ] {
            if !(MIN_LIMIT_TIMEOUT..=MAX_LIMIT_TIMEOUT).contains(&timeout) {
                return Err(ConfigError::field(field, format!("{timeout:?}: expected 1ms to 365 days")));
            }
        }
        Ok(())
    }

    /// The pool requests go to when no route matches: `default_pool`, or the only pool.
    pub fn default_pool(&self) -> Option<&str> {
        match (&self.default_pool, self.pools.as_slice()) {
            (Some(name), _) => Some(name),
            (None, [only]) => Some(&only.name),
            _ => None,
        }
    }

    fn empty() -> Self {
        Self {
            listen: None,
            admin: None,
            admin_token: None,
            tls: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            threads: None,
            model_header: DEFAULT_MODEL_HEADER.into(),
            keys: KeysConfig::default(),
            pools: Vec::new(),
            routes: Vec::new(),
            default_pool: None,
            limits: Limits::default(),
        }
    }
}

/// `host:port` means `http://host:port`.
fn normalize_address(address: &str) -> String {
    if address.contains("://") { address.to_string() } else { format!("http://{address}") }
}

/// The authority of a URI (`127.0.0.1:9001`), or the address itself if it has none.
fn default_id(address: &str) -> String {
    address
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| address.to_string())
}

fn check_address(address: &str) -> Result<(), String> {
    let uri: http::Uri = address.parse().map_err(|e| format!("{address:?} is not a URI: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {}
        _ => return Err(format!("{address:?}: expected http://HOST:PORT or https://HOST:PORT")),
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{address:?} has no host: expected http://HOST:PORT"));
    };
    // `Authority::port` is `None` for a port that does not fit a u16: read the text.
    if let Some((_, port)) = authority.as_str().rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
        match port.parse::<u64>() {
            Ok(0) => return Err(format!("{address:?}: port 0 is not a port an endpoint listens on")),
            Ok(p) if p > u64::from(u16::MAX) => {
                return Err(format!("{address:?}: port {p} is out of range (1-65535)"));
            }
            Ok(_) => {}
            Err(_) => return Err(format!("{address:?}: port {port:?} is not a number")),
        }
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{address:?}: an endpoint is a host and port, without a path"));
    }
    Ok(())
}

/// A pool's `retry` table: a field of the wrong type, unknown or out of range is named with its
/// line (`pool[0].retry.attempts`).
fn retry_config(
    pool: usize,
    value: Spanned<toml::Value>,
    lines: &Lines<'_>,
) -> Result<switchyard_retry::RetryConfig, ConfigError> {
    let field = format!("pool[{pool}].retry");
    let span = value.span();
    let table = match value.get_ref() {
        toml::Value::Table(table) => table.clone(),
        _ => return Err(lines.error(field, span, "a table, e.g. `retry = { attempts = 3 }`")),
    };
    // Each field is read alone first, so that an error names it (and its line, found in the
    // file's text below the table's start).
    let line_of_key = |key: &str| -> usize {
        let start = line_of(lines.text, span.start);
        // An inline table's span holds its keys; a `[pool.retry]` table's holds only its header,
        // so its keys are looked for down to the next header.
        let rest = lines.text.get(span.start..).unwrap_or("");
        let end = if rest.starts_with('[') {
            let body = rest.find('\n').map_or(rest.len(), |n| n + 1);
            rest[body..].find("\n[").map_or(rest.len(), |n| body + n)
        } else {
            span.end - span.start
        };
        let text = rest.get(..end).unwrap_or("");
        // `key` as a key: not inside another word, followed by `=`.
        let at = text.match_indices(key).map(|(at, _)| at).find(|&at| {
            let before = text[..at].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            before && text[at + key.len()..].trim_start().starts_with('=')
        });
        at.map_or(start, |at| line_of(lines.text, span.start + at))
    };
    let located = |key: &str, message: String| ConfigError {
        file: None,
        line: Some(line_of_key(key)),
        field: Some(format!("{field}.{key}")),
        message,
    };
    for (key, value) in &table {
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        if let Err(e) = toml::Value::Table(one).try_into::<switchyard_retry::RetryConfig>() {
            return Err(located(key, e.message().trim().to_owned()));
        }
    }
    let config: switchyard_retry::RetryConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e| lines.error(field.clone(), span.clone(), e.message().trim()))?;
    config.validate().map_err(|e| {
        let key = e.field.split('.').next().unwrap_or(e.field);
        let mut error = located(key, e.message.clone());
        error.field = Some(format!("{field}.{}", e.field));
        error
    })?;
    Ok(config)
}

/// The path (`pool[0].endpoints[1].weight`) of the innermost field whose value spans `offset`
/// in `text`, named as validation errors name fields; `None` if `text` is not valid TOML or
/// `offset` is in no value.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut path = String::new();
    let mut table = root.get_ref();
    loop {
        // The value holding `offset`; else, as the spans of an array of tables cover only their
        // `[[header]]`s, the array whose element starts last at or before it.
        let (key, value) = table.iter().find(|(_, v)| v.span().contains(&offset)).or_else(|| {
            table
                .iter()
                .filter_map(|(k, v)| Some((array_element_at(v.get_ref(), offset)?.2, (k, v))))
                .max_by_key(|(start, _)| *start)
                .map(|(_, kv)| kv)
        })?;
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        let mut value = value.get_ref();
        while let toml::de::DeValue::Array(_) = value {
            let Some((i, element, _)) = array_element_at(value, offset) else { return Some(path) };
            path.push_str(&format!("[{i}]"));
            value = element;
        }
        match value {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return Some(path),
        }
    }
}

/// The element of a TOML array that holds `offset`, with its index and where it starts: the
/// one whose span contains it, else the last table element starting at or before it (an array of
/// tables' `[[header]]`).
fn array_element_at<'a, 'i>(
    value: &'a toml::de::DeValue<'i>,
    offset: usize,
) -> Option<(usize, &'a toml::de::DeValue<'i>, usize)> {
    let toml::de::DeValue::Array(items) = value else { return None };
    let found = items.iter().enumerate().find(|(_, v)| v.span().contains(&offset)).or_else(|| {
        items
            .iter()
            .enumerate()
            .rev()
            .find(|(_, v)| matches!(v.get_ref(), toml::de::DeValue::Table(_)) && v.span().start <= offset)
    });
    found.map(|(i, v)| (i, v.get_ref(), v.span().start))
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The line of each field read from TOML, so that validation errors can name it.
struct Lines<'a> {
    text: &'a str,
    /// What relative paths are relative to.
    folder: &'a Path,
    by_field: BTreeMap<String, usize>,
}

impl Lines<'_> {
    /// `path`, relative to the config's folder if it is relative.
    fn path(&self, path: &str) -> PathBuf {
        self.folder.join(path)
    }

    fn record<T>(&mut self, field: impl Into<String>, value: &Spanned<T>) {
        self.by_field.insert(field.into(), line_of(self.text, value.span().start));
    }

    fn error(&self, field: impl Into<String>, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            line: Some(line_of(self.text, span.start)),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// `value` read as a duration (`"30s"`, `"20ms"`); an error names `field`, its line, and
    /// `example` as a valid value.
    fn duration(
        &self,
        field: impl Into<String>,
        value: &Spanned<String>,
        example: &str,
    ) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref()).map_err(|e| {
            self.error(field, value.span(), format!("{:?}: {e} (e.g. {example})", value.get_ref()))
        })
    }

    /// Adds the line of the error's field (or of its closest recorded parent).
    fn locate(&self, mut error: ConfigError) -> ConfigError {
        let mut field = error.field.clone().unwrap_or_default();
        loop {
            if let Some(&line) = self.by_field.get(&field) {
                error.line = Some(line);
                return error;
            }
            match field.rfind(['.', '[']) {
                Some(i) => field.truncate(i),
                None => return error,
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    drain_timeout: Option<Spanned<String>>,
    threads: Option<Spanned<usize>>,
    model_header: Option<Spanned<String>>,
    keys: Option<Spanned<KeysConfig>>,
    limits: Option<Spanned<RawLimits>>,
    default_pool: Option<Spanned<String>>,
    #[serde(default)]
    pool: Vec<Spanned<RawPool>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    policy: Option<Spanned<PolicySpec>>,
    #[serde(default)]
    layers: Vec<Spanned<Spec>>,
    endpoint_limit: Option<Spanned<Spec>>,
    #[serde(default)]
    endpoints: Option<Spanned<Vec<Spanned<RawEndpoint>>>>,
    #[serde(default)]
    discovery: Vec<Spanned<SourceConfig>>,
    health: Option<Spanned<RawHealth>>,
    drain_timeout: Option<Spanned<String>>,
    keys: Option<Spanned<RawPoolKeys>>,
    hold_when_empty: Option<Spanned<bool>>,
    load_reports: Option<Spanned<String>>,
    /// Read as any value, so that its fields' errors name the field and its line here.
    retry: Option<Spanned<toml::Value>>,
    probe_timeout: Option<Spanned<String>>,
    tls: Option<Spanned<RawUpstreamTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    // Read as any value, so that a wrong type is refused here with the field's name too.
    max_message_bytes: Option<Spanned<toml::Value>>,
    max_header_list_bytes: Option<Spanned<toml::Value>>,
    max_streams_per_connection: Option<Spanned<toml::Value>>,
    max_connections: Option<Spanned<toml::Value>>,
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
}

impl RawLimits {
    /// The limits, each checked: a count of at least 1 and within its type, a duration of at
    /// least 1 ms; an error names the field and its line.
    fn into_limits(self, lines: &Lines<'_>) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        let count = |name: &str, value: Spanned<toml::Value>, max: u64| match value
            .get_ref()
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
        {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(lines.error(
                format!("limits.{name}"),
                value.span(),
                format!("{}: expected a whole number from 1 to {max}", value.get_ref()),
            )),
        };
        let duration = |name: &str, value: Spanned<String>| {
            let field = format!("limits.{name}");
            match humantime::parse_duration(value.get_ref()) {
                Ok(d) if (MIN_LIMIT_TIMEOUT..=MAX_LIMIT_TIMEOUT).contains(&d) => Ok(d),
                Ok(_) => Err(lines.error(
                    field,
                    value.span(),
                    format!("{:?}: expected 1ms to 365 days", value.get_ref()),
                )),
                Err(e) => Err(lines.error(
                    field,
                    value.span(),
                    format!("{:?}: {e} (e.g. \"30s\")", value.get_ref()),
                )),
            }
        };
        // h2 takes the sizes as u32; a message is at most 4 GiB - 1 by its prefix.
        let u32_max = u64::from(u32::MAX);
        if let Some(v) = self.max_message_bytes {
            limits.max_message_bytes = count("max_message_bytes", v, u32_max)? as u32;
        }
        if let Some(v) = self.max_header_list_bytes {
            limits.max_header_list_bytes = count("max_header_list_bytes", v, u32_max)? as u32;
        }
        if let Some(v) = self.max_streams_per_connection {
            limits.max_streams_per_connection = count("max_streams_per_connection", v, u32_max)? as u32;
        }
        if let Some(v) = self.max_connections {
            limits.max_connections = count("max_connections", v, u32_max)? as usize;
        }
        if let Some(v) = self.header_read_timeout {
            limits.header_read_timeout = duration("header_read_timeout", v)?;
        }
        if let Some(v) = self.idle_timeout {
            limits.idle_timeout = duration("idle_timeout", v)?;
        }
        Ok(limits)
    }
}

/// `[tls]`: the listener's TLS.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    reload_interval: Option<Spanned<String>>,
}

/// A pool's `tls = { ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolKeys {
    session_header: Option<Spanned<String>>,
    priority_header: Option<Spanned<String>>,
    /// Read as any value, so that a wrong type is refused here with the field's name too.
    block_tokens: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    service: String,
    check_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    id: Option<Spanned<String>>,
    address: Spanned<String>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path_prefix: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    pool: Spanned<String>,
}

impl RawConfig {
    fn into_config(self, lines: &mut Lines<'_>) -> Result<GatewayConfig, ConfigError> {
        let mut config = GatewayConfig::empty();
        let addr = |lines: &Lines<'_>, field: &str, value: Spanned<String>| {
            crate::listen::parse_listen_address(value.get_ref())
                .map_err(|e| lines.error(field, value.span(), e))
        };
        if let Some(listen) = self.listen {
            config.listen = Some(addr(lines, "listen", listen)?);
        }
        if let Some(admin) = self.admin {
            config.admin = Some(addr(lines, "admin", admin)?);
        }
        if let Some(file) = self.admin_token_file {
            let token = AdminToken::from_file(&lines.path(file.get_ref()));
            config.admin_token = Some(token.map_err(|e| lines.error("admin_token_file", file.span(), e))?);
        }
        if let Some(tls) = self.tls {
            config.tls = Some(tls.into_inner().into_config(lines)?);
        }
        if let Some(timeout) = self.drain_timeout {
            config.drain_timeout = lines.duration("drain_timeout", &timeout, "\"30s\"")?;
        }
        if let Some(threads) = self.threads {
            lines.record("threads", &threads);
            let span = threads.span();
            config.threads = Some(
                NonZeroUsize::new(threads.into_inner())
                    .ok_or_else(|| lines.error("threads", span, "must be at least 1"))?,
            );
        }
        if let Some(keys) = self.keys {
            lines.record("keys", &keys);
            config.keys = keys.into_inner();
        }
        if let Some(limits) = self.limits {
            lines.record("limits", &limits);
            config.limits = limits.into_inner().into_limits(lines)?;
        }
        if let Some(header) = self.model_header {
            lines.record("model_header", &header);
            config.model_header = header.into_inner();
        }
        if let Some(default) = self.default_pool {
            lines.record("default_pool", &default);
            config.default_pool = Some(default.into_inner());
        }
        for (i, pool) in self.pool.into_iter().enumerate() {
            lines.record(format!("pool[{i}]"), &pool);
            let pool = pool.into_inner();
            lines.record(format!("pool[{i}].name"), &pool.name);
            if let Some(endpoints) = &pool.endpoints {
                lines.record(format!("pool[{i}].endpoints"), endpoints);
            } else {
                lines.record(format!("pool[{i}].endpoints"), &pool.name);
            }
            let policy = match pool.policy {
                None => PolicyKind::DEFAULT.spec(),
                Some(p) => {
                    policy::registry()
                        .validate(p.get_ref())
                        .map_err(|e| lines.error(format!("pool[{i}].policy"), p.span(), format!("{e}")))?;
                    p.into_inner()
                }
            };
            let mut layers = Vec::with_capacity(pool.layers.len());
            for (k, layer) in pool.layers.into_iter().enumerate() {
                if let Err(e) = super::layers::registry().build(layer.get_ref()) {
                    return Err(lines.error(
                        format!("pool[{i}].layers[{k}]"),
                        layer.span(),
                        format!("layer {e}"),
                    ));
                }
                layers.push(layer.into_inner());
            }
            let endpoint_limit = match pool.endpoint_limit {
                None => None,
                Some(limit) => {
                    if let Err(e) = switchyard_balance::EndpointLimit::from_spec(limit.get_ref()) {
                        return Err(lines.error(
                            format!("pool[{i}].endpoint_limit"),
                            limit.span(),
                            format!("limit {e}"),
                        ));
                    }
                    Some(limit.into_inner())
                }
            };
            let mut endpoints = Vec::new();
            for (j, endpoint) in
                pool.endpoints.map(Spanned::into_inner).unwrap_or_default().into_iter().enumerate()
            {
                let field = format!("pool[{i}].endpoints[{j}]");
                lines.record(field.clone(), &endpoint);
                let endpoint = endpoint.into_inner();
                lines.record(format!("{field}.address"), &endpoint.address);
                let address = normalize_address(endpoint.address.get_ref());
                let id = match endpoint.id {
                    Some(id) => {
                        lines.record(format!("{field}.id"), &id);
                        id.into_inner()
                    }
                    None => default_id(&address),
                };
                endpoints.push(Endpoint::new(id, address).with_weight(endpoint.weight));
            }
            let mut discovery = Vec::with_capacity(pool.discovery.len());
            for (k, source) in pool.discovery.into_iter().enumerate() {
                lines.record(format!("pool[{i}].discovery[{k}]"), &source);
                discovery.push(source.into_inner());
            }
            let health = match pool.health {
                None => None,
                Some(raw) => {
                    lines.record(format!("pool[{i}].health"), &raw);
                    let raw = raw.into_inner();
                    let mut health = HealthConfig { service: raw.service, ..HealthConfig::default() };
                    for (name, value, slot) in [
                        ("check_interval", raw.check_interval, &mut health.check_interval),
                        ("timeout", raw.timeout, &mut health.timeout),
                    ] {
                        if let Some(value) = value {
                            let field = format!("pool[{i}].health.{name}");
                            *slot = humantime::parse_duration(value.get_ref())
                                .ok()
                                .filter(|d| !d.is_zero())
                                .ok_or_else(|| {
                                    lines.error(
                                        field,
                                        value.span(),
                                        format!(
                                            "{:?} is not a positive duration (e.g. \"5s\")",
                                            value.get_ref()
                                        ),
                                    )
                                })?;
                        }
                    }
                    Some(health)
                }
            };
            let drain_timeout = match pool.drain_timeout {
                None => switchyard_discovery::drain::DEFAULT_DRAIN_TIMEOUT,
                Some(value) => lines.duration(format!("pool[{i}].drain_timeout"), &value, "\"30s\"")?,
            };
            let keys = match pool.keys {
                None => PoolKeys::default(),
                Some(raw) => {
                    lines.record(format!("pool[{i}].keys"), &raw);
                    raw.into_inner().into_keys(i, lines)?
                }
            };
            let hold_when_empty = match pool.hold_when_empty {
                None => false,
                Some(hold) if !*hold.get_ref() => false,
                Some(hold) => {
                    // Held requests wait in the shed queue: bounded, each until its deadline.
                    if !layers.iter().any(|l| l.name() == "shed") {
                        return Err(lines.error(
                            format!("pool[{i}].hold_when_empty"),
                            hold.span(),
                            "needs a `shed` layer in the pool's `layers` (the bounded queue the requests wait in, \
                             each until its deadline)",
                        ));
                    }
                    true
                }
            };
            let load_reports = match pool.load_reports {
                None => None,
                Some(value) => {
                    let interval = lines.duration(format!("pool[{i}].load_reports"), &value, "\"20ms\"")?;
                    if interval < crate::oob_reports::MIN_INTERVAL {
                        return Err(lines.error(
                            format!("pool[{i}].load_reports"),
                            value.span(),
                            format!(
                                "{:?} is below the {:?} a replica serves at the fastest",
                                value.get_ref(),
                                crate::oob_reports::MIN_INTERVAL
                            ),
                        ));
                    }
                    Some(interval)
                }
            };
            let retry = match pool.retry {
                None => None,
                Some(value) => Some(retry_config(i, value, lines)?),
            };
            let probe_timeout = match pool.probe_timeout {
                None => Some(DEFAULT_PROBE_TIMEOUT),
                Some(value) => {
                    let field = format!("pool[{i}].probe_timeout");
                    let timeout = lines.duration(field.clone(), &value, "\"50ms\", or \"0s\" for none")?;
                    let (min, max) = (super::liveness::MIN_PROBE_TIMEOUT, super::liveness::MAX_PROBE_TIMEOUT);
                    if !timeout.is_zero() && !(min..=max).contains(&timeout) {
                        return Err(lines.error(
                            field,
                            value.span(),
                            format!(
                                "{:?} is outside {min:?} to {max:?} (or \"0s\" for none)",
                                value.get_ref()
                            ),
                        ));
                    }
                    (!timeout.is_zero()).then_some(timeout)
                }
            };
            let tls = match pool.tls {
                None => None,
                Some(raw) => {
                    lines.record(format!("pool[{i}].tls"), &raw);
                    Some(raw.into_inner().into_config(i, lines)?)
                }
            };
            config.pools.push(PoolConfig {
                name: pool.name.into_inner(),
                policy,
                layers,
                endpoint_limit,
                endpoints,
                discovery,
                health,
                drain_timeout,
                keys,
                hold_when_empty,
                load_reports,
                retry,
                probe_timeout,
                tls,
            });
        }
        for (k, route) in self.route.into_iter().enumerate() {
            lines.record(format!("route[{k}]"), &route);
            let route = route.into_inner();
            lines.record(format!("route[{k}].pool"), &route.pool);
            if let Some(prefix) = &route.path_prefix {
                lines.record(format!("route[{k}].path_prefix"), prefix);
            }
            config.routes.push(RouteConfig {
                path_prefix: route.path_prefix.map(Spanned::into_inner),
                model: route.model.map(Spanned::into_inner),
                pool: route.pool.into_inner(),
            });
        }
        Ok(config)
    }
}

impl RawTls {
    /// The listener's TLS; a bad reload interval is an error at its line.
    fn into_config(self, lines: &mut Lines<'_>) -> Result<TlsConfig, ConfigError> {
        let mut tls = TlsConfig::new(lines.path(self.cert.get_ref()), lines.path(self.key.get_ref()));
        lines.record("tls.cert", &self.cert);
        lines.record("tls.key", &self.key);
        if let Some(ca) = self.client_ca {
            lines.record("tls.client_ca", &ca);
            tls.client_ca = Some(lines.path(ca.get_ref()));
        }
        if let Some(interval) = self.reload_interval {
            tls.reload_interval = humantime::parse_duration(interval.get_ref())
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    lines.error(
                        "tls.reload_interval",
                        interval.span(),
                        format!("{:?} is not a positive duration (e.g. \"10s\")", interval.get_ref()),
                    )
                })?;
        }
        Ok(tls)
    }
}

impl RawUpstreamTls {
    /// Pool `i`'s TLS towards its endpoints; `cert` without `key` (or the reverse) and a bad
    /// `server_name` are errors at their line.
    fn into_config(self, i: usize, lines: &mut Lines<'_>) -> Result<UpstreamTlsConfig, ConfigError> {
        let mut spans = BTreeMap::new();
        let mut path = |name: &'static str, value: Option<Spanned<String>>, lines: &mut Lines<'_>| {
            value.map(|v| {
                lines.record(format!("pool[{i}].tls.{name}"), &v);
                spans.insert(name, v.span());
                lines.path(v.get_ref())
            })
        };
        let ca = path("ca", self.ca, lines);
        let cert = path("cert", self.cert, lines);
        let key = path("key", self.key, lines);
        let server_name = self.server_name.map(|name| {
            lines.record(format!("pool[{i}].tls.server_name"), &name);
            spans.insert("server_name", name.span());
            name.into_inner()
        });
        let tls = UpstreamTlsConfig { ca, server_name, cert, key };
        tls.validate().map_err(|(name, message)| {
            let field = format!("pool[{i}].tls.{name}");
            match spans.get(name).or_else(|| spans.values().next()) {
                Some(span) => lines.error(field, span.clone(), message),
                None => ConfigError::field(field, message),
            }
        })?;
        Ok(tls)
    }
}

impl RawPoolKeys {
    /// The keys of pool `i`; a bad header name or block size is an error at its line.
    fn into_keys(self, i: usize, lines: &mut Lines<'_>) -> Result<PoolKeys, ConfigError> {
        let mut keys = PoolKeys::default();
        for (name, value, slot) in [
            ("session_header", self.session_header, &mut keys.session_header),
            ("priority_header", self.priority_header, &mut keys.priority_header),
        ] {
            if let Some(value) = value {
                let field = format!("pool[{i}].keys.{name}");
                lines.record(field.clone(), &value);
                let header = http::HeaderName::from_bytes(value.get_ref().as_bytes()).map_err(|_| {
                    lines.error(
                        field,
                        value.span(),
                        format!("{:?} is not a valid header name", value.get_ref()),
                    )
                })?;
                *slot = Some(header);
            }
        }
        if let Some(size) = self.block_tokens {
            let field = format!("pool[{i}].keys.block_tokens");
            lines.record(field.clone(), &size);
            let tokens = size
                .get_ref()
                .as_integer()
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| (1..=MAX_BLOCK_TOKENS).contains(t));
            keys.block_tokens = Some(tokens.ok_or_else(|| {
                lines.error(
                    field,
                    size.span(),
                    format!(
                        "{} is not a block size: tokens per prefix block, 1 to {MAX_BLOCK_TOKENS} (the trace's and the sim's: 512)",
                        size.get_ref()
                    ),
                )
            })?);
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:8080"
drain_timeout = "5s"
threads = 3
default_pool = "a"

[[pool]]
name = "a"
endpoints = [{ address = "http://127.0.0.1:9001" }, { address = "127.0.0.1:9002", weight = 3, id = "b2" }]

[[pool]]
name = "b"
policy = "round-robin"
endpoints = [{ address = "http://127.0.0.1:9003" }]

[[route]]
model = "m"
pool = "b"
"#;

    #[test]
    fn a_good_config_reads_whole() {
        let c = GatewayConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.threads, NonZeroUsize::new(3));
        assert_eq!(c.pools[0].policy, PolicyKind::DEFAULT.spec());
        assert_eq!(c.pools[0].endpoints[0].id.as_str(), "127.0.0.1:9001");
        assert_eq!(c.pools[0].endpoints[1].address, "http://127.0.0.1:9002");
        assert_eq!((c.pools[0].endpoints[1].id.as_str(), c.pools[0].endpoints[1].weight), ("b2", 3));
        assert_eq!(c.pools[1].policy, PolicyKind::RoundRobin.spec());
        assert_eq!(c.routes[0].model.as_deref(), Some("m"));
        assert_eq!(c.default_pool(), Some("a"));
    }

    fn error(text: &str) -> ConfigError {
        GatewayConfig::from_toml(text).unwrap_err()
    }

    #[test]
    fn a_pool_retries_by_its_retry_table_and_a_bad_field_names_its_line() {
        let c = GatewayConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.pools[1].retry, None, "off by default");
        let text = GOOD.replace(
            "name = \"b\"\n",
            "name = \"b\"\nretry = { attempts = 4, idempotent = [\"/inference.GRPCInferenceService/*\"] }\n",
        );
        let retry = GatewayConfig::from_toml(&text).unwrap().pools[1].retry.clone().unwrap();
        assert_eq!(retry.attempts, 4);
        assert!(retry.is_idempotent("/inference.GRPCInferenceService/ModelInfer"));
        assert!(!retry.is_idempotent("/other.Service/Write"));

        let table = |body: &str| {
            GOOD.replace(
                "endpoints = [{ address = \"http://127.0.0.1:9003\" }]\n",
                &format!("endpoints = [{{ address = \"http://127.0.0.1:9003\" }}]\n[pool.retry]\nidempotent = [\"/a.B/C\"]\n{body}\n"),
            )
        };
        let e = error(&table("attempts = 9"));
        assert_eq!((e.line, e.field.as_deref()), (Some(17), Some("pool[1].retry.attempts")), "{e}");
        assert!(e.message.contains("between 2 and 5"), "{e}");
        let e = error(&table("codes = [\"UNAVALABLE\"]"));
        assert_eq!((e.line, e.field.as_deref()), (Some(17), Some("pool[1].retry.codes")), "{e}");
        assert!(e.message.contains("UNAVALABLE"), "{e}");
        let e = error(&table("atempts = 2"));
        assert_eq!((e.line, e.field.as_deref()), (Some(17), Some("pool[1].retry.atempts")), "{e}");
        let e = error(&table("budget = { ttl = \"2m\" }"));
        assert_eq!((e.line, e.field.as_deref()), (Some(17), Some("pool[1].retry.budget.ttl")), "{e}");
        let e = error(&table("initial_backoff = \"soon\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(17), Some("pool[1].retry.initial_backoff")), "{e}");
        let e = error(&GOOD.replace("name = \"b\"\n", "name = \"b\"\nretry = 3\n"));
        assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].retry")), "{e}");
    }

    #[test]
    fn limits_read_with_defaults_and_a_bad_one_names_its_line() {
        use crate::gateway::limits::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS_PER_CONNECTION};
        let c = GatewayConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.limits, Limits::default());
        let text = format!(
            "{GOOD}\n[limits]\nmax_message_bytes = 1024\nmax_header_list_bytes = 4096\nmax_connections = 3\nheader_read_timeout = \"2s\"\n"
        );
        // [limits] is on line 20, its fields on 21 to 24.
        let c = GatewayConfig::from_toml(&text).unwrap();
        assert_eq!(c.limits.max_message_bytes, 1024);
        assert_eq!(c.limits.max_header_list_bytes, 4096);
        assert_eq!(c.limits.max_connections, 3);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_streams_per_connection, DEFAULT_MAX_STREAMS_PER_CONNECTION);
        assert_eq!(c.limits.idle_timeout, DEFAULT_IDLE_TIMEOUT);

        let e = error(&text.replace("max_connections = 3", "max_connections = 0"));
        assert_eq!((e.line, e.field.as_deref()), (Some(23), Some("limits.max_connections")), "{e}");
        let e = error(&text.replace("= 1024", "= 5000000000"));
        assert_eq!((e.line, e.field.as_deref()), (Some(21), Some("limits.max_message_bytes")), "{e}");
        let e = error(&text.replace("\"2s\"", "\"soon\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(24), Some("limits.header_read_timeout")), "{e}");
        let e = error(&text.replace("\"2s\"", "\"400days\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(24), Some("limits.header_read_timeout")), "{e}");
        let mut built = GatewayConfig::from_toml(GOOD).unwrap();
        built.limits.idle_timeout = Duration::ZERO;
        assert_eq!(built.validate().unwrap_err().field.as_deref(), Some("limits.idle_timeout"));
        built.limits = Limits { max_connections: 0, ..Limits::default() };
        assert_eq!(built.validate().unwrap_err().field.as_deref(), Some("limits.max_connections"));
        let e = error(&text.replace("\"2s\"", "\"0s\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(24), Some("limits.header_read_timeout")), "{e}");
        let e = error(&text.replace("max_connections", "max_conections"));
        assert_eq!(e.line, Some(23), "{e}");
        assert!(e.message.contains("unknown field `max_conections`"), "{e}");
        let e = error(&text.replace("= 4096", "= \"4k\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(22), Some("limits.max_header_list_bytes")), "{e}");
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let e = error(&GOOD.replace("\"round-robin\"", "\"fastest\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].policy")), "{e}");
        assert!(e.message.contains("least-connections"), "{e}");

        let e = error(&GOOD.replace("pool = \"b\"", "pool = \"c\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(18), Some("route[0].pool")), "{e}");

        let e = error(&GOOD.replace("http://127.0.0.1:9003", "ftp://x"));
        assert_eq!((e.line, e.field.as_deref()), (Some(14), Some("pool[1].endpoints[0].address")), "{e}");

        let e = error(&GOOD.replace("id = \"b2\"", "id = \"127.0.0.1:9001\""));
        assert_eq!(e.field.as_deref(), Some("pool[0].endpoints[1].id"), "{e}");

        let e = error(&GOOD.replace("name = \"b\"", "name = \"a\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(12), Some("pool[1].name")), "{e}");

        let e = error(&GOOD.replace("policy =", "polcy ="));
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("polcy"), "{e}");

        let e = error(&GOOD.replace("drain_timeout = \"5s\"", "drain_timeout = \"soon\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("drain_timeout")), "{e}");

        let e = error(&GOOD.replace("threads = 3", "threads = 0"));
        assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("threads")), "{e}");
        let e = error(&GOOD.replace("threads = 3", "threads = -1"));
        assert_eq!(e.line, Some(4), "{e}");
        let e = error(&GOOD.replace("threads = 3", "threads = 100000"));
        assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("threads")), "{e}");

        let e = error(&GOOD.replace("weight = 3", "weight = \"heavy\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(9), Some("pool[0].endpoints[1].weight")), "{e}");
        assert!(e.message.contains("heavy"), "{e}");
        assert!(e.to_string().contains("line 9 `pool[0].endpoints[1].weight`"), "{e}");
        let e = error(&GOOD.replace("threads = 3", "threads = \"many\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("threads")), "{e}");
        let e = error(&GOOD.replace("name = \"b\"", "name = 2"));
        assert_eq!((e.line, e.field.as_deref()), (Some(12), Some("pool[1].name")), "{e}");
        let e = error(&GOOD.replace("model = \"m\"", "model = [\"m\"]"));
        assert_eq!((e.line, e.field.as_deref()), (Some(17), Some("route[0].model")), "{e}");

        let e = error(&GOOD.replace("127.0.0.1:9002", "127.0.0.1:99999"));
        assert_eq!((e.line, e.field.as_deref()), (Some(9), Some("pool[0].endpoints[1].address")), "{e}");
        assert!(e.message.contains("port 99999 is out of range"), "{e}");
        let e = error(&GOOD.replace("127.0.0.1:8080", "127.0.0.1:99999"));
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("listen")), "{e}");
        assert!(e.message.contains("port 99999 is out of range"), "{e}");
        let c = GatewayConfig::from_toml(&GOOD.replace("127.0.0.1:8080", "localhost:8080")).unwrap();
        assert!(c.listen.is_some_and(|a| a.ip().is_loopback() && a.port() == 8080), "{c:?}");

        let e = error("[[pool]\nname = 1");
        assert_eq!(e.line, Some(1), "{e}");
        assert!(error("").message.contains("no pools"));
    }

    #[test]
    fn a_pool_names_how_long_an_attempt_waits_for_a_ping() {
        let c = GatewayConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.pools[1].probe_timeout, Some(DEFAULT_PROBE_TIMEOUT));
        let with =
            |value: &str| GOOD.replace("name = \"b\"\n", &format!("name = \"b\"\nprobe_timeout = {value}\n"));
        let c = GatewayConfig::from_toml(&with("\"20ms\"")).unwrap();
        assert_eq!(c.pools[1].probe_timeout, Some(Duration::from_millis(20)));
        let c = GatewayConfig::from_toml(&with("\"0s\"")).unwrap();
        assert_eq!(c.pools[1].probe_timeout, None);
        let e = GatewayConfig::from_toml(&with("\"soon\"")).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].probe_timeout")), "{e}");
        assert!(e.message.contains("0s"), "{e}");
        for out_of_range in ["\"100us\"", "\"21s\"", "\"100000000days\""] {
            let e = GatewayConfig::from_toml(&with(out_of_range)).unwrap_err();
            assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].probe_timeout")), "{e}");
            assert!(e.message.contains("outside 1ms to 20s"), "{e}");
        }
    }

    #[test]
    fn a_pool_names_its_endpoints_drain_timeout() {
        let c = GatewayConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.pools[0].drain_timeout, switchyard_discovery::drain::DEFAULT_DRAIN_TIMEOUT);
        let text = GOOD.replace("name = \"b\"\n", "name = \"b\"\ndrain_timeout = \"300ms\"\n");
        let c = GatewayConfig::from_toml(&text).unwrap();
        assert_eq!(c.pools[1].drain_timeout, Duration::from_millis(300));
        let e = error(&text.replace("\"300ms\"", "\"a while\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].drain_timeout")), "{e}");
    }

    #[test]
    fn a_pool_asks_for_out_of_band_load_reports_and_a_bad_interval_names_its_line() {
        let c = GatewayConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.pools[1].load_reports, None, "off by default");
        let text = GOOD.replace("name = \"b\"\n", "name = \"b\"\nload_reports = \"20ms\"\n");
        let c = GatewayConfig::from_toml(&text).unwrap();
        assert_eq!(c.pools[1].load_reports, Some(Duration::from_millis(20)));
        let e = error(&text.replace("\"20ms\"", "\"often\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].load_reports")), "{e}");
        let e = error(&text.replace("\"20ms\"", "\"1ms\""));
        assert_eq!(e.field.as_deref(), Some("pool[1].load_reports"), "{e}");
        assert!(e.to_string().contains("10ms"), "{e}");
    }

    #[test]
    fn a_pool_reads_its_own_keys_and_a_bad_one_names_its_line() {
        let text = GOOD.replace(
            "9003\" }]\n",
            "9003\" }]\n[pool.keys]\nsession_header = \"x-user\"\npriority_header = \"x-tier\"\nblock_tokens = 256\n",
        );
        // The lines: pool "b" is at 12, its [pool.keys] at 15, block_tokens at 18.
        let c = GatewayConfig::from_toml(&text).unwrap();
        let keys = &c.pools[1].keys;
        assert_eq!(keys.session_header.as_ref().map(|h| h.as_str()), Some("x-user"));
        assert_eq!(keys.priority_header.as_ref().map(|h| h.as_str()), Some("x-tier"));
        assert_eq!(keys.block_tokens, Some(256));
        assert!(c.pools[0].keys.is_empty());
        assert_eq!(c.keys_config().also_block_tokens().collect::<Vec<_>>(), [256]);

        for bad in ["block_tokens = 0", "block_tokens = -3", "block_tokens = 100000"] {
            let e = error(&text.replace("block_tokens = 256", bad));
            assert_eq!((e.line, e.field.as_deref()), (Some(18), Some("pool[1].keys.block_tokens")), "{e}");
            assert!(e.message.contains("not a block size"), "{e}");
        }
        let e = error(&text.replace("block_tokens = 256", "block_tokens = \"big\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(18), Some("pool[1].keys.block_tokens")), "{e}");
        let e = error(&text.replace("\"x-user\"", "\"x user\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(16), Some("pool[1].keys.session_header")), "{e}");
        let e = error(&text.replace("priority_header", "priority_heder"));
        assert_eq!(e.line, Some(17), "{e}");
        assert!(e.message.contains("priority_heder"), "{e}");
    }

    #[test]
    fn tls_sections_read_whole_and_their_errors_name_the_field_and_line() {
        let text = format!(
            "{GOOD}\n[tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\nreload_interval = \"1s\"\n"
        );
        let text = text.replace(
            "name = \"b\"\n",
            "name = \"b\"\ntls = { ca = \"ca.pem\", server_name = \"worker.internal\", cert = \"gw.crt\", key = \"gw.key\" }\n",
        );
        // Lines: pool "b" at 12, its tls at 13; [tls] at 21, reload_interval at 25.
        let c = GatewayConfig::from_toml(&text).unwrap();
        let tls = c.tls.as_ref().expect("[tls]");
        assert_eq!((tls.cert.to_str(), tls.key.to_str()), (Some("server.crt"), Some("server.key")));
        assert_eq!(tls.client_ca.as_deref().and_then(Path::to_str), Some("ca.pem"));
        assert_eq!(tls.reload_interval, Duration::from_secs(1));
        let pool_tls = c.pools[1].tls.as_ref().expect("pool tls");
        assert_eq!(pool_tls.server_name.as_deref(), Some("worker.internal"));
        assert_eq!(pool_tls.cert.as_deref().and_then(Path::to_str), Some("gw.crt"));
        assert!(c.pools[0].tls.is_none());

        let e = error(&text.replace("reload_interval = \"1s\"", "reload_interval = \"0s\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(25), Some("tls.reload_interval")), "{e}");
        let e = error(&text.replace(", key = \"gw.key\"", ""));
        assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].tls.key")), "{e}");
        assert!(e.message.contains("`cert` needs its `key`"), "{e}");
        let e = error(&text.replace("worker.internal", "not a name!"));
        assert_eq!((e.line, e.field.as_deref()), (Some(13), Some("pool[1].tls.server_name")), "{e}");
        let e = error(&text.replace("key = \"server.key\"\n", ""));
        assert_eq!(e.line, Some(21), "{e}");
        assert!(e.message.contains("key"), "{e}");
        let e = error(&text.replace("client_ca =", "client_cert ="));
        assert!(e.message.contains("client_cert"), "{e}");
    }

    #[test]
    fn an_admin_token_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "0123456789abcdef-token\n").unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, format!("admin_token_file = \"token\"\n{GOOD}")).unwrap();
        let c = GatewayConfig::load(&path).unwrap();
        assert_eq!(c.admin_token, Some(AdminToken::new("0123456789abcdef-token").unwrap()));
        std::fs::write(dir.path().join("token"), "short\n").unwrap();
        let e = GatewayConfig::load(&path).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("admin_token_file")), "{e}");
        assert!(e.message.contains("at least 16"), "{e}");
    }

    #[test]
    fn https_endpoints_are_endpoints() {
        let c = GatewayConfig::from_toml(&GOOD.replace("http://127.0.0.1:9003", "https://127.0.0.1:9003"))
            .unwrap();
        assert_eq!(c.pools[1].endpoints[0].address, "https://127.0.0.1:9003");
    }

    #[test]
    fn flags_make_one_default_pool() {
        let c = GatewayConfig::single_pool(&["127.0.0.1:9001".into()], PolicyKind::Random).unwrap();
        assert_eq!(c.pools[0].name, "default");
        assert_eq!(c.pools[0].endpoints[0].id.as_str(), "127.0.0.1:9001");
        assert_eq!(c.default_pool(), Some("default"));
        let e = GatewayConfig::single_pool(&["http://x:1/path".into()], PolicyKind::Random).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("--backend"));
        assert!(GatewayConfig::single_pool(&[], PolicyKind::Random).is_err());
        let e = GatewayConfig::single_pool(&["127.0.0.1:99999".into()], PolicyKind::Random).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("--backend"));
        assert!(e.message.contains("port 99999 is out of range"), "{e}");
    }
}
