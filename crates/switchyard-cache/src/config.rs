//! What the cache stores, for how long, and which requests it may answer: [`CacheConfig`] and
//! its [`CacheRule`]s.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Decides whether one request may be answered from the cache: given its request head and its
/// whole body (gRPC-framed; [`first_message`](crate::first_message) gives the message).
pub type Predicate = Arc<dyn Fn(&http::request::Parts, &[u8]) -> bool + Send + Sync>;

/// Turns a request body into the bytes of its key: a canonical form, for encoders that may
/// write the same request in more than one way (protobuf map fields come in any order);
/// `None` leaves the request uncached.
pub type KeyFn = Arc<dyn Fn(&bytes::Bytes) -> Option<bytes::Bytes> + Send + Sync>;

/// Opts one gRPC method into the cache.
#[derive(Clone)]
pub struct CacheRule {
    /// The method's path, `/package.Service/Method`.
    pub method: String,
    /// Which of its requests may be cached; `None`: all of them.
    pub when: Option<Predicate>,
    /// The key's request bytes; `None`: the body exactly as it came.
    pub key: Option<KeyFn>,
    /// Cache answers of more than one message (a server stream) too. Off by default: a stream
    /// is answered, not stored.
    pub streams: bool,
    /// Cache answers whose `grpc-status` is not OK too (an error the server gives for this
    /// request whatever the time, such as `INVALID_ARGUMENT`). Off by default: an error reaches
    /// every coalesced caller and is not stored.
    pub errors: bool,
}

impl CacheRule {
    /// Every request of `method` (`/package.Service/Method`), unary answers with status OK only.
    pub fn method(method: impl Into<String>) -> Self {
        Self { method: method.into(), when: None, key: None, streams: false, errors: false }
    }

    /// The same rule, for the requests `predicate` accepts only (e.g. `temperature` 0).
    pub fn when(
        mut self,
        predicate: impl Fn(&http::request::Parts, &[u8]) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.when = Some(Arc::new(predicate));
        self
    }

    /// The same rule, keying each request by `canonical(body)` rather than by its body as it came
    /// (see [`KeyFn`]).
    pub fn key_with(
        mut self,
        canonical: impl Fn(&bytes::Bytes) -> Option<bytes::Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.key = Some(Arc::new(canonical));
        self
    }

    /// The same rule, storing streamed answers too.
    pub fn with_streams(mut self) -> Self {
        self.streams = true;
        self
    }

    /// The same rule, storing error answers too.
    pub fn with_errors(mut self) -> Self {
        self.errors = true;
        self
    }
}

impl fmt::Debug for CacheRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheRule")
            .field("method", &self.method)
            .field("when", &self.when.as_ref().map(|_| "predicate"))
            .field("key", &self.key.as_ref().map(|_| "canonical form"))
            .field("streams", &self.streams)
            .field("errors", &self.errors)
            .finish()
    }
}

/// The cache's settings: its bound, the time an answer stays fresh, the largest request and
/// answer it reads, and the methods it serves.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Bytes the stored answers may take, keys included (moka's weighted capacity): 64 MiB.
    pub max_bytes: u64,
    /// How long a stored answer is served: 60 s.
    pub ttl: Duration,
    /// Largest request body read to make a key: 64 KiB. A larger request goes upstream
    /// unchanged, uncached.
    pub max_request_bytes: usize,
    /// Largest answer stored: 1 MiB. A larger one goes to its caller unchanged, unstored.
    pub max_response_bytes: usize,
    /// How long the cache waits for a request body to end (or to pass
    /// [`max_request_bytes`](Self::max_request_bytes)) before it gives up: 5 s, as the key
    /// layer's `peek_timeout`, or the request's own [`Deadline`](switchyard_core::Deadline) if
    /// sooner. A client that stalls its body is refused with `DEADLINE_EXCEEDED` then, rather
    /// than holding its caller (and the cache's read) without end.
    pub read_timeout: Duration,
    /// How long the one upstream call of a group of identical requests may take to deliver an
    /// answer the cache means to store (its head and its whole body, up to
    /// [`max_response_bytes`](Self::max_response_bytes)): 60 s, or the deadline of the request
    /// that made the call if sooner. Past it the call is dropped, nothing is stored, and every
    /// caller waiting on it (the one that made it included) gets `DEADLINE_EXCEEDED`, counted
    /// in [`CacheStats::response_timed_out`](crate::CacheStats::response_timed_out). A stream
    /// whose rule says [`streams`](CacheRule::streams) is collected whole before anyone gets it,
    /// so it must end within this time too: raise it for long streams. An answer the cache
    /// will not store (a stream it was not told to store, one larger than the bound) is bounded
    /// only until the cache sees that; the rest reaches its caller as it comes.
    pub response_timeout: Duration,
    /// The methods the cache serves; a request of any other goes upstream untouched.
    pub rules: Vec<CacheRule>,
}

/// [`CacheConfig::max_bytes`] by default.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// [`CacheConfig::ttl`] by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// [`CacheConfig::max_request_bytes`] by default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// [`CacheConfig::max_response_bytes`] by default.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// [`CacheConfig::read_timeout`] by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// [`CacheConfig::response_timeout`] by default.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            ttl: DEFAULT_TTL,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            read_timeout: DEFAULT_READ_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            rules: Vec::new(),
        }
    }
}

impl CacheConfig {
    /// The defaults, serving `rules`.
    pub fn new(rules: impl IntoIterator<Item = CacheRule>) -> Self {
        Self { rules: rules.into_iter().collect(), ..Self::default() }
    }

    /// The same settings, waiting at most `timeout` for a request body (see
    /// [`read_timeout`](Self::read_timeout)).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The same settings, waiting at most `timeout` for an answer to store (see
    /// [`response_timeout`](Self::response_timeout)).
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The rule for `path`, if the cache serves that method.
    pub(crate) fn rule(&self, path: &str) -> Option<&CacheRule> {
        self.rules.iter().find(|r| r.method == path)
    }
}
