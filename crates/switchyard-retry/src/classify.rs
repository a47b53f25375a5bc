//! Whether an attempt's result may be retried: the decision is made on the response's head.

use std::time::Duration;

use switchyard_balance::PickedEndpoint;
use switchyard_core::{Code, EndpointId, ErrorKind, RETRY_PUSHBACK_HEADER};
use tower::BoxError;

use crate::RetryConfig;
use crate::hold::{HeldBody, held_trailers};

/// A response body whose trailers may be known when the verdict is made: a response held whole.
pub(crate) trait KnownTrailers {
    /// The trailers, if the whole response has come.
    fn known_trailers(&self) -> Option<&http::HeaderMap> {
        None
    }
}

impl<B> KnownTrailers for HeldBody<B> {
    fn known_trailers(&self) -> Option<&http::HeaderMap> {
        held_trailers(self)
    }
}

#[cfg(test)]
impl KnownTrailers for () {}

/// What to do after an attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand the result to the caller.
    Done,
    /// Try again, on another endpoint than `endpoint`, after `pushback` if the server said.
    Retry { endpoint: Option<EndpointId>, pushback: Option<Duration> },
}

/// The verdict on an attempt's result.
///
/// Always safe, whatever the method: the request never reached a replica (its connection could
/// not be opened, or had closed before the stream opened; the replica refused the stream, `REFUSED_STREAM`; or its connection closed
/// gracefully, `GOAWAY` with `NO_ERROR`, before processing the stream, which h2 reports only for
/// streams above the last one the replica processed). For a method marked idempotent also a
/// trailers-only response (the status in its headers: no message came) with a retryable status,
/// after the `grpc-retry-pushback-ms` it carries, and a call that failed with no response at all
/// (its connection failed under it: `UNAVAILABLE` to the caller); a negative or malformed
/// pushback means not to retry (gRFC A6). A response with headers and a body is committed: the first message has come
/// (or may yet), and a stream is never retried after it; unless the response was held whole (a
/// method in `hold_responses`): then its trailers' status is read as a trailers-only one's.
pub(crate) fn verdict<B: KnownTrailers>(
    result: &Result<http::Response<B>, BoxError>,
    idempotent: bool,
    config: &RetryConfig,
) -> Verdict {
    match result {
        Err(error) => {
            let error = &**error;
            // Never reached a replica; or no response came (the connection failed under the
            // call): the caller gets the status the error maps to, `UNAVAILABLE` for a failed
            // connection, which a method marked idempotent may retry as it would a trailers-only
            // answer.
            let retry = never_reached(error)
                || idempotent && config.is_retryable(switchyard_core::status_of(error).code);
            if retry {
                Verdict::Retry { endpoint: endpoint_of(error), pushback: None }
            } else {
                Verdict::Done
            }
        }
        Ok(response) => {
            let headers = match response.body().known_trailers() {
                Some(trailers) if !response.headers().contains_key("grpc-status") => trailers,
                _ => response.headers(),
            };
            let Some(status) = headers.get("grpc-status") else { return Verdict::Done };
            let code = status.to_str().ok().and_then(|s| s.parse::<i32>().ok()).map(Code::from_i32);
            let Some(code) = code.filter(|&c| c != Code::Ok) else { return Verdict::Done };
            if !idempotent || !config.is_retryable(code) {
                return Verdict::Done;
            }
            let pushback = match headers.get(RETRY_PUSHBACK_HEADER) {
                None => None,
                Some(value) => {
                    match value.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                        Some(ms) => Some(Duration::from_millis(ms)),
                        // Negative or malformed: the server asks not to retry.
                        None => return Verdict::Done,
                    }
                }
            };
            let endpoint = response.extensions().get::<PickedEndpoint>().map(|p| p.0.clone());
            Verdict::Retry { endpoint, pushback }
        }
    }
}

/// The endpoint a typed error in `error`'s chain names, if any.
fn endpoint_of(error: &(dyn std::error::Error + 'static)) -> Option<EndpointId> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(endpoint) = e.downcast_ref::<switchyard_core::Error>().and_then(|t| t.endpoint()) {
            return Some(endpoint.clone());
        }
        next = e.source();
    }
    None
}

/// Whether the error says the request never reached a replica.
fn never_reached(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<switchyard_core::Error>()
            .is_some_and(|t| matches!(t.kind(), ErrorKind::ConnectFailed))
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let reason = h2.reason();
            if reason == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && reason == Some(h2::Reason::NO_ERROR))
            {
                return true;
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers_only(
        code: &'static str,
        pushback: Option<&'static str>,
    ) -> Result<http::Response<()>, BoxError> {
        let mut response = http::Response::new(());
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(code));
        if let Some(p) = pushback {
            response.headers_mut().insert(RETRY_PUSHBACK_HEADER, http::HeaderValue::from_static(p));
        }
        Ok(response)
    }

    #[test]
    fn statuses_are_retried_for_idempotent_methods_only() {
        let config = RetryConfig::default();
        let retry = Verdict::Retry { endpoint: None, pushback: None };
        assert_eq!(verdict(&trailers_only("14", None), true, &config), retry);
        assert_eq!(verdict(&trailers_only("14", None), false, &config), Verdict::Done);
        assert_eq!(verdict(&trailers_only("13", None), true, &config), Verdict::Done);
        assert_eq!(verdict(&trailers_only("0", None), true, &config), Verdict::Done);
        assert_eq!(
            verdict(&trailers_only("14", Some("40")), true, &config),
            Verdict::Retry { endpoint: None, pushback: Some(Duration::from_millis(40)) }
        );
        assert_eq!(verdict(&trailers_only("14", Some("-1")), true, &config), Verdict::Done);
        assert_eq!(verdict(&trailers_only("14", Some("soon")), true, &config), Verdict::Done);
    }

    #[test]
    fn a_call_whose_connection_failed_under_it_is_retried_for_idempotent_methods_only() {
        let config = RetryConfig::default();
        let mid_call = || -> BoxError {
            Box::new(switchyard_core::Error::new(ErrorKind::Upstream).at_endpoint(EndpointId::new("b")))
        };
        assert_eq!(
            verdict::<()>(&Err(mid_call()), true, &config),
            Verdict::Retry { endpoint: Some(EndpointId::new("b")), pushback: None },
            "UNAVAILABLE with no response: an idempotent method tries another endpoint"
        );
        assert_eq!(verdict::<()>(&Err(mid_call()), false, &config), Verdict::Done);
        let invalid: BoxError =
            Box::new(switchyard_core::Error::new(ErrorKind::InvalidRequest("bad".into())));
        assert_eq!(verdict::<()>(&Err(invalid), true, &config), Verdict::Done, "not a retryable status");
    }

    #[test]
    fn what_never_reached_a_replica_is_retried_for_any_method() {
        let config = RetryConfig::default();
        let refused: BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert!(matches!(verdict::<()>(&Err(refused), false, &config), Verdict::Retry { .. }));
        let connect: BoxError =
            Box::new(switchyard_core::Error::new(ErrorKind::ConnectFailed).at_endpoint(EndpointId::new("a")));
        assert_eq!(
            verdict::<()>(&Err(connect), false, &config),
            Verdict::Retry { endpoint: Some(EndpointId::new("a")), pushback: None }
        );
        let mid_call = || -> BoxError {
            Box::new(switchyard_core::Error::new(ErrorKind::Upstream).at_endpoint(EndpointId::new("b")))
        };
        assert_eq!(
            verdict::<()>(&Err(mid_call()), false, &config),
            Verdict::Done,
            "it may have been processed"
        );
        let reset: BoxError = Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        assert_eq!(verdict::<()>(&Err(reset), true, &config), Verdict::Done);
    }
}
