//! The same keys from a typed message, for tonic clients: no body to peek, the same scanner.

use http::HeaderMap;
use tokio::time::Instant;

use crate::config::KeysConfig;
use crate::metadata::extract_metadata;
use crate::scan::{GRPC_PREFIX, Scanner};

impl KeysConfig {
    /// Puts into `extensions` the keys of a call to `path` (e.g. [`MODEL_INFER`](crate::MODEL_INFER))
    /// with metadata `headers` and first message `message`: the same keys, read by the same
    /// scanner under the same bounds, as [`Keys`](crate::Keys) would find in the request on
    /// the wire (uncompressed).
    ///
    /// It encodes the message once, as a gRPC frame, and scans at most
    /// [`max_peek_bytes`](KeysConfig::max_peek_bytes) of it; only messages the layer would read
    /// (KServe model methods, with [`read_body`](KeysConfig::read_body)) are encoded.
    pub fn extract_message<M: prost::Message>(
        &self,
        path: &str,
        headers: &HeaderMap,
        message: &M,
        extensions: &mut http::Extensions,
    ) {
        let Some(target) = extract_metadata(self, path, headers, extensions, Instant::now()) else { return };
        let len = message.encoded_len();
        let mut frame = Vec::with_capacity(GRPC_PREFIX + len);
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        message.encode_raw(&mut frame);
        let mut scanner = Scanner::new(target);
        scanner.feed(&frame[..frame.len().min(self.max_peek_bytes)]);
        scanner.finish().insert_into(extensions);
    }

    /// [`extract_message`](Self::extract_message) for a tonic request: reads its metadata and
    /// message, fills its extensions (which tonic carries into the `http::Request` that a
    /// client-side tower stack sees).
    pub fn extract_request<M: prost::Message>(&self, path: &str, request: &mut tonic::Request<M>) {
        let mut extensions = std::mem::take(request.extensions_mut());
        self.extract_message(path, request.metadata().as_ref(), request.get_ref(), &mut extensions);
        *request.extensions_mut() = extensions;
    }
}
