//! What a client may ask of the gateway's listener, and the refusals when it asks for more: the
//! `[limits]` of the config ([`Limits`]), the count of every refusal by reason (`Refusals`,
//! `switchyard_gateway_refused_total{reason}` on `/metrics`), and the reading of gRPC's
//! length prefixes that refuses an oversize message before it is forwarded (`MessageLimit`).
//!
//! Where each limit acts:
//!
//! - `max_connections`: the acceptor closes a connection past it at once (it counts the
//!   connections its serving threads hold, released when one ends);
//! - `header_read_timeout`: a connection that has not sent the HTTP/2 preface and its first
//!   request's headers within it is closed (GOAWAY if the preface came), as a slow client
//!   (slowloris) would hold it;
//! - `idle_timeout`: a connection with no stream open for that long gets GOAWAY and closes
//!   (between one and two times the timeout after its last stream ended: the check runs once
//!   per period, so that calls pay nothing for it);
//! - `max_header_list_bytes` and `max_streams_per_connection`: HTTP/2 settings the gateway
//!   announces and h2 enforces (headers past the size are answered `431` and their stream reset,
//!   `header_list_too_large`; a stream past the count is reset with `REFUSED_STREAM`, which gRPC
//!   clients retry, `stream_limit`). h2 does both without the gateway's service; they are
//!   counted from the frames h2 writes (see `sent_frames` for how, and the one 431 it can miss);
//! - `max_message_bytes`: a request message whose gRPC length prefix is larger is refused with
//!   `RESOURCE_EXHAUSTED` as soon as its five-byte prefix arrives: its bytes are not buffered,
//!   and not forwarded (the endpoint's stream, if opened, is reset). Once the response has begun
//!   (a message late in a bidirectional stream), the endpoint's stream is reset and the call
//!   ends with the `UNAVAILABLE` trailers of an endpoint that failed mid-way. Responses are not
//!   checked.
//!
//! HTTP/2 abuse:
//!
//! - rapid reset (CVE-2023-44487), the client opening streams and resetting them at once, so
//!   that the gateway does the work of each and the client none: h2 ends a connection with GOAWAY
//!   `ENHANCE_YOUR_CALM` past 20 streams reset before the gateway accepted them (`h2_calm`); for
//!   streams reset once accepted, which h2 does not count, the gateway keeps its own count and
//!   ends the connection the same way once at least [`MIN_PREMATURE_RESETS`] streams, and more
//!   than half of all, were reset before their answers (`rapid_reset`).
//!   A call whose client reset it is dropped before it is polled again, so it forwards nothing;
//! - a client that makes the gateway reset more than 1,024 streams for its protocol errors gets
//!   GOAWAY `ENHANCE_YOUR_CALM` from h2 (`h2_calm`);
//! - CONTINUATION floods: h2 counts the frames of one header block against the header list size
//!   and ends the connection past it (`h2_calm` or `protocol_error`, by the GOAWAY's code);
//! - SETTINGS and PING floods: h2 holds one SETTINGS ACK and one PING ACK at a time and reads
//!   nothing more until it has written them, so a flood of either queues nothing; past
//!   1,000 of them in a second the connection is closed (`control_flood`, see `flood`);
//! - malformed requests and other breaches of HTTP/2: h2 resets the stream, or ends the
//!   connection with GOAWAY, with the error code the protocol gives (`protocol_error`, counted
//!   from the frames h2 writes, see `sent_frames`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Key, Label, Recorder, Unit};
use switchyard_telemetry::ScrapeSource;

/// Largest gRPC message a client may send: 64 MiB, what the project's worker and load
/// generator accept (a long prompt, or a KServe tensor of image data, passes 4 MiB, the default
/// receive limit of grpc-go and tonic).
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 64 << 20;
/// Largest header list (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`): 16 KiB, hyper's default.
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// Streams one client connection may have open at once: 1,024. hyper's default (200) would
/// queue the requests of a client that multiplexes everything over one connection, as tonic's
/// `Channel` does, behind the gateway rather than at the replicas.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Client connections open at once on the listener: 10,000 (mind the process's file
/// descriptor limit, `ulimit -n`, which must be above it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time a new connection has to send the HTTP/2 preface and its first request's headers: 30 s,
/// hyper's header read timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a connection may stay open with no stream: 5 min (nginx keeps an idle HTTP/2
/// connection 3 min, Envoy 1 h). gRPC clients reconnect on their next call.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The limits of the gateway's listener (`[limits]` in the config); see the module docs for
/// where each acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest gRPC message (its length prefix) a client may send.
    pub max_message_bytes: u32,
    /// Largest header list a client may send (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_bytes: u32,
    /// Streams one client connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
    /// Client connections open at once on the listener.
    pub max_connections: usize,
    /// Time a connection has to send the preface and its first request's headers.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no stream.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_header_list_bytes: DEFAULT_MAX_HEADER_LIST_BYTES,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Why the gateway refused a client something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A connection past `max_connections`, closed at once.
    ConnectionLimit,
    /// A connection without its preface and first headers within `header_read_timeout`.
    HeaderReadTimeout,
    /// A connection with no stream for `idle_timeout`, sent GOAWAY.
    Idle,
    /// A message longer than `max_message_bytes`, refused with `RESOURCE_EXHAUSTED`.
    MessageTooLarge,
    /// A connection h2 ended with GOAWAY `ENHANCE_YOUR_CALM` (streams reset before they were
    /// accepted, too many errors).
    H2Calm,
    /// A connection whose client reset most of its streams before their answers (rapid reset of
    /// accepted streams), ended with GOAWAY `ENHANCE_YOUR_CALM`.
    RapidReset,
    /// A connection that sent PING or SETTINGS frames past their limit, closed.
    ControlFlood,
    /// A request whose headers passed `max_header_list_bytes`, answered `431` by h2.
    HeaderListTooLarge,
    /// A stream past `max_streams_per_connection`, reset `REFUSED_STREAM` by h2.
    StreamLimit,
    /// A stream or connection h2 ended for the client's breach of HTTP/2 (RST_STREAM or GOAWAY
    /// with `PROTOCOL_ERROR` and the like).
    ProtocolError,
}

impl Refusal {
    const ALL: [Refusal; 10] = [
        Self::ConnectionLimit,
        Self::HeaderReadTimeout,
        Self::Idle,
        Self::MessageTooLarge,
        Self::H2Calm,
        Self::RapidReset,
        Self::ControlFlood,
        Self::HeaderListTooLarge,
        Self::StreamLimit,
        Self::ProtocolError,
    ];

    /// The `reason` label.
    fn label(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::Idle => "idle_timeout",
            Self::MessageTooLarge => "message_too_large",
            Self::H2Calm => "h2_calm",
            Self::RapidReset => "rapid_reset",
            Self::ControlFlood => "control_flood",
            Self::HeaderListTooLarge => "header_list_too_large",
            Self::StreamLimit => "stream_limit",
            Self::ProtocolError => "protocol_error",
        }
    }
}

/// Counter: what the gateway's listener refused, `{reason}`.
pub const REFUSED_TOTAL: &str = "switchyard_gateway_refused_total";

/// The refusals of one gateway, by reason; published on `/metrics` as
/// [`REFUSED_TOTAL`]`{reason}` at each scrape. Counting touches one atomic, on refusals only.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
}

impl Refusals {
    /// Counts one refusal.
    pub(crate) fn count(&self, why: Refusal) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The refusals counted for `why`.
    #[cfg(test)]
    pub(crate) fn get(&self, why: Refusal) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }
}

impl ScrapeSource for Refusals {
    fn publish(&self, recorder: &dyn Recorder) {
        recorder.describe_counter(
            REFUSED_TOTAL.into(),
            Some(Unit::Count),
            "Connections and calls the gateway's listener refused, by reason.".into(),
        );
        static METADATA: metrics::Metadata<'static> =
            metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        for why in Refusal::ALL {
            let key = Key::from_parts(REFUSED_TOTAL, vec![Label::new("reason", why.label())]);
            recorder
                .register_counter(&key, &METADATA)
                .absolute(self.counts[why as usize].load(Ordering::Relaxed));
        }
    }
}

/// Reads the gRPC length prefixes of a request body as its frames go by (one byte of the
/// five-byte prefix at a time, skipping each message's payload by its length), and says when
/// one declares more than the limit. A few comparisons per frame, no buffering; eight bytes of
/// state, as every request body carries it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageLimit {
    /// Prefix bytes still to read of the next message (5 at a message's start); 0 while its
    /// payload goes by.
    prefix_left: u8,
    /// While the prefix is read, the length read so far; then the payload bytes still to come.
    count: u32,
}

impl MessageLimit {
    /// At the start of a body.
    pub(crate) fn new() -> Self {
        Self { prefix_left: 5, count: 0 }
    }

    /// Reads `data`, the body's next bytes: `Err(length)` when a message declares `length`
    /// bytes, over `max`.
    pub(crate) fn feed(&mut self, data: &[u8], max: u32) -> Result<(), u32> {
        let mut rest = data;
        while !rest.is_empty() {
            if self.prefix_left == 0 {
                let skip = rest.len().min(self.count as usize);
                // `skip` <= `count`, a u32.
                self.count -= skip as u32;
                rest = &rest[skip..];
                if self.count == 0 {
                    self.prefix_left = 5;
                }
                continue;
            }
            let Some((&byte, tail)) = rest.split_first() else { break };
            rest = tail;
            // The first byte is the compression flag; the four after it, the length (`count`
            // is 0 at a prefix's start, so four bytes shifted in do not overflow it).
            if self.prefix_left < 5 {
                self.count = (self.count << 8) | u32::from(byte);
            }
            self.prefix_left -= 1;
            if self.prefix_left == 0 {
                if self.count > max {
                    return Err(self.count);
                }
                if self.count == 0 {
                    self.prefix_left = 5;
                }
            }
        }
        Ok(())
    }
}

/// Streams a client may reset before their answers, on one connection, before the ratio below
/// is applied.
pub const MIN_PREMATURE_RESETS: u32 = 100;

/// Whether a client that has opened `accepted` streams and reset `premature` of them before
/// their answers resets streams as an attack does (rapid reset: the gateway does the work of each
/// stream, the client none): at least [`MIN_PREMATURE_RESETS`] of them, and more than half of
/// its streams. A client whose calls mostly end (or are cancelled after their answer began, as a
/// stopped generation is) never meets it. Envoy ends connections by the same rule (its
/// `premature_reset_total_stream_count`, 500, and half of them reset within a second).
pub(crate) fn is_rapid_reset(accepted: u32, premature: u32) -> bool {
    premature >= MIN_PREMATURE_RESETS && u64::from(premature) * 2 > u64::from(accepted)
}

/// What one client connection's streams share with it: how many are open (for the idle
/// timeout), how many the client reset before their answers (rapid reset), which one last
/// sent a message over the limit (for its answer), and when something that can end a stream
/// early reached h2 (so that a call asks h2 about its stream's reset only then). One allocation
/// per connection; a call touches it with one atomic add and one subtract, and a load per poll.
#[derive(Debug)]
pub(crate) struct ConnectionWatch {
    open_streams: AtomicUsize,
    /// A count that moves (wrapping) before anything that can end a stream of the connection
    /// before its answer reaches h2 (see [`stream_events`](Self::stream_events)).
    stream_events: AtomicU32,
    premature_resets: AtomicU32,
    /// The number of the last stream whose request declared a message over the limit (0: none).
    oversize: AtomicU32,
    /// The id of the last stream the gateway accepted (0: none yet); ids rise in the order
    /// streams are accepted.
    last_accepted: AtomicU32,
    refusals: Arc<Refusals>,
    max_message_bytes: u32,
}

impl ConnectionWatch {
    pub(crate) fn new(refusals: Arc<Refusals>, max_message_bytes: u32) -> Self {
        Self {
            open_streams: AtomicUsize::new(0),
            stream_events: AtomicU32::new(0),
            premature_resets: AtomicU32::new(0),
            oversize: AtomicU32::new(0),
            last_accepted: AtomicU32::new(0),
            refusals,
            max_message_bytes,
        }
    }

    /// A count that moves before h2 can learn of anything that ends a stream of the connection
    /// before its answer: it moves as the client's RST_STREAM, GOAWAY, PRIORITY and PUSH_PROMISE
    /// frames are read (before h2 decodes them), as the connection's socket reaches its end or
    /// fails, as a write the socket held back goes through (h2 may have left frames read but
    /// not decoded while it waited), and as the gateway shuts the connection down or drops it.
    /// A call that has seen h2's answer about its stream's reset (`poll_reset`) need not ask
    /// again, taking h2's lock, until this count has moved: h2 wakes the call's task when the
    /// stream ends, and the count moved before it did.
    pub(crate) fn stream_events(&self) -> u32 {
        self.stream_events.load(Ordering::Relaxed)
    }

    /// Something that can end a stream before its answer is about to reach h2 (see
    /// [`stream_events`](Self::stream_events)).
    pub(crate) fn stream_event(&self) {
        self.stream_events.fetch_add(1, Ordering::Relaxed);
    }

    /// The client reset a stream before its answer.
    pub(crate) fn reset_early(&self) {
        self.premature_resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Streams the client reset before their answers.
    pub(crate) fn premature_resets(&self) -> u32 {
        self.premature_resets.load(Ordering::Relaxed)
    }

    /// The gateway accepted the stream `id` (ids rise from one accepted stream to the next).
    pub(crate) fn accepted(&self, id: u32) {
        self.last_accepted.store(id, Ordering::Relaxed);
    }

    /// Whether the gateway has accepted the stream `id`, or one after it: a response h2 writes
    /// on a stream that is not is h2's own (see `sent_frames`).
    pub(crate) fn is_accepted(&self, id: u32) -> bool {
        id <= self.last_accepted.load(Ordering::Relaxed)
    }

    /// Counts one refusal of this gateway.
    pub(crate) fn refused(&self, why: Refusal) {
        self.refusals.count(why);
    }

    /// Streams open on the connection.
    pub(crate) fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// A stream opens; it is counted open until the guard is dropped.
    pub(crate) fn stream(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// The limit of the messages of the request of `stream`, the connection's count of the
    /// streams it accepted when it accepted this one (from 1; a number rather than the stream's
    /// id, which h2 gives under its lock).
    pub(crate) fn message_limit(self: &Arc<Self>, stream: u32) -> MessageWatch {
        MessageWatch { limit: MessageLimit::new(), stream, connection: self.clone() }
    }

    /// Whether the request of `stream` (numbered as for [`message_limit`](Self::message_limit))
    /// sent a message over the limit.
    pub(crate) fn is_oversize(&self, stream: u32) -> bool {
        self.oversize.load(Ordering::Relaxed) == stream
    }
}

/// One open stream of a [`ConnectionWatch`].
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<ConnectionWatch>);

impl StreamGuard {
    /// The connection's watch.
    pub(crate) fn connection(&self) -> &ConnectionWatch {
        &self.0
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The [`MessageLimit`] of one request body, which tells its connection when it is passed.
#[derive(Debug)]
pub(crate) struct MessageWatch {
    limit: MessageLimit,
    stream: u32,
    connection: Arc<ConnectionWatch>,
}

impl MessageWatch {
    /// Reads the body's next bytes: false (and the refusal counted, the stream marked) when a
    /// message declares more than the limit.
    pub(crate) fn feed(&mut self, data: &[u8]) -> bool {
        let max = self.connection.max_message_bytes;
        match self.limit.feed(data, max) {
            Ok(()) => true,
            Err(length) => {
                tracing::debug!(length, max, "refusing a message over the limit");
                self.connection.oversize.store(self.stream, Ordering::Relaxed);
                self.connection.refused(Refusal::MessageTooLarge);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn messages_within_the_limit_pass_whatever_their_framing() {
        let mut body = message(10);
        body.extend(message(0));
        body.extend(message(100));
        // Whole, and one byte at a time (prefixes split across frames).
        assert_eq!(MessageLimit::new().feed(&body, 100), Ok(()));
        let mut limit = MessageLimit::new();
        for byte in &body {
            assert_eq!(limit.feed(std::slice::from_ref(byte), 100), Ok(()));
        }
    }

    #[test]
    fn a_prefix_over_the_limit_is_refused_as_soon_as_it_is_read() {
        let mut body = message(10);
        body.extend(message(101));
        let mut limit = MessageLimit::new();
        // The prefix of the second message ends at byte 15 + 5: refused there, before any of
        // its payload.
        assert_eq!(limit.feed(&body[..19], 100), Ok(()));
        assert_eq!(limit.feed(&body[19..20], 100), Err(101));
        let mut huge = vec![1];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(MessageLimit::new().feed(&huge, 4 << 20), Err(u32::MAX));
    }

    #[test]
    fn rapid_reset_is_most_streams_reset_early_past_a_floor() {
        assert!(!is_rapid_reset(99, 99), "below the floor");
        assert!(is_rapid_reset(100, 100));
        assert!(is_rapid_reset(199, 100));
        assert!(!is_rapid_reset(200, 100), "half is not more than half");
        assert!(!is_rapid_reset(100_000, 40_000));
        assert!(!is_rapid_reset(u32::MAX, u32::MAX / 2));
    }

    #[test]
    fn refusals_are_published_by_reason() {
        let refusals = Refusals::default();
        refusals.count(Refusal::Idle);
        refusals.count(Refusal::Idle);
        refusals.count(Refusal::MessageTooLarge);
        let registry = switchyard_telemetry::MetricsRegistry::new();
        registry.add_source(std::sync::Arc::new(refusals));
        let text = registry.render();
        assert!(text.contains("switchyard_gateway_refused_total{reason=\"idle_timeout\"} 2"), "{text}");
        assert!(text.contains("switchyard_gateway_refused_total{reason=\"message_too_large\"} 1"), "{text}");
        assert!(text.contains("switchyard_gateway_refused_total{reason=\"connection_limit\"} 0"), "{text}");
    }
}
