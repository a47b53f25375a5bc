//! Outcomes: how a request ended, as the balancer, limits, retries and metrics tell them apart.

use std::time::Duration;

use crate::error::Code;

/// The trailer (or trailers-only header) in which a gRPC server asks its client to wait before
/// retrying, in milliseconds (gRFC A6). A negative or malformed value means "do not retry".
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// How one request ended on one endpoint.
///
/// Read from the response's `grpc-status` (trailers, or the headers of a trailers-only
/// response), its `grpc-retry-pushback-ms`, and what happened to the call on the way: a
/// connection that could not be opened, a caller that went away. Outlier ejection counts
/// [`Unavailable`](Self::Unavailable) and [`ConnectFailed`](Self::ConnectFailed) against the
/// endpoint; a limiter treats [`Overloaded`](Self::Overloaded) as a drop; metrics name each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// `OK`.
    Ok,
    /// The endpoint could not serve (`UNAVAILABLE`, HTTP 502/503/504, or the connection failed
    /// mid-call).
    Unavailable,
    /// The request never reached the endpoint: its connection could not be opened.
    ConnectFailed,
    /// The endpoint refused for lack of capacity (`RESOURCE_EXHAUSTED`), with the pushback it
    /// asked for, if any.
    Overloaded {
        /// How long the endpoint asked its clients to wait before retrying.
        pushback: Option<Duration>,
    },
    /// The request's deadline passed (`DEADLINE_EXCEEDED`).
    DeadlineExceeded,
    /// The caller gave up (`CANCELLED`, or the response was dropped before it ended).
    Cancelled,
    /// Any other status: the request was wrong, or the server failed in a way that says nothing
    /// about its health (`NOT_FOUND`, `INVALID_ARGUMENT`, `INTERNAL`, ...).
    Other {
        /// The gRPC status code.
        code: Code,
    },
}

impl Outcome {
    /// The outcome a gRPC status code means; `pushback` is the server's
    /// `grpc-retry-pushback-ms`, read only for `RESOURCE_EXHAUSTED`.
    pub fn from_code(code: Code, pushback: Option<Duration>) -> Self {
        match code {
            Code::Ok => Outcome::Ok,
            Code::Unavailable => Outcome::Unavailable,
            Code::ResourceExhausted => Outcome::Overloaded { pushback },
            Code::DeadlineExceeded => Outcome::DeadlineExceeded,
            Code::Cancelled => Outcome::Cancelled,
            code => Outcome::Other { code },
        }
    }

    /// The outcome the trailers (or a trailers-only response's headers) carry, or `None` when
    /// they have no `grpc-status`. A status that is not a number counts as `UNKNOWN`.
    pub fn from_trailers(trailers: &http::HeaderMap) -> Option<Self> {
        // A parsed name: looking a `&str` up parses it first, on every response.
        const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
        let status = trailers.get(&GRPC_STATUS)?;
        let code = status
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from_i32);
        let pushback = match code {
            Code::ResourceExhausted => retry_pushback(trailers),
            _ => None,
        };
        Some(Self::from_code(code, pushback))
    }

    /// The outcome of an HTTP response status with no gRPC status: 502, 503 and 504 are
    /// [`Unavailable`](Self::Unavailable), 429 is [`Overloaded`](Self::Overloaded), other
    /// errors are [`Other`](Self::Other) with the code gRPC maps them to, success is `Ok`.
    pub fn from_http_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Outcome::Ok,
            502..=504 => Outcome::Unavailable,
            429 => Outcome::Overloaded { pushback: None },
            400 => Outcome::Other { code: Code::Internal },
            401 => Outcome::Other { code: Code::Unauthenticated },
            403 => Outcome::Other { code: Code::PermissionDenied },
            404 => Outcome::Other { code: Code::Unimplemented },
            _ => Outcome::Other { code: Code::Unknown },
        }
    }

    /// Whether the outcome says the endpoint is unhealthy (what outlier ejection counts):
    /// [`Unavailable`](Self::Unavailable) and [`ConnectFailed`](Self::ConnectFailed).
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(self, Outcome::Unavailable | Outcome::ConnectFailed)
    }

    /// Whether the request succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The gRPC status code of the outcome (`UNAVAILABLE` for a connect failure).
    pub fn code(&self) -> Code {
        match self {
            Outcome::Ok => Code::Ok,
            Outcome::Unavailable | Outcome::ConnectFailed => Code::Unavailable,
            Outcome::Overloaded { .. } => Code::ResourceExhausted,
            Outcome::DeadlineExceeded => Code::DeadlineExceeded,
            Outcome::Cancelled => Code::Cancelled,
            Outcome::Other { code } => *code,
        }
    }

    /// A short name for logs and metrics: `ok`, `unavailable`, `connect-failed`, `overloaded`,
    /// `deadline-exceeded`, `cancelled`, `other`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unavailable => "unavailable",
            Outcome::ConnectFailed => "connect-failed",
            Outcome::Overloaded { .. } => "overloaded",
            Outcome::DeadlineExceeded => "deadline-exceeded",
            Outcome::Cancelled => "cancelled",
            Outcome::Other { .. } => "other",
        }
    }
}

/// The `grpc-retry-pushback-ms` of `headers`, if present and non-negative.
pub fn retry_pushback(headers: &http::HeaderMap) -> Option<Duration> {
    let ms = headers.get(RETRY_PUSHBACK_HEADER)?.to_str().ok()?.trim().parse::<i64>().ok()?;
    u64::try_from(ms).ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn classified_from_status_and_pushback() {
        assert_eq!(Outcome::from_trailers(&trailers(&[("grpc-status", "0")])), Some(Outcome::Ok));
        assert_eq!(Outcome::from_trailers(&trailers(&[])), None);
        assert_eq!(Outcome::from_trailers(&trailers(&[("grpc-status", "14")])), Some(Outcome::Unavailable));
        assert_eq!(
            Outcome::from_trailers(&trailers(&[("grpc-status", "8"), ("grpc-retry-pushback-ms", "250")])),
            Some(Outcome::Overloaded { pushback: Some(Duration::from_millis(250)) })
        );
        assert_eq!(
            Outcome::from_trailers(&trailers(&[("grpc-status", "8"), ("grpc-retry-pushback-ms", "-1")])),
            Some(Outcome::Overloaded { pushback: None }),
            "a negative pushback means do not retry"
        );
        assert_eq!(
            Outcome::from_trailers(&trailers(&[("grpc-status", "4")])),
            Some(Outcome::DeadlineExceeded)
        );
        assert_eq!(Outcome::from_trailers(&trailers(&[("grpc-status", "1")])), Some(Outcome::Cancelled));
        assert_eq!(
            Outcome::from_trailers(&trailers(&[("grpc-status", "5")])),
            Some(Outcome::Other { code: Code::NotFound })
        );
        assert_eq!(
            Outcome::from_trailers(&trailers(&[("grpc-status", "bogus")])),
            Some(Outcome::Other { code: Code::Unknown })
        );
        assert_eq!(Outcome::from_http_status(http::StatusCode::SERVICE_UNAVAILABLE), Outcome::Unavailable);
        assert!(Outcome::ConnectFailed.is_endpoint_failure() && Outcome::Unavailable.is_endpoint_failure());
        assert!(!Outcome::Overloaded { pushback: None }.is_endpoint_failure());
        assert!(!Outcome::Other { code: Code::NotFound }.is_endpoint_failure());
    }
}
