//! The little of gRPC's wire format the cache reads: length-prefixed messages, `grpc-status`,
//! and the ORCA trailer it must not store.

use http::HeaderMap;
use switchyard_core::orca;

/// Bytes before each gRPC message: a compressed flag and a big-endian u32 length.
const PREFIX: usize = 5;

/// The first message of a gRPC body (`bytes` being its data, concatenated), unless it is
/// compressed or incomplete: what a request predicate decodes.
///
/// ```
/// let body = [0, 0, 0, 0, 2, 0x08, 0x01];
/// assert_eq!(switchyard_cache::first_message(&body), Some(&[0x08, 0x01][..]));
/// assert_eq!(switchyard_cache::first_message(&[1, 0, 0, 0, 0]), None, "compressed");
/// ```
pub fn first_message(bytes: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = bytes.split_first()?;
    if flag != 0 {
        return None;
    }
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest.get(4..4usize.checked_add(len)?)
}

/// How many whole gRPC messages `bytes` holds; `None` if it does not split into whole messages
/// (a truncated or malformed body is never cached).
pub(crate) fn message_count(bytes: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    let mut count = 0usize;
    while at < bytes.len() {
        let header = bytes.get(at..at.checked_add(PREFIX)?)?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        at = at.checked_add(PREFIX)?.checked_add(len)?;
        if at > bytes.len() {
            return None;
        }
        count += 1;
    }
    Some(count)
}

/// How many gRPC messages have begun in `bytes` (the last may be incomplete).
pub(crate) fn messages_begun(bytes: &[u8]) -> usize {
    let mut at = 0usize;
    let mut count = 0usize;
    while at < bytes.len() {
        count += 1;
        let Some(header) = bytes.get(at..at.saturating_add(PREFIX)) else { break };
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        at = at.saturating_add(PREFIX).saturating_add(len);
    }
    count
}

/// The call's `grpc-status`: from the trailers, else from the headers (a trailers-only
/// response); `None` when neither has one (not a finished gRPC call).
pub(crate) fn grpc_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<i32> {
    let value = trailers.and_then(|t| t.get("grpc-status")).or_else(|| headers.get("grpc-status"))?;
    // A status that is no number is no success.
    Some(value.to_str().ok().and_then(|s| s.trim().parse().ok()).unwrap_or(2))
}

/// Removes what belongs to the one call that reached a replica, not to the answer: the
/// replica's ORCA load report (`endpoint-load-metrics-bin`).
pub(crate) fn strip_per_call(headers: &mut HeaderMap) {
    headers.remove(orca::TRAILER_NAME);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_whole_messages_only() {
        assert_eq!(message_count(&[]), Some(0));
        assert_eq!(message_count(&[0, 0, 0, 0, 1, 7]), Some(1));
        assert_eq!(message_count(&[0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0]), Some(2));
        assert_eq!(message_count(&[0, 0, 0, 0, 2, 7]), None, "truncated");
        assert_eq!(message_count(&[0, 0, 0]), None);
        assert_eq!(message_count(&[0, 0xff, 0xff, 0xff, 0xff]), None, "a huge length");
    }

    #[test]
    fn counts_begun_messages() {
        assert_eq!(messages_begun(&[]), 0);
        assert_eq!(messages_begun(&[0, 0, 0]), 1);
        assert_eq!(messages_begun(&[0, 0, 0, 0, 1, 7, 0]), 2);
        assert_eq!(messages_begun(&[0, 0, 0, 0, 9, 7]), 1);
    }

    #[test]
    fn status_from_trailers_then_headers() {
        let mut headers = HeaderMap::new();
        let mut trailers = HeaderMap::new();
        assert_eq!(grpc_status(&headers, Some(&trailers)), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers, None), Some(5));
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers, Some(&trailers)), Some(0));
        trailers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers, Some(&trailers)), Some(2));
    }
}
