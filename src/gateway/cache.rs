//! The `cache` pool layer: [`switchyard_cache`] from a pool's config.
//!
//! ```toml
//! [[pool]]
//! name = "llama"
//! layers = [{ name = "cache", ttl = "60s", max_bytes = 67108864, methods = [
//!     { method = "/inference.GRPCInferenceService/ModelInfer", when = "temperature-zero" },
//! ] }]
//! ```
//!
//! | parameter | meaning | default |
//! | --- | --- | --- |
//! | `methods` | the methods cached: `method` (`/package.Service/Method`), `when` (`"always"`, or `"temperature-zero"`: a KServe `ModelInfer` request whose `temperature` parameter is 0), `streams` and `errors` (store streamed and error answers too) | required, at least one |
//! | `max_bytes` | bytes the stored answers may take | 64 MiB |
//! | `ttl` | how long an answer is served | `"60s"` |
//! | `max_request_bytes` | largest request read for a key | 64 KiB |
//! | `max_response_bytes` | largest answer stored | 1 MiB |
//! | `read_timeout` | how long a request body may take to arrive (or the request's deadline, if sooner); past it, `DEADLINE_EXCEEDED` | `"5s"` |
//! | `response_timeout` | how long the one upstream call of identical requests may take to deliver an answer to store, whole (or the calling request's deadline, if sooner; a stored stream must end within it); past it, every waiter gets `DEADLINE_EXCEEDED` and nothing is stored | `"60s"` |

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use switchyard_cache::{CacheConfig, CacheLayer, CacheRule, first_message};
use switchyard_core::{Spec, SpecError};
use switchyard_keys::MODEL_INFER;
use tower::util::BoxCloneSyncServiceLayer;

use super::layers::PoolLayer;
use crate::proto::inference::ModelInferRequest;
use crate::proto::inference::infer_parameter::ParameterChoice;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    methods: Vec<MethodParams>,
    max_bytes: Option<u64>,
    ttl: Option<String>,
    max_request_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    read_timeout: Option<String>,
    response_timeout: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodParams {
    method: String,
    #[serde(default)]
    when: When,
    #[serde(default)]
    streams: bool,
    #[serde(default)]
    errors: bool,
}

/// Which requests of a method are cached.
#[derive(serde::Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum When {
    /// All of them (embeddings, classification: deterministic methods).
    #[default]
    Always,
    /// KServe `ModelInfer` requests whose `temperature` parameter is 0 (greedy decoding).
    TemperatureZero,
}

fn error(spec: &Spec, message: impl Into<String>) -> SpecError {
    SpecError { name: spec.name().to_string(), message: message.into() }
}

/// Builds the `cache` layer of a pool from its spec.
pub(crate) fn cache(spec: &Spec) -> Result<PoolLayer, SpecError> {
    let params: Params = spec.params()?;
    let defaults = CacheConfig::default();
    if params.methods.is_empty() {
        return Err(error(
            spec,
            "`methods` must name at least one method, e.g. { method = \"/pkg.Service/Method\" }",
        ));
    }
    let mut rules = Vec::with_capacity(params.methods.len());
    for (i, m) in params.methods.iter().enumerate() {
        if !m.method.starts_with('/') || m.method[1..].split('/').count() != 2 {
            return Err(error(
                spec,
                format!("methods[{i}].method = {:?}: expected \"/package.Service/Method\"", m.method),
            ));
        }
        let mut rule = CacheRule::method(m.method.clone());
        if m.method == MODEL_INFER {
            rule = rule.key_with(model_infer_key);
        }
        if let When::TemperatureZero = m.when {
            rule = rule.when(|_, body| temperature_is_zero(body));
        }
        if m.streams {
            rule = rule.with_streams();
        }
        if m.errors {
            rule = rule.with_errors();
        }
        rules.push(rule);
    }
    let ttl = match &params.ttl {
        None => defaults.ttl,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| error(spec, format!("`ttl` = {text:?}: {e} (e.g. \"60s\")")))?,
    };
    if ttl.is_zero() {
        return Err(error(spec, "`ttl` must be above zero"));
    }
    let read_timeout = match &params.read_timeout {
        None => defaults.read_timeout,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| error(spec, format!("`read_timeout` = {text:?}: {e} (e.g. \"5s\")")))?,
    };
    if read_timeout.is_zero() {
        return Err(error(spec, "`read_timeout` must be above zero"));
    }
    let response_timeout = match &params.response_timeout {
        None => defaults.response_timeout,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| error(spec, format!("`response_timeout` = {text:?}: {e} (e.g. \"60s\")")))?,
    };
    if response_timeout.is_zero() {
        return Err(error(spec, "`response_timeout` must be above zero"));
    }
    let config = CacheConfig {
        max_bytes: params.max_bytes.unwrap_or(defaults.max_bytes),
        ttl,
        max_request_bytes: params.max_request_bytes.unwrap_or(defaults.max_request_bytes),
        max_response_bytes: params.max_response_bytes.unwrap_or(defaults.max_response_bytes),
        read_timeout,
        response_timeout,
        rules,
    };
    if config.max_bytes == 0 {
        return Err(error(spec, "`max_bytes` must be above zero"));
    }
    Ok(BoxCloneSyncServiceLayer::new(CacheLayer::new(config)))
}

/// The key of a KServe `ModelInfer` request: the request with its parameter maps sorted.
///
/// Protobuf encoders write a map in their own order (prost and Go in hash order, so one client
/// writes the same request differently from one call to the next); two requests that decode to
/// the same message must have the same key. The key is the message with every map emptied
/// (then its encoding is deterministic), followed by each map's entries in key order, each
/// length-prefixed. Everything else counts, the request `id` included (the answer echoes it).
/// A request that does not decode is keyed by its bytes as they came.
pub(crate) fn model_infer_key(body: &Bytes) -> Option<Bytes> {
    let Some(message) = first_message(body) else { return Some(body.clone()) };
    let Ok(mut request) = ModelInferRequest::decode(message) else { return Some(body.clone()) };
    let mut maps = vec![std::mem::take(&mut request.parameters)];
    maps.extend(request.inputs.iter_mut().map(|i| std::mem::take(&mut i.parameters)));
    maps.extend(request.outputs.iter_mut().map(|o| std::mem::take(&mut o.parameters)));
    let mut key = BytesMut::new();
    key.put_slice(&request.encode_to_vec());
    for map in maps {
        let mut entries: Vec<_> = map.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        key.put_u32(u32::try_from(entries.len()).unwrap_or(u32::MAX));
        for (name, value) in entries {
            let value = value.encode_to_vec();
            key.put_u32(u32::try_from(name.len()).unwrap_or(u32::MAX));
            key.put_slice(name.as_bytes());
            key.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
            key.put_slice(&value);
        }
    }
    Some(key.freeze())
}

/// Whether a KServe `ModelInfer` request (its gRPC-framed body) asks for temperature 0: its
/// `temperature` parameter is the number 0 (double, integer or a string that parses as one).
/// A request without one is sampled at the server's default and is not cached.
pub(crate) fn temperature_is_zero(body: &[u8]) -> bool {
    let Some(message) = first_message(body) else { return false };
    let Ok(request) = ModelInferRequest::decode(message) else { return false };
    match request.parameters.get("temperature").and_then(|p| p.parameter_choice.as_ref()) {
        Some(ParameterChoice::DoubleParam(t)) => *t == 0.0,
        Some(ParameterChoice::Int64Param(t)) => *t == 0,
        Some(ParameterChoice::Uint64Param(t)) => *t == 0,
        Some(ParameterChoice::StringParam(t)) => t.trim().parse::<f64>().is_ok_and(|t| t == 0.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::InferParameter;

    fn framed(request: &ModelInferRequest) -> Vec<u8> {
        let message = request.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(&message);
        out
    }

    fn with_temperature(choice: Option<ParameterChoice>) -> Vec<u8> {
        let mut request = crate::worker::request::text_request("m", "hi", 4);
        if let Some(choice) = choice {
            request
                .parameters
                .insert("temperature".into(), InferParameter { parameter_choice: Some(choice) });
        }
        framed(&request)
    }

    #[test]
    fn temperature_zero_is_read_from_the_request() {
        assert!(temperature_is_zero(&with_temperature(Some(ParameterChoice::DoubleParam(0.0)))));
        assert!(temperature_is_zero(&with_temperature(Some(ParameterChoice::Int64Param(0)))));
        assert!(temperature_is_zero(&with_temperature(Some(ParameterChoice::StringParam("0.0".into())))));
        assert!(!temperature_is_zero(&with_temperature(Some(ParameterChoice::DoubleParam(0.7)))));
        assert!(!temperature_is_zero(&with_temperature(None)), "the server's default is not 0");
        assert!(!temperature_is_zero(b"garbage"));
    }

    #[test]
    fn the_key_ignores_the_order_of_map_entries_only() {
        let mut a = crate::worker::request::text_request("m", "hi", 4);
        for (i, name) in ["temperature", "top_p", "seed", "x", "y"].iter().enumerate() {
            a.parameters.insert(
                (*name).into(),
                InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(i as i64)) },
            );
        }
        // The same entries inserted in another order into another map (another hash order).
        let mut b = a.clone();
        let entries: Vec<_> = a.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        b.parameters = entries.into_iter().rev().collect();
        let (ka, kb) = (model_infer_key(&Bytes::from(framed(&a))), model_infer_key(&Bytes::from(framed(&b))));
        assert_eq!(ka, kb);
        b.parameters
            .insert("seed".into(), InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(9)) });
        assert_ne!(ka, model_infer_key(&Bytes::from(framed(&b))), "a different value, a different key");
        let mut c = a.clone();
        c.id = "other".into();
        assert_ne!(ka, model_infer_key(&Bytes::from(framed(&c))), "the id counts");
        assert_eq!(model_infer_key(&Bytes::from_static(b"junk")), Some(Bytes::from_static(b"junk")));
    }

    #[test]
    fn bad_params_name_the_field() {
        #[derive(serde::Deserialize)]
        struct Holder {
            layer: Spec,
        }
        let spec =
            |text: &str| -> Spec { toml::from_str::<Holder>(&format!("layer = {text}")).unwrap().layer };
        let err = cache(&spec(r#"{ name = "cache", methods = [] }"#)).err().unwrap();
        assert!(err.message.contains("methods"), "{err}");
        let err = cache(&spec(r#"{ name = "cache", methods = [{ method = "Infer" }] }"#)).err().unwrap();
        assert!(err.message.contains("methods[0].method"), "{err}");
        let err = cache(&spec(r#"{ name = "cache", ttl = "soon", methods = [{ method = "/a.B/C" }] }"#))
            .err()
            .unwrap();
        assert!(err.message.contains("ttl"), "{err}");
        let err =
            cache(&spec(r#"{ name = "cache", read_timeout = "0s", methods = [{ method = "/a.B/C" }] }"#))
                .err()
                .unwrap();
        assert!(err.message.contains("read_timeout"), "{err}");
        assert!(
            cache(&spec(r#"{ name = "cache", read_timeout = "250ms", methods = [{ method = "/a.B/C" }] }"#))
                .is_ok()
        );
        let err =
            cache(&spec(r#"{ name = "cache", response_timeout = "0s", methods = [{ method = "/a.B/C" }] }"#))
                .err()
                .unwrap();
        assert!(err.message.contains("response_timeout"), "{err}");
        let err = cache(&spec(
            r#"{ name = "cache", response_timeout = "later", methods = [{ method = "/a.B/C" }] }"#,
        ))
        .err()
        .unwrap();
        assert!(err.message.contains("response_timeout"), "{err}");
        assert!(
            cache(&spec(
                r#"{ name = "cache", response_timeout = "10m", methods = [{ method = "/a.B/C" }] }"#
            ))
            .is_ok()
        );
        let err =
            cache(&spec(r#"{ name = "cache", methods = [{ method = "/a.B/C", when = "sometimes" }] }"#))
                .err()
                .unwrap();
        assert!(err.message.contains("sometimes") || err.message.contains("variant"), "{err}");
        assert!(
            cache(&spec(
                r#"{ name = "cache", methods = [{ method = "/a.B/C", when = "temperature-zero" }] }"#
            ))
            .is_ok()
        );
    }
}
