//! The keys read from metadata (headers), and which requests have a first message worth reading.

use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard_core::{Deadline, ModelName, Priority, RoutingKey, parse_grpc_timeout};
use tokio::time::Instant;

use crate::config::KeysConfig;
use crate::scan::ScanTarget;

/// The KServe v2 gRPC service (Triton's too).
pub const KSERVE_SERVICE: &str = "/inference.GRPCInferenceService/";
/// The path of KServe's unary inference call.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// The path of the (Triton) streaming inference call.
pub const MODEL_STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// What a request's path says about its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// `ModelInfer` or `ModelStreamInfer`: a `ModelInferRequest`.
    Infer,
    /// Another KServe model method (`ModelReady`, `ModelMetadata`, Triton's `ModelConfig`,
    /// `ModelStatistics`): its request has the model's name in field 1.
    Model,
    /// Anything else: the body is not read.
    Other,
}

impl Method {
    pub(crate) fn of(path: &str) -> Self {
        match path.strip_prefix(KSERVE_SERVICE) {
            Some("ModelInfer" | "ModelStreamInfer") => Method::Infer,
            Some(method) if method.starts_with("Model") => Method::Model,
            _ => Method::Other,
        }
    }
}

/// Reads the metadata keys of a request into `extensions`, and says what, if anything, to look
/// for in its first message. `now` is when the request arrived (its deadline counts from it).
pub(crate) fn extract_metadata(
    config: &KeysConfig,
    path: &str,
    headers: &HeaderMap,
    extensions: &mut http::Extensions,
    now: Instant,
) -> Option<ScanTarget> {
    read_session(&config.session_header, headers, extensions);
    read_priority(&config.priority_header, headers, extensions);
    if let Some(value) = headers.get("grpc-timeout") {
        match parse_grpc_timeout(value.as_bytes()) {
            Some(timeout) => {
                extensions.insert(Deadline::after(now, timeout));
            }
            None => tracing::debug!(?value, "ignored an invalid grpc-timeout"),
        }
    }
    let model_known = match non_empty(headers.get(&config.model_header)).map(HeaderValue::to_str) {
        Some(Ok(model)) => {
            extensions.insert(ModelName::new(model));
            true
        }
        _ => false,
    };
    if !config.read_body {
        return None;
    }
    let target = |infer| ScanTarget {
        model: !model_known,
        infer,
        block_tokens: config.prefix_from_text.then_some(config.block_tokens),
        also_block_tokens: config.also_block_tokens,
        default_max_tokens: config.default_max_tokens,
    };
    match Method::of(path) {
        Method::Infer => Some(target(true)),
        Method::Model if !model_known => Some(target(false)),
        Method::Model | Method::Other => None,
    }
}

/// The [`RoutingKey`] from `header`, if the request has it (not empty).
pub(crate) fn read_session(header: &HeaderName, headers: &HeaderMap, extensions: &mut http::Extensions) {
    if let Some(key) = non_empty(headers.get(header)) {
        extensions.insert(RoutingKey::new(String::from_utf8_lossy(key.as_bytes())));
    }
}

/// The [`Priority`] from `header`, if the request has a known one.
pub(crate) fn read_priority(header: &HeaderName, headers: &HeaderMap, extensions: &mut http::Extensions) {
    if let Some(value) = non_empty(headers.get(header)) {
        match value.to_str().ok().and_then(|v| v.parse::<Priority>().ok()) {
            Some(priority) => {
                extensions.insert(priority);
            }
            None => tracing::debug!(%header, ?value, "ignored an unknown priority"),
        }
    }
}

fn non_empty(value: Option<&HeaderValue>) -> Option<&HeaderValue> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn classifies_kserve_methods() {
        assert_eq!(Method::of("/inference.GRPCInferenceService/ModelInfer"), Method::Infer);
        assert_eq!(Method::of("/inference.GRPCInferenceService/ModelStreamInfer"), Method::Infer);
        assert_eq!(Method::of("/inference.GRPCInferenceService/ModelReady"), Method::Model);
        assert_eq!(Method::of("/inference.GRPCInferenceService/ModelConfig"), Method::Model);
        assert_eq!(Method::of("/inference.GRPCInferenceService/ServerLive"), Method::Other);
        assert_eq!(Method::of("/inference.GRPCInferenceService/RepositoryIndex"), Method::Other);
        assert_eq!(Method::of("/other.Service/ModelInfer"), Method::Other);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_each_metadata_key() {
        let mut headers = HeaderMap::new();
        headers.insert("x-session-id", HeaderValue::from_static("s-1"));
        headers.insert("x-priority", HeaderValue::from_static("critical"));
        headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
        headers.insert("x-model-name", HeaderValue::from_static("llama"));
        let mut ext = http::Extensions::new();
        let now = Instant::now();
        let config = KeysConfig::default();
        let target =
            extract_metadata(&config, "/inference.GRPCInferenceService/ModelReady", &headers, &mut ext, now);
        assert_eq!(target, None, "the model is known: nothing to read");
        assert_eq!(ext.get::<RoutingKey>(), Some(&RoutingKey::new("s-1")));
        assert_eq!(ext.get::<Priority>(), Some(&Priority::Critical));
        assert_eq!(ext.get::<Deadline>(), Some(&Deadline::after(now, Duration::from_millis(250))));
        assert_eq!(ext.get::<ModelName>(), Some(&ModelName::new("llama")));

        let target =
            extract_metadata(&config, "/inference.GRPCInferenceService/ModelInfer", &headers, &mut ext, now)
                .unwrap();
        assert!(target.infer && !target.model, "the size is still read, the model is not");
    }

    #[test]
    fn ignores_bad_values() {
        let mut headers = HeaderMap::new();
        headers.insert("x-priority", HeaderValue::from_static("urgent"));
        headers.insert("grpc-timeout", HeaderValue::from_static("soon"));
        headers.insert("x-session-id", HeaderValue::from_static(""));
        let mut ext = http::Extensions::new();
        let config = KeysConfig::default().with_read_body(false);
        let target = extract_metadata(
            &config,
            "/inference.GRPCInferenceService/ModelInfer",
            &headers,
            &mut ext,
            Instant::now(),
        );
        assert_eq!(target, None, "read_body = false");
        assert!(ext.get::<Priority>().is_none());
        assert!(ext.get::<Deadline>().is_none());
        assert!(ext.get::<RoutingKey>().is_none());
    }
}
