//! The errors Switchyard's layers raise, typed where they arise, and the one function that turns
//! them into the gRPC status a client sees.
//!
//! A layer that cannot serve a request (no endpoint, overloaded, shed, past its deadline, the
//! endpoint unreachable, the request malformed) fails with an [`Error`]: an [`ErrorKind`] that
//! says what happened, the pool and endpoint it happened in, and the underlying cause. The cause
//! (an OS error, a connection error naming internal addresses) is for the log; the
//! [`Status`] sent to the client, built by [`Error::status`] or [`status_of`], carries the code
//! the kind maps to and a message naming only the pool and endpoint id.
//!
//! | kind | gRPC code | retry pushback |
//! | --- | --- | --- |
//! | [`NoEndpoint`](ErrorKind::NoEndpoint), [`NoneFits`](ErrorKind::NoneFits), [`ConnectFailed`](ErrorKind::ConnectFailed), [`Upstream`](ErrorKind::Upstream) | `UNAVAILABLE` | |
//! | [`Overloaded`](ErrorKind::Overloaded), [`Shed`](ErrorKind::Shed) | `RESOURCE_EXHAUSTED` | `grpc-retry-pushback-ms` when known |
//! | [`TooLarge`](ErrorKind::TooLarge) | `RESOURCE_EXHAUSTED` | |
//! | [`DeadlineExceeded`](ErrorKind::DeadlineExceeded) | `DEADLINE_EXCEEDED` | |
//! | [`InvalidRequest`](ErrorKind::InvalidRequest) | `INVALID_ARGUMENT` | |
//! | [`NoRoute`](ErrorKind::NoRoute) | `UNIMPLEMENTED` | |
//! | anything else | `UNKNOWN` ("internal error") | |

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use crate::EndpointId;
use crate::outcome::RETRY_PUSHBACK_HEADER;

/// A boxed error, as tower's `BoxError`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code of a `grpc-status` value; `UNKNOWN` for a number that is no code.
    pub fn from_i32(code: i32) -> Self {
        use Code::*;
        match code {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The code as `grpc-status` carries it.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// What went wrong, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The pool has no endpoint (discovery found none, or all were removed).
    NoEndpoint,
    /// The pool has endpoints, but the policy found none fit for this request.
    NoneFits,
    /// The pool or endpoint is at its limit; retry after `retry_after`, if known.
    Overloaded {
        /// How long the client should wait before retrying.
        retry_after: Option<Duration>,
    },
    /// Admission control refused the request to protect the others; retry after `retry_after`.
    Shed {
        /// How long the client should wait before retrying.
        retry_after: Option<Duration>,
    },
    /// The request's deadline passed before it could be served.
    DeadlineExceeded,
    /// The request never reached the endpoint: its connection could not be opened, or had
    /// closed (or been told to go away) before the request's stream opened.
    ConnectFailed,
    /// The endpoint's connection failed while the request was under way.
    Upstream,
    /// The request is malformed; the reason says how (it must not quote internal detail).
    InvalidRequest(Cow<'static, str>),
    /// The request asks for more than a configured bound (bytes to read, a budget).
    TooLarge(Cow<'static, str>),
    /// No route takes the request.
    NoRoute(Cow<'static, str>),
}

/// An error raised by a Switchyard layer: its kind, where it happened, and its cause.
///
/// Its `Display` is the message a client may see; the cause, reachable through
/// [`std::error::Error::source`], is for the log only.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    pool: Option<Arc<str>>,
    endpoint: Option<EndpointId>,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind`, in no particular pool.
    pub fn new(kind: ErrorKind) -> Self {
        Self { kind, pool: None, endpoint: None, source: None }
    }

    /// The same error, in pool `pool`.
    pub fn in_pool(mut self, pool: impl Into<Arc<str>>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// The same error, on endpoint `endpoint`.
    pub fn at_endpoint(mut self, endpoint: EndpointId) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// The same error, caused by `source` (logged, never sent to the client).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The pool it happened in, if known.
    pub fn pool(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    /// The endpoint it happened on, if any.
    pub fn endpoint(&self) -> Option<&EndpointId> {
        self.endpoint.as_ref()
    }

    /// The gRPC status the client gets.
    pub fn status(&self) -> Status {
        let (code, retry_after) = match &self.kind {
            ErrorKind::NoEndpoint | ErrorKind::NoneFits | ErrorKind::ConnectFailed | ErrorKind::Upstream => {
                (Code::Unavailable, None)
            }
            ErrorKind::Overloaded { retry_after } | ErrorKind::Shed { retry_after } => {
                (Code::ResourceExhausted, *retry_after)
            }
            ErrorKind::TooLarge(_) => (Code::ResourceExhausted, None),
            ErrorKind::DeadlineExceeded => (Code::DeadlineExceeded, None),
            ErrorKind::InvalidRequest(_) => (Code::InvalidArgument, None),
            ErrorKind::NoRoute(_) => (Code::Unimplemented, None),
        };
        Status { code, message: self.to_string(), retry_after }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pool, &self.endpoint) {
            (Some(pool), Some(endpoint)) => write!(f, "pool {pool:?} endpoint {:?}: ", endpoint.as_str())?,
            (Some(pool), None) => write!(f, "pool {pool:?}: ")?,
            (None, Some(endpoint)) => write!(f, "endpoint {:?}: ", endpoint.as_str())?,
            (None, None) => {}
        }
        match &self.kind {
            ErrorKind::NoEndpoint => f.write_str("no endpoint available"),
            ErrorKind::NoneFits => f.write_str("no endpoint fits the request"),
            ErrorKind::Overloaded { .. } => f.write_str("overloaded"),
            ErrorKind::Shed { .. } => f.write_str("request shed to protect the others"),
            ErrorKind::DeadlineExceeded => f.write_str("deadline exceeded"),
            ErrorKind::ConnectFailed => f.write_str("unreachable"),
            ErrorKind::Upstream => f.write_str("connection failed during the call"),
            ErrorKind::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            ErrorKind::TooLarge(why) => write!(f, "request too large: {why}"),
            ErrorKind::NoRoute(why) => write!(f, "no route: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A gRPC status to answer a client with: a code, a message, and the pushback for retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The code.
    pub code: Code,
    /// The message (`grpc-message`).
    pub message: String,
    /// Sent as `grpc-retry-pushback-ms`, when set.
    pub retry_after: Option<Duration>,
}

impl Status {
    /// A trailers-only gRPC response carrying this status, with an empty body.
    pub fn to_http<B: Default>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", http::HeaderValue::from(self.code.as_i32()));
        if let Ok(message) = http::HeaderValue::from_str(&percent_encode(&self.message)) {
            headers.insert("grpc-message", message);
        }
        if let Some(after) = self.retry_after {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            headers.insert(RETRY_PUSHBACK_HEADER, http::HeaderValue::from(ms));
        }
        response
    }
}

/// The status a client gets for `error`: the first [`Error`] in its chain decides; an error
/// with none (a bug, or a layer that does not type its errors) is `UNKNOWN` with a fixed
/// message, its text going to the log only.
pub fn status_of(error: &(dyn std::error::Error + 'static)) -> Status {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<Error>() {
            return e.status();
        }
        next = e.source();
    }
    Status { code: Code::Unknown, message: "internal error".into(), retry_after: None }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_pool_and_endpoint_never_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connect 10.1.2.3:9001 refused");
        let e = Error::new(ErrorKind::ConnectFailed)
            .in_pool("llama")
            .at_endpoint(EndpointId::new("gpu-a"))
            .with_source(io);
        let status = e.status();
        assert_eq!(status.code, Code::Unavailable);
        assert_eq!(status.message, "pool \"llama\" endpoint \"gpu-a\": unreachable");
        assert!(std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("10.1.2.3")));

        let boxed: BoxError =
            Box::new(Error::new(ErrorKind::Shed { retry_after: Some(Duration::from_millis(40)) }));
        let status = status_of(&*boxed);
        assert_eq!(
            (status.code, status.retry_after),
            (Code::ResourceExhausted, Some(Duration::from_millis(40)))
        );

        let other: BoxError = "a bug at 10.0.0.1".into();
        let status = status_of(&*other);
        assert_eq!((status.code, status.message.as_str()), (Code::Unknown, "internal error"));
    }

    #[test]
    fn a_trailers_only_response_carries_code_message_and_pushback() {
        let status = Status {
            code: Code::ResourceExhausted,
            message: "pool \"é\": 100%".into(),
            retry_after: Some(Duration::from_millis(250)),
        };
        let response: http::Response<()> = status.to_http();
        let h = response.headers();
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "pool \"%C3%A9\": 100%25");
        assert_eq!(h["grpc-retry-pushback-ms"], "250");
        assert_eq!(h["content-type"], "application/grpc");
    }

    #[test]
    fn codes_round_trip() {
        for i in 0..=16 {
            assert_eq!(Code::from_i32(i).as_i32(), i);
        }
        assert_eq!(Code::from_i32(99), Code::Unknown);
    }
}
