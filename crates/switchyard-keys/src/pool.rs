//! [`PoolKeys`]: the keys one pool reads differently from the rest, applied after routing.

use http::{HeaderMap, HeaderName};
use switchyard_core::{PrefixBlocks, Priority, RoutingKey};

use crate::metadata::{read_priority, read_session};
use crate::scan::PrefixBlocksBySize;

/// What one pool of a gateway reads differently from the key layer in front of all pools: its
/// session (routing-key) header, its priority header, its prefix block size. Each is optional;
/// what is not set is the key layer's.
///
/// The key layer reads a request once, before routing (the model it routes on may be in the
/// body), so a pool's settings are applied to the keys it found, once the pool is known
/// ([`apply`](Self::apply)): the headers are metadata, read again at no cost; a block size of
/// the pool's own needs the prompt's text hashed in blocks of that size, which the layer does in
/// the same pass when told the pools' sizes
/// ([`KeysConfig::with_also_block_tokens`](crate::KeysConfig::with_also_block_tokens)). A
/// `prefix_hashes` parameter (block ids the client computed) is taken as it is, whatever the
/// size. The deadline has no header to choose: it is gRPC's own `grpc-timeout`.
///
/// ```
/// use http::{HeaderMap, HeaderName, HeaderValue};
/// use switchyard_core::RoutingKey;
/// use switchyard_keys::PoolKeys;
///
/// let pool = PoolKeys::default().with_session_header(HeaderName::from_static("x-user"));
/// let mut headers = HeaderMap::new();
/// headers.insert("x-session-id", HeaderValue::from_static("s-1"));
/// headers.insert("x-user", HeaderValue::from_static("alice"));
/// let mut extensions = http::Extensions::new();
/// extensions.insert(RoutingKey::new("s-1")); // what the key layer read
/// pool.apply(&headers, &mut extensions);
/// assert_eq!(extensions.get::<RoutingKey>(), Some(&RoutingKey::new("alice")));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolKeys {
    /// The header whose value is the pool's [`RoutingKey`]; a request without it has none in
    /// this pool (even if it has the key layer's).
    pub session_header: Option<HeaderName>,
    /// The header whose value is the pool's [`Priority`]; a request without a known value in it
    /// has the default priority in this pool.
    pub priority_header: Option<HeaderName>,
    /// Tokens per prefix block when the pool's [`PrefixBlocks`] are hashed from the text.
    pub block_tokens: Option<u32>,
}

impl PoolKeys {
    /// The same settings, reading the routing key from `header`.
    pub fn with_session_header(mut self, header: HeaderName) -> Self {
        self.session_header = Some(header);
        self
    }

    /// The same settings, reading the priority from `header`.
    pub fn with_priority_header(mut self, header: HeaderName) -> Self {
        self.priority_header = Some(header);
        self
    }

    /// The same settings, with prefix blocks of `tokens` tokens.
    pub fn with_block_tokens(mut self, tokens: u32) -> Self {
        self.block_tokens = Some(tokens);
        self
    }

    /// Whether the pool reads every key as the key layer does.
    pub fn is_empty(&self) -> bool {
        self.session_header.is_none() && self.priority_header.is_none() && self.block_tokens.is_none()
    }

    /// Replaces the keys in `extensions` that this pool reads differently: the routing key and
    /// priority from its headers in `headers`, the prefix blocks by those of its block size (when
    /// the key layer hashed the text at that size too; otherwise the blocks stay as they are).
    pub fn apply(&self, headers: &HeaderMap, extensions: &mut http::Extensions) {
        if let Some(header) = &self.session_header {
            extensions.remove::<RoutingKey>();
            read_session(header, headers, extensions);
        }
        if let Some(header) = &self.priority_header {
            extensions.remove::<Priority>();
            read_priority(header, headers, extensions);
        }
        if let Some(size) = self.block_tokens {
            let blocks = extensions
                .get::<PrefixBlocksBySize>()
                .and_then(|by| by.0.iter().find(|(s, _)| *s == size))
                .map(|(_, blocks)| blocks.clone());
            if let Some(blocks) = blocks {
                extensions.insert::<PrefixBlocks>(blocks);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::HeaderValue;
    use http_body_util::Full;
    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::{KeysConfig, KeysLayer, MODEL_INFER, Replay};

    /// A ModelInfer first message with `text` as its `text_input` contents.
    fn infer_wire(text: &str) -> Vec<u8> {
        // InferInputTensor { name: "text_input" (1), contents (5) { bytes_contents (8): text } }
        let mut contents = vec![0x42];
        push_len(&mut contents, text.len());
        contents.extend_from_slice(text.as_bytes());
        let mut tensor = vec![0x0a, 10];
        tensor.extend_from_slice(b"text_input");
        tensor.push(0x2a);
        push_len(&mut tensor, contents.len());
        tensor.extend_from_slice(&contents);
        let mut message = vec![0x0a, 1, b'm', 0x2a];
        push_len(&mut message, tensor.len());
        message.extend_from_slice(&tensor);
        let mut wire = vec![0];
        wire.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(&message);
        wire
    }

    fn push_len(out: &mut Vec<u8>, mut n: usize) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    #[tokio::test]
    async fn a_pool_reads_its_own_headers_and_block_size() {
        let text: String = (0..400).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let config = KeysConfig::default().with_block_tokens(16).with_also_block_tokens([8, 16, 0]).unwrap();
        let inner = tower::service_fn(|req: http::Request<Replay<Full<Bytes>>>| async move {
            Ok::<_, std::convert::Infallible>(req.into_parts().0)
        });
        let mut service = KeysLayer::new(config).layer(inner);
        let request = http::Request::post(MODEL_INFER)
            .header("x-session-id", "s-1")
            .header("x-priority", "critical")
            .header("x-tier", "sheddable")
            .body(Full::new(Bytes::from(infer_wire(&text))))
            .unwrap();
        let mut parts = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(parts.extensions.get::<PrefixBlocks>(), Some(&PrefixBlocks::from_text(&text, 16)));

        // A pool that sets nothing changes nothing.
        let before = parts.extensions.get::<RoutingKey>().cloned();
        PoolKeys::default().apply(&parts.headers, &mut parts.extensions);
        assert_eq!(parts.extensions.get::<RoutingKey>().cloned(), before);

        let pool = PoolKeys::default()
            .with_session_header(HeaderName::from_static("x-user"))
            .with_priority_header(HeaderName::from_static("x-tier"))
            .with_block_tokens(8);
        assert!(!pool.is_empty());
        pool.apply(&parts.headers, &mut parts.extensions);
        assert_eq!(parts.extensions.get::<RoutingKey>(), None, "no x-user: no routing key in this pool");
        assert_eq!(parts.extensions.get::<Priority>(), Some(&Priority::Sheddable));
        assert_eq!(parts.extensions.get::<PrefixBlocks>(), Some(&PrefixBlocks::from_text(&text, 8)));

        parts.headers.insert("x-user", HeaderValue::from_static("alice"));
        pool.apply(&parts.headers, &mut parts.extensions);
        assert_eq!(parts.extensions.get::<RoutingKey>(), Some(&RoutingKey::new("alice")));

        // A size the layer did not hash at leaves the blocks as they are.
        PoolKeys::default().with_block_tokens(32).apply(&parts.headers, &mut parts.extensions);
        assert_eq!(parts.extensions.get::<PrefixBlocks>(), Some(&PrefixBlocks::from_text(&text, 8)));
    }

    #[test]
    fn extra_block_sizes_are_distinct_and_bounded() {
        let config = KeysConfig::default().with_also_block_tokens([256, 0, 512, 256, 64]).unwrap();
        assert_eq!(config.also_block_tokens().collect::<Vec<_>>(), [256, 64]);
        let refused = KeysConfig::default().with_also_block_tokens([1, 2, 3, 4, 5]).unwrap_err();
        assert_eq!(refused, 4);
    }
}
