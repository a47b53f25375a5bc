//! The bodies of the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) and of the replay of their
//! committed corpus (`tests/fuzz_corpus.rs`), so that both run the same code.
//!
//! Each function takes arbitrary bytes, drives code that a network peer or a config file
//! reaches, and checks what must hold whatever the input: a panic anywhere below is a bug, and a
//! broken invariant comes back as a [`Violation`] (the fuzz target panics on it, for libFuzzer to
//! keep the input).
//!
//! | function | drives |
//! | --- | --- |
//! | [`gateway_config`] | [`GatewayConfig::from_toml`], then the pools' policies and keys as the gateway builds them |
//! | [`keys`] | the key layer ([`switchyard_keys::KeysLayer`]) over a request made of arbitrary metadata and body frames |
//! | [`typed_keys`] | a tonic client's key extraction ([`KeysConfig::extract_message`]) against the key layer's, over one `ModelInferRequest` decoded from bytes |
//! | [`orca`] | the ORCA load-report decoder, from protobuf bytes and from the base64 metadata text |
//! | [`kserve_request`] | a `ModelInferRequest` decoded from bytes, through the worker's [`parse_infer`] into the engine request |

use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use switchyard_core::{ReportedLoad, orca};
use switchyard_keys::{KeysConfig, KeysLayer, MODEL_INFER, MODEL_STREAM_INFER, Replay};
use tower::{Layer, Service, ServiceExt};

use crate::gateway::GatewayConfig;
use crate::proto::inference::ModelInferRequest;
use crate::worker::request::parse_infer;

/// An invariant that an input broke: what the fuzz target panics with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

fn check(holds: bool, what: impl FnOnce() -> String) -> Result<(), Violation> {
    if holds { Ok(()) } else { Err(Violation(what())) }
}

/// The gateway's TOML config from arbitrary bytes (read as UTF-8, lossily): an error names a
/// line of the text, and a config that parses builds every pool's policy and the key layer's
/// settings.
pub fn gateway_config(data: &[u8]) -> Result<(), Violation> {
    let text = String::from_utf8_lossy(data);
    match GatewayConfig::from_toml(&text) {
        Err(e) => {
            let lines = text.lines().count() + 1;
            check(e.line.is_none_or(|line| (1..=lines).contains(&line)), || {
                format!("error on line {:?} of a {lines}-line text: {e}", e.line)
            })?;
            check(!e.to_string().is_empty(), || "an empty error".into())
        }
        Ok(config) => {
            check(!config.pools.is_empty(), || "a valid config without pools".into())?;
            for pool in &config.pools {
                if let Err(e) = switchyard_balance::policy::registry().build(&pool.policy, 0) {
                    return Err(Violation(format!(
                        "pool {:?} validated but its policy fails: {e}",
                        pool.name
                    )));
                }
            }
            let _ = config.keys_config();
            Ok(())
        }
    }
}

/// The paths the key layer tells apart: unary and streaming inference, another model method,
/// another KServe method and another service.
const PATHS: [&str; 5] = [
    MODEL_INFER,
    MODEL_STREAM_INFER,
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerLive",
    "/grpc.health.v1.Health/Check",
];

/// A request for the key layer, read from fuzz bytes: byte 0 picks the path, byte 1 the layer's
/// bounds and how the body ends, then `[tag, length, bytes]` chunks: tags 0 to 3 a header (the
/// session, priority, `grpc-timeout`, model header; one length byte), any other a body frame
/// (two length bytes, little-endian).
struct KeysInput {
    path: &'static str,
    config: KeysConfig,
    headers: http::HeaderMap,
    frames: Vec<Bytes>,
    /// The body never ends after its frames (a client that stalls).
    stall: bool,
    trailers: bool,
}

impl KeysInput {
    fn read(data: &[u8]) -> Self {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let (path, flags) = (PATHS[usize::from(byte(0)) % PATHS.len()], byte(1));
        let mut config =
            KeysConfig::default().with_read_body(flags & 1 == 0).with_prefix_from_text(flags & 2 == 0);
        if flags & 4 != 0 {
            config = config.with_max_peek_bytes(64);
        }
        if flags & 8 != 0 {
            config = config.with_max_peek_frames(4);
        }
        if flags & 16 != 0 {
            config = config.with_connection_budget(256);
        }
        if flags & 128 != 0 {
            config = config.with_block_tokens(1);
        }
        let names = [
            config.session_header.clone(),
            config.priority_header.clone(),
            http::HeaderName::from_static("grpc-timeout"),
            config.model_header.clone(),
        ];
        let (mut headers, mut frames) = (http::HeaderMap::new(), Vec::new());
        let mut rest = data.get(2..).unwrap_or_default();
        while let Some((&tag, after)) = rest.split_first() {
            let (len, after) = match (usize::from(tag) < names.len(), after) {
                (true, [len, after @ ..]) => (usize::from(*len), after),
                (false, [lo, hi, after @ ..]) => (usize::from(u16::from_le_bytes([*lo, *hi])), after),
                _ => break,
            };
            let (chunk, after) = after.split_at(len.min(after.len()));
            rest = after;
            match names.get(usize::from(tag)) {
                Some(name) => {
                    if let Ok(value) = http::HeaderValue::from_bytes(chunk) {
                        headers.append(name.clone(), value);
                    }
                }
                None => frames.push(Bytes::copy_from_slice(chunk)),
            }
        }
        // Trailers end a body: a client that sent them cannot stall after them.
        let trailers = flags & 64 != 0;
        Self { path, config, headers, frames, stall: flags & 32 != 0 && !trailers, trailers }
    }
}

thread_local! {
    /// One runtime per thread for [`keys`], under a paused clock: a stalled body meets its peek
    /// deadline at once, and no input waits for real time.
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .ok();
}

/// What the service behind the key layer saw of the body: its bytes, and whether it ended (and
/// with trailers).
struct Seen {
    data: Vec<u8>,
    ended: bool,
    trailers: bool,
}

/// The key layer over a request read from `data` (see the module docs): the body reaches the
/// service behind it unchanged, whatever the layer read of it, and once the call is over the
/// connection's peek budget is whole again.
pub fn keys(data: &[u8]) -> Result<(), Violation> {
    let input = KeysInput::read(data);
    RUNTIME.with(|runtime| match runtime {
        Some(runtime) => runtime.block_on(run_keys(input)),
        None => Err(Violation("no tokio runtime".into())),
    })
}

async fn run_keys(input: KeysInput) -> Result<(), Violation> {
    let sent: Vec<u8> = input.frames.iter().flat_map(|f| f.iter().copied()).collect();
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
        input.frames.iter().cloned().map(|f| Ok(Frame::data(f))).collect();
    if input.trailers {
        frames.push(Ok(Frame::trailers(http::HeaderMap::new())));
    }
    let stall = input.stall;
    let stream = futures::stream::iter(frames).chain(futures::stream::poll_fn(move |_| {
        if stall { std::task::Poll::Pending } else { std::task::Poll::Ready(None) }
    }));
    let mut request = http::Request::new(StreamBody::new(stream));
    *request.uri_mut() = match http::Uri::try_from(input.path) {
        Ok(uri) => uri,
        Err(e) => return Err(Violation(format!("path {:?}: {e}", input.path))),
    };
    *request.headers_mut() = input.headers;

    let inner = tower::service_fn(|req: http::Request<Replay<_>>| async move {
        let mut body = req.into_body();
        let mut seen = Seen { data: Vec::new(), ended: false, trailers: false };
        // A stalled body never ends: what it sent arrives well within a minute of paused time.
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame;
                match frame.into_data() {
                    Ok(data) => seen.data.extend_from_slice(&data),
                    Err(frame) => seen.trailers |= frame.is_trailers(),
                }
            }
            seen.ended = true;
        });
        let _ = read.await;
        Ok::<_, Infallible>(seen)
    });
    let mut service = KeysLayer::new(input.config).layer(inner);
    let budget = service.budget_available();
    let result = match service.ready().await {
        Ok(ready) => ready.call(request).await,
        Err(e) => return Err(Violation(format!("the key layer was not ready: {e}"))),
    };
    match result {
        Ok(seen) => {
            check(seen.data == sent, || {
                format!("the body changed: {} bytes sent, {} arrived", sent.len(), seen.data.len())
            })?;
            check(seen.ended != stall, || format!("the body ended: {}, stalled: {stall}", seen.ended))?;
            check(stall || seen.trailers == input.trailers, || "the trailers were lost or made up".into())?;
        }
        // Refused (too many frames, or the peek's deadline): a typed error, not an unknown one.
        Err(e) => {
            let status = switchyard_core::status_of(e.as_ref());
            check(status.code != switchyard_core::Code::Unknown, || format!("an untyped error: {e}"))?;
        }
    }
    check(service.budget_available() == budget, || {
        format!("the budget is {} of {budget} after the call", service.budget_available())
    })
}

/// The keys a tonic client extracts from a typed `ModelInferRequest`
/// ([`KeysConfig::extract_message`]) against those the key layer finds in the same request on
/// the wire, in one frame: byte 0 of `data` picks the path (one of five inference paths), byte
/// 1 the bounds (as [`keys`] reads them), the rest is the message's protobuf (inputs that do
/// not decode are skipped). The model name, size and prefix blocks must be the same, so that a balancer in a
/// client and one in a gateway route a call alike.
pub fn typed_keys(data: &[u8]) -> Result<(), Violation> {
    let input = KeysInput::read(data.get(..2).unwrap_or_default());
    let Ok(message) = ModelInferRequest::decode(data.get(2..).unwrap_or_default()) else { return Ok(()) };
    let mut typed = http::Extensions::new();
    input.config.extract_message(input.path, &http::HeaderMap::new(), &message, &mut typed);
    let on_the_wire = RUNTIME.with(|runtime| match runtime {
        Some(runtime) => runtime.block_on(layer_keys(input, &message)),
        None => Err(Violation("no tokio runtime".into())),
    })?;
    let keys = |e: &http::Extensions| {
        (
            e.get::<switchyard_core::ModelName>().cloned(),
            e.get::<switchyard_core::RequestSize>().copied(),
            e.get::<switchyard_core::PrefixBlocks>().cloned(),
        )
    };
    let (typed, wire) = (keys(&typed), keys(&on_the_wire));
    check(typed == wire, || format!("a tonic client finds {typed:?}, the key layer {wire:?}"))
}

/// The extensions the key layer gives the service behind it for a call to `input.path` whose body
/// is `message` in one uncompressed gRPC frame.
async fn layer_keys(input: KeysInput, message: &ModelInferRequest) -> Result<http::Extensions, Violation> {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let body = http_body_util::Full::new(Bytes::from(frame));
    let mut request = http::Request::new(body);
    *request.uri_mut() =
        http::Uri::try_from(input.path).map_err(|e| Violation(format!("{}: {e}", input.path)))?;
    let inner = tower::service_fn(|req: http::Request<Replay<_>>| async move {
        Ok::<_, Infallible>(req.extensions().clone())
    });
    let mut service = KeysLayer::new(input.config).layer(inner);
    match service.ready().await {
        Ok(ready) => {
            ready.call(request).await.map_err(|e| Violation(format!("the key layer refused one frame: {e}")))
        }
        Err(e) => Err(Violation(format!("the key layer was not ready: {e}"))),
    }
}

/// The ORCA decoder over `data` as protobuf bytes, as base64 text and as a header value: a
/// report decodes to a load whose utilisations are in \[0, 1\] and which encodes and decodes
/// back to itself.
pub fn orca(data: &[u8]) -> Result<(), Violation> {
    let mut loads = Vec::new();
    loads.extend(orca::decode(data).ok());
    loads.extend(orca::decode_base64(data).ok());
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        loads.extend(orca::decode_header_value(&value).ok());
    }
    for load in loads {
        let fraction = |v: f64| (0.0..=1.0).contains(&v);
        check(fraction(load.kv_cache_utilization) && fraction(load.cpu_utilization), || {
            format!("utilisations out of [0, 1]: {load:?}")
        })?;
        let again = orca::decode_header_value(&orca::encode_header_value(&load))
            .map_err(|e| Violation(format!("a load it decoded does not decode once encoded: {e}")))?;
        check(same_load(&load, &again), || format!("{load:?} came back as {again:?}"))?;
    }
    Ok(())
}

/// Equal, with NaN equal to NaN (a peer may send it) and -0 to 0 (protobuf leaves a zero value
/// out of a map entry, and it decodes as +0).
fn same_load(a: &ReportedLoad, b: &ReportedLoad) -> bool {
    let same = |x: f64, y: f64| x == y || (x.is_nan() && y.is_nan());
    let named = a.named.len() == b.named.len()
        && a.named.iter().zip(&b.named).all(|((ka, va), (kb, vb))| ka == kb && same(*va, *vb));
    named
        && (a.queue_depth, a.running, a.capacity) == (b.queue_depth, b.running, b.capacity)
        && same(a.kv_cache_utilization, b.kv_cache_utilization)
        && same(a.cpu_utilization, b.cpu_utilization)
}

/// The served model's name in [`kserve_request`]'s first check.
const FUZZ_MODEL: &str = "m";

/// A `ModelInferRequest` decoded from `data`, read by the worker's [`parse_infer`]: once for a
/// model of another name, once as the model it names (so the rest of the request is read), at
/// the engine's default block size and at one token. An accepted request makes an engine request
/// of at least one prompt token and one output token; a refused one is `NOT_FOUND` or
/// `INVALID_ARGUMENT` with a message.
pub fn kserve_request(data: &[u8]) -> Result<(), Violation> {
    let Ok(request) = ModelInferRequest::decode(data) else { return Ok(()) };
    let block_tokens = switchyard_sim::EngineConfig::default().block_tokens;
    let model = request.model_name.clone();
    for (served, block_tokens) in [(FUZZ_MODEL, block_tokens), (&model, block_tokens), (&model, 1)] {
        match parse_infer(&request, served, block_tokens) {
            Ok(parsed) => {
                let engine = parsed.generation_request(None);
                check(engine.prompt_tokens >= 1 && engine.max_tokens >= 1, || {
                    format!(
                        "an engine request of {} prompt and {} output tokens",
                        engine.prompt_tokens, engine.max_tokens
                    )
                })?;
            }
            Err(status) => {
                use tonic::Code;
                check(matches!(status.code(), Code::NotFound | Code::InvalidArgument), || {
                    format!("refused with {:?}", status.code())
                })?;
                check(!status.message().is_empty(), || "refused without a message".into())?;
            }
        }
    }
    Ok(())
}
