#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The layer puts each key into the extensions, from metadata and from a KServe message, the
//! typed helper agrees with it, and the body goes on byte for byte.

mod kserve;
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use kserve::{ModelReadyRequest, ParameterChoice, grpc_frame, param, prompt, text_request};
use support::{ChannelBody, KeySet, body_of, channel_body, recorder};
use switchyard_core::{Deadline, ModelName, PrefixBlocks, Priority, RequestSize, RoutingKey};
use switchyard_keys::{KeysConfig, KeysLayer, MODEL_INFER, MODEL_STREAM_INFER};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";

fn request(path: &str, headers: &[(&str, &str)], body: ChannelBody) -> http::Request<ChannelBody> {
    let mut builder = http::Request::post(path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(body).unwrap()
}

async fn through_layer(config: KeysConfig, req: http::Request<ChannelBody>) -> support::Seen {
    let mut service = KeysLayer::new(config).layer(recorder::<ChannelBody>());
    service.ready().await.unwrap().call(req).await.unwrap()
}

fn joined(frames: &[Bytes]) -> Vec<u8> {
    frames.concat()
}

#[tokio::test(start_paused = true)]
async fn each_key_comes_from_metadata() {
    let headers = [
        ("x-session-id", "chat-42"),
        ("x-priority", "sheddable"),
        ("grpc-timeout", "1500m"),
        ("x-model-name", "from-header"),
    ];
    let wire = grpc_frame(&text_request("from-body", &prompt(2048), Some(8)));
    let now = Instant::now();
    let seen =
        through_layer(KeysConfig::default(), request(MODEL_INFER, &headers, body_of(vec![wire], None))).await;
    assert_eq!(seen.keys.routing, Some(RoutingKey::new("chat-42")));
    assert_eq!(seen.keys.priority, Some(Priority::Sheddable));
    assert_eq!(seen.keys.deadline, Some(Deadline::after(now, Duration::from_millis(1500))));
    assert_eq!(seen.keys.model, Some(ModelName::new("from-header")), "the header wins over the body");
    assert_eq!(seen.keys.size, Some(RequestSize::new(512, 8)), "the size is still read");

    // Configured header names.
    let config = KeysConfig::default()
        .with_session_header(http::HeaderName::from_static("x-user"))
        .with_priority_header(http::HeaderName::from_static("x-class"));
    let seen = through_layer(
        config,
        request("/any.Service/Call", &[("x-user", "u-1"), ("x-class", "critical")], body_of(vec![], None)),
    )
    .await;
    assert_eq!(seen.keys.routing, Some(RoutingKey::new("u-1")));
    assert_eq!(seen.keys.priority, Some(Priority::Critical));

    // An unknown priority is ignored, not refused.
    let seen = through_layer(
        KeysConfig::default(),
        request("/a.B/C", &[("x-priority", "urgent")], body_of(vec![], None)),
    )
    .await;
    assert_eq!(seen.keys, KeySet::default());
}

#[tokio::test]
async fn each_key_comes_from_a_kserve_message() {
    let text = prompt(5000);
    for path in [MODEL_INFER, MODEL_STREAM_INFER] {
        let wire = grpc_frame(&text_request("llama", &text, Some(100)));
        let seen = through_layer(KeysConfig::default(), request(path, &[], body_of(vec![wire], None))).await;
        assert_eq!(seen.keys.model, Some(ModelName::new("llama")));
        assert_eq!(seen.keys.size, Some(RequestSize::new(1250, 100)));
        assert_eq!(seen.keys.prefix, Some(PrefixBlocks::from_text(&text, 512)));
        assert_eq!(seen.keys.prefix.unwrap().len(), 2, "two full blocks of 2048 bytes");
    }

    let mut req = text_request("llama", &text, None);
    req.parameters.insert("prompt_tokens".into(), param(ParameterChoice::Int64Param(9000)));
    req.parameters.insert("prefix_hashes".into(), param(ParameterChoice::StringParam("7,8,9".into())));
    let config = KeysConfig::default().with_default_max_tokens(32).with_block_tokens(16);
    let seen = through_layer(config, request(MODEL_INFER, &[], body_of(vec![grpc_frame(&req)], None))).await;
    assert_eq!(seen.keys.size, Some(RequestSize::new(9000, 32)));
    assert_eq!(seen.keys.prefix, Some(PrefixBlocks::new(vec![7, 8, 9])));

    // Other model methods: the model alone. Other services: nothing read.
    let wire = grpc_frame(&ModelReadyRequest { name: "llama".into(), version: String::new() });
    let seen =
        through_layer(KeysConfig::default(), request(MODEL_READY, &[], body_of(vec![wire.clone()], None)))
            .await;
    assert_eq!(seen.keys, KeySet { model: Some(ModelName::new("llama")), ..Default::default() });
    let seen = through_layer(
        KeysConfig::default(),
        request("/other.Service/ModelInfer", &[], body_of(vec![wire], None)),
    )
    .await;
    assert_eq!(seen.keys, KeySet::default());
}

/// A call of the typed helper on a config, headers and extensions.
type Typed = dyn Fn(&KeysConfig, &HeaderMap, &mut http::Extensions);

#[tokio::test(start_paused = true)]
async fn the_typed_helper_gives_the_same_extensions() {
    let text = prompt(3000);
    let mut with_params = text_request("m-2", &text, Some(5));
    with_params.parameters.insert("prefix_hashes".into(), param(ParameterChoice::StringParam("1,2".into())));
    let mut raw = text_request("m-3", "", None);
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![[&3000u32.to_le_bytes()[..], text.as_bytes()].concat()];
    let headers = [("x-session-id", "s"), ("x-priority", "critical"), ("grpc-timeout", "2S")];
    let cases: Vec<(&str, Vec<u8>, Box<Typed>)> = vec![
        (MODEL_INFER, grpc_frame(&text_request("m-1", &text, Some(7))), {
            let m = text_request("m-1", &text, Some(7));
            Box::new(move |c, h, e| c.extract_message(MODEL_INFER, h, &m, e))
        }),
        (MODEL_STREAM_INFER, grpc_frame(&with_params), {
            let m = with_params.clone();
            Box::new(move |c, h, e| c.extract_message(MODEL_STREAM_INFER, h, &m, e))
        }),
        (MODEL_INFER, grpc_frame(&raw), {
            let m = raw.clone();
            Box::new(move |c, h, e| c.extract_message(MODEL_INFER, h, &m, e))
        }),
        (MODEL_READY, grpc_frame(&ModelReadyRequest { name: "m-4".into(), version: "1".into() }), {
            Box::new(|c, h, e| {
                c.extract_message(
                    MODEL_READY,
                    h,
                    &ModelReadyRequest { name: "m-4".into(), version: "1".into() },
                    e,
                )
            })
        }),
    ];
    for config in [
        KeysConfig::default(),
        KeysConfig::default().with_block_tokens(8).with_max_peek_bytes(1000),
        KeysConfig::default().with_prefix_from_text(false),
    ] {
        for (path, wire, typed) in &cases {
            let req = request(path, &headers, body_of(vec![wire.clone()], None));
            let mut ext = http::Extensions::new();
            typed(&config, req.headers(), &mut ext);
            let seen = through_layer(config.clone(), req).await;
            assert_eq!(KeySet::of(&ext), seen.keys, "{path}");
            assert!(seen.keys.model.is_some() && seen.keys.routing.is_some());
        }
    }

    // The tonic request convenience.
    let mut tonic_req = tonic::Request::new(text_request("m-1", &text, Some(7)));
    tonic_req.set_timeout(Duration::from_secs(2));
    tonic_req.metadata_mut().insert("x-session-id", "s".parse().unwrap());
    KeysConfig::default().extract_request(MODEL_INFER, &mut tonic_req);
    let keys = KeySet::of(tonic_req.extensions());
    let wire = grpc_frame(tonic_req.get_ref());
    let seen = through_layer(
        KeysConfig::default(),
        request(
            MODEL_INFER,
            &[("x-session-id", "s"), ("grpc-timeout", "2000000u")],
            body_of(vec![wire], None),
        ),
    )
    .await;
    assert_eq!(keys, seen.keys);
    assert_eq!(keys.size, Some(RequestSize::new(750, 7)));
}

/// Cuts `wire` at `cuts`, sends it through the layer with trailers, and checks the inner service
/// got the same frames, the same bytes and the trailers.
async fn replays_identically(wire: &[u8], cuts: &[usize]) -> KeySet {
    let mut frames = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        frames.push(wire[start..cut].to_vec());
        start = cut;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("x-end", "1".parse().unwrap());
    let seen = through_layer(
        KeysConfig::default(),
        request(MODEL_INFER, &[], body_of(frames.clone(), Some(trailers.clone()))),
    )
    .await;
    let got: Vec<Vec<u8>> = seen.frames.iter().map(|b| b.to_vec()).collect();
    assert_eq!(got, frames, "cuts {cuts:?}: the same frames, in order");
    assert_eq!(seen.trailers, Some(trailers));
    assert_eq!(joined(&seen.frames), wire);
    seen.keys
}

#[tokio::test]
async fn every_byte_is_replayed_at_every_awkward_boundary() {
    let text = prompt(600);
    let req = text_request("a-model-name", &text, Some(3));
    let mut wire = grpc_frame(&req);
    // A second message follows the first: it is passed on unread.
    wire.extend_from_slice(&grpc_frame(&text_request("second", "x", Some(1))));
    let want = KeySet {
        model: Some(ModelName::new("a-model-name")),
        size: Some(RequestSize::new(150, 3)),
        prefix: Some(PrefixBlocks::from_text(&text, 512)),
        ..Default::default()
    };
    // Every single cut (inside the prefix, the key, the name's length, the text's two-byte length
    // varint...), and pairs of cuts over the message's first bytes.
    for i in 0..wire.len() {
        assert_eq!(replays_identically(&wire, &[i]).await, want, "cut at {i}");
    }
    for i in 0..40 {
        for j in i..80 {
            assert_eq!(replays_identically(&wire, &[i, j]).await, want, "cuts at {i}, {j}");
        }
    }
    // Empty frames too.
    assert_eq!(replays_identically(&wire, &[0, 0, 3, 3, 3, 9]).await, want);
}

#[tokio::test]
async fn errors_and_early_ends_pass_through() {
    // The body fails after two frames, before the keys are known: the inner service gets the
    // frames, then the error.
    let wire = grpc_frame(&text_request("m", &prompt(100), Some(3)));
    let (tx, body) = channel_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(&wire[..3])))).unwrap();
    tx.unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(&wire[3..7])))).unwrap();
    tx.unbounded_send(Err(std::io::Error::other("reset by client"))).unwrap();
    let seen = through_layer(KeysConfig::default(), request(MODEL_INFER, &[], body)).await;
    assert_eq!(joined(&seen.frames), &wire[..7]);
    assert_eq!(seen.error.as_deref(), Some("reset by client"));
    assert_eq!(seen.keys.model, None);

    // A body that ends inside the message.
    let seen = through_layer(
        KeysConfig::default(),
        request(MODEL_INFER, &[], body_of(vec![wire[..20].to_vec()], None)),
    )
    .await;
    assert_eq!(joined(&seen.frames), &wire[..20]);
    assert_eq!(seen.keys.model, Some(ModelName::new("m")));

    // A compressed message is no error: no body keys, every byte on.
    let mut compressed = wire.clone();
    compressed[0] = 1;
    let seen = through_layer(
        KeysConfig::default(),
        request(MODEL_INFER, &[], body_of(vec![compressed.clone()], None)),
    )
    .await;
    assert_eq!(seen.keys, KeySet::default());
    assert_eq!(joined(&seen.frames), compressed);

    // Streaming calls: the frames after the first message are not read ahead.
    let (tx, body) = channel_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::from(wire.clone())))).unwrap();
    let mut service = KeysLayer::new(KeysConfig::default()).layer(tower::service_fn(
        |req: http::Request<switchyard_keys::Replay<ChannelBody>>| async move {
            Ok::<_, std::convert::Infallible>((KeySet::of(req.extensions()), req.into_body()))
        },
    ));
    let (keys, body) =
        service.ready().await.unwrap().call(request(MODEL_STREAM_INFER, &[], body)).await.unwrap();
    assert_eq!(keys.model, Some(ModelName::new("m")), "found without waiting for the stream to end");
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"later")))).unwrap();
    drop(tx);
    let (frames, _, _) = support::read_all(body).await;
    assert_eq!(joined(&frames), [&wire[..], b"later"].concat());
}

#[test]
fn the_service_and_its_future_can_cross_threads() {
    fn send<T: Send + 'static>(_: &T) {}
    let mut service =
        tower::ServiceBuilder::new().layer(KeysLayer::default()).service(recorder::<ChannelBody>());
    let (_tx, body) = channel_body();
    send(&service);
    send(&service.call(request(MODEL_INFER, &[], body)));
}

#[tokio::test]
async fn a_replayed_body_reports_its_size_and_end() {
    use http_body::Body as _;
    let wire = grpc_frame(&text_request("m", "hello", Some(3)));
    let len = wire.len() as u64;
    let mut service = KeysLayer::default().layer(tower::service_fn(
        |req: http::Request<switchyard_keys::Replay<http_body_util::Full<Bytes>>>| async move {
            Ok::<_, std::convert::Infallible>(req.into_body())
        },
    ));
    let req = http::Request::post(MODEL_INFER).body(http_body_util::Full::new(Bytes::from(wire))).unwrap();
    let mut body = service.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(body.held_bytes() as u64, len);
    assert_eq!(body.size_hint().exact(), Some(len));
    assert!(!body.is_end_stream());
    let _ = http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));

    // Not peeked: the body's own hint.
    let req =
        http::Request::post("/a.B/C").body(http_body_util::Full::new(Bytes::from_static(b"abc"))).unwrap();
    let body = service.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!((body.held_bytes(), body.size_hint().exact()), (0, Some(3)));
}

#[tokio::test]
async fn a_model_behind_other_fields_is_found_within_the_limit() {
    let given = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut service = KeysLayer::default().layer(recorder::<support::MadeBody>());
    // 900 KiB of id before field 1, in 16 KiB frames: under max_peek_bytes (1 MiB).
    let body = support::hidden_model("hidden", 900 * 1024, 16 * 1024, given.clone());
    let req = http::Request::post(MODEL_READY).body(body).unwrap();
    let seen = service.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(seen.keys.model, Some(ModelName::new("hidden")));
    let bytes: usize = seen.frames.iter().map(Bytes::len).sum();
    assert_eq!(bytes, given.load(std::sync::atomic::Ordering::Relaxed));
    assert!(bytes > 900 * 1024);
}
