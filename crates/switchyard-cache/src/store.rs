//! Where answers are kept: a byte-bounded moka cache of [`Stored`] answers by [`Key`], and the
//! counters of what the cache did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;

use crate::body::ReplayBody;
use crate::config::CacheConfig;
use crate::grpc::strip_per_call;

/// What identifies an answer: the method and the request's bytes, exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) method: String,
    pub(crate) request: Bytes,
}

/// A whole answer, without what belonged to the one call that fetched it.
#[derive(Debug)]
pub(crate) struct Stored {
    status: http::StatusCode,
    version: http::Version,
    headers: http::HeaderMap,
    data: Bytes,
    trailers: Option<http::HeaderMap>,
    expires_at: Instant,
    /// Its weight in the cache: body, headers and key bytes, plus a fixed overhead.
    weight: u32,
}

/// Bytes an entry costs beside its contents (the entry, its `Arc`s, moka's bookkeeping).
const ENTRY_OVERHEAD: usize = 128;

fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum()
}

impl Stored {
    pub(crate) fn new(
        parts: &http::response::Parts,
        data: Bytes,
        trailers: Option<&http::HeaderMap>,
        expires_at: Instant,
        key: &Key,
    ) -> Self {
        let mut headers = parts.headers.clone();
        strip_per_call(&mut headers);
        let trailers = trailers.map(|t| {
            let mut t = t.clone();
            strip_per_call(&mut t);
            t
        });
        let bytes = ENTRY_OVERHEAD
            + key.method.len()
            + key.request.len()
            + data.len()
            + header_bytes(&headers)
            + trailers.as_ref().map_or(0, header_bytes);
        Self {
            status: parts.status,
            version: parts.version,
            headers,
            data,
            trailers,
            expires_at,
            weight: u32::try_from(bytes).unwrap_or(u32::MAX),
        }
    }

    /// Whether it may still be served at `now`.
    pub(crate) fn fresh(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// A response carrying a copy of the answer (the bytes are shared, not copied).
    pub(crate) fn to_response<B: ReplayBody>(&self) -> http::Response<B> {
        let mut frames = Vec::with_capacity(2);
        if !self.data.is_empty() {
            frames.push(Frame::data(self.data.clone()));
        }
        if let Some(trailers) = &self.trailers {
            frames.push(Frame::trailers(trailers.clone()));
        }
        let mut response = http::Response::new(B::replay(frames, None));
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// What the cache has done since it was built.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) response_timed_out: AtomicU64,
}

/// A snapshot of a cache's counters and size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests answered without an upstream call of their own: from a stored answer, or from
    /// the one call of identical requests in flight.
    pub hits: u64,
    /// Requests of a cached method that made an upstream call.
    pub misses: u64,
    /// Requests of a cached method that went upstream without the cache: their predicate said
    /// no, their body was larger than the bound or a stream, or the answer they would have
    /// shared could not be (too large, or a stream).
    pub bypassed: u64,
    /// Requests refused because their body did not end within the
    /// [`read_timeout`](CacheConfig::read_timeout) (or their own deadline): `DEADLINE_EXCEEDED`.
    pub timed_out: u64,
    /// Upstream calls given up on because their answer did not arrive whole within the
    /// [`response_timeout`](CacheConfig::response_timeout) (or the deadline of the request that
    /// made the call): one per call, whose waiters all got `DEADLINE_EXCEEDED`; nothing stored.
    pub response_timed_out: u64,
    /// Answers stored now (moka's count, which settles as its pending work runs).
    pub entries: u64,
    /// Bytes they weigh: never above [`CacheConfig::max_bytes`] once pending work has run.
    pub bytes: u64,
}

/// The store behind every service one [`CacheLayer`](crate::CacheLayer) builds.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) cache: moka::future::Cache<Key, Arc<Stored>>,
    pub(crate) counters: Arc<Counters>,
}

impl Store {
    pub(crate) fn new(config: &CacheConfig) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_key: &Key, value: &Arc<Stored>| value.weight)
            // moka's clock is its own; freshness is also checked on tokio's (`Stored::fresh`), so
            // that the paused clock drives it in tests.
            .time_to_live(config.ttl)
            .build();
        Self { cache, counters: Arc::default() }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            bypassed: self.counters.bypassed.load(Ordering::Relaxed),
            timed_out: self.counters.timed_out.load(Ordering::Relaxed),
            response_timed_out: self.counters.response_timed_out.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
        }
    }
}

pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
