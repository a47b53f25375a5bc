//! What reading a request's keys costs, through the layer, per request.
//!
//! - `keys/metadata_only`: a call to a method whose body is not read (headers only).
//! - `keys/model_infer_4k`: a `ModelInfer` with a 4 KiB prompt: model, size and the prefix
//!   blocks hashed from the text.
//! - `keys/model_infer_1m_hashes`: a 1 MiB prompt whose `prompt_tokens` and `prefix_hashes` are
//!   given: the scan stops at the text's length prefix.
//! - `keys/model_infer_1m`: a 1 MiB prompt hashed (the most text a peek reads by default).
//!
//! ```sh
//! cargo bench -p switchyard-keys --bench keys
//! ```
//!
//! On the development machine (2 shared cores, 2026-11-30), including the request's making and
//! the inner call: 0.38 µs, 5.8 µs, 1.2 µs and 1.28 ms. Hashing the text is nearly all of the
//! cost of the second and the last (FNV-1a folds one byte at a time, about 1.2 ns a byte);
//! `prefix_from_text = false` skips it.
#![allow(clippy::unwrap_used)]

#[path = "../tests/kserve/mod.rs"]
mod kserve;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use kserve::{ParameterChoice, grpc_frame, param, prompt, text_request};
use switchyard_keys::{KeysConfig, KeysLayer, MODEL_INFER, Replay};
use tower::{Layer, Service, ServiceExt};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let mut group = c.benchmark_group("keys");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let service = KeysLayer::new(KeysConfig::default()).layer(tower::service_fn(
        |req: http::Request<Replay<Full<Bytes>>>| async move { Ok::<_, Infallible>(req.extensions().len()) },
    ));
    let mut hashed = text_request("llama", &prompt(1 << 20), Some(64));
    hashed.parameters.insert("prompt_tokens".into(), param(ParameterChoice::Int64Param(262_144)));
    hashed.parameters.insert("prefix_hashes".into(), param(ParameterChoice::StringParam("1,2,3,4".into())));
    let cases = [
        (
            "metadata_only",
            "/other.Service/Call",
            Bytes::from(grpc_frame(&text_request("llama", "hi", Some(1)))),
        ),
        (
            "model_infer_4k",
            MODEL_INFER,
            Bytes::from(grpc_frame(&text_request("llama", &prompt(4096), Some(64)))),
        ),
        ("model_infer_1m_hashes", MODEL_INFER, Bytes::from(grpc_frame(&hashed))),
        (
            "model_infer_1m",
            MODEL_INFER,
            Bytes::from(grpc_frame(&text_request("llama", &prompt(1 << 20), Some(64)))),
        ),
    ];
    for (name, path, wire) in cases {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let mut service = service.clone();
                let req = http::Request::post(path)
                    .header("x-session-id", "chat-1")
                    .header("grpc-timeout", "5S")
                    .body(Full::new(wire.clone()))
                    .unwrap();
                async move { black_box(service.ready().await.unwrap().call(req).await.unwrap()) }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
