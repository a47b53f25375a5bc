#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile peeks fail cleanly and hold bounded memory, and a well-behaved call on the same
//! thread is not held up by them.

mod kserve;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use kserve::{grpc_frame, prompt, text_request};
use support::{ChannelBody, Holder, MadeBody, body_of, channel_body, hidden_model, recorder};
use switchyard_core::error::Code;
use switchyard_core::{ErrorKind, ModelName, status_of};
use switchyard_keys::{DEFAULT_MAX_PEEK_BYTES, Keys, KeysConfig, MODEL_INFER, Replay};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

fn infer<B>(body: B) -> http::Request<B> {
    http::Request::post(MODEL_INFER).body(body).unwrap()
}

/// The kind of the typed error a failed call carries, and the status a client would get.
fn kind_and_code(e: &BoxError) -> (ErrorKind, Code, String) {
    let error = e.downcast_ref::<switchyard_core::Error>().expect("a typed switchyard error");
    let status = status_of(&**e);
    (error.kind().clone(), status.code, status.message)
}

#[tokio::test]
async fn one_byte_frames_past_the_frame_limit_are_refused() {
    let config = KeysConfig::default().with_max_peek_frames(1024);
    // The model behind 2000 bytes of id, sent a byte at a time.
    let given = Arc::new(AtomicUsize::new(0));
    let body = hidden_model("m", 2000, 1, given.clone());
    let mut keys = Keys::new(recorder::<MadeBody>(), config.clone());
    let e = keys.ready().await.unwrap().call(infer(body)).await.unwrap_err();
    let (kind, code, message) = kind_and_code(&e);
    assert!(matches!(kind, ErrorKind::TooLarge(_)), "{kind:?}");
    assert_eq!(code, Code::ResourceExhausted);
    assert_eq!(message, "request too large: the first message came in too many small frames");
    // The first frame is the prefix, the key and the length (8 bytes); then 1024 frames of 1.
    assert_eq!(given.load(Ordering::Relaxed), 8 + 1024, "read no further than the limit");
    assert_eq!(keys.budget_available(), config.connection_budget, "nothing left held");

    // The same bytes in 1-byte frames are fine when the keys come first.
    let wire = grpc_frame(&text_request("m", "hi", Some(2)));
    let mut keys = Keys::new(recorder::<ChannelBody>(), config);
    let seen = keys
        .ready()
        .await
        .unwrap()
        .call(infer(body_of(wire.chunks(1).map(<[u8]>::to_vec).collect(), None)))
        .await
        .unwrap();
    assert_eq!(seen.keys.model, Some(ModelName::new("m")));
    assert_eq!(seen.frames.concat(), wire);
}

#[tokio::test]
async fn a_4_mib_field_ahead_of_the_model_stops_at_max_peek_bytes() {
    let frame = 16 * 1024;
    let given = Arc::new(AtomicUsize::new(0));
    let holder = Holder::<MadeBody>::default();
    let mut keys = Keys::new(holder.clone(), KeysConfig::default());
    let budget = keys.budget_available();
    let found = keys
        .ready()
        .await
        .unwrap()
        .call(infer(hidden_model("m", 4 << 20, frame, given.clone())))
        .await
        .unwrap();
    assert_eq!(found.model, None, "the model was past the limit: the request goes on without one");
    let read = given.load(Ordering::Relaxed);
    assert!(
        (DEFAULT_MAX_PEEK_BYTES..DEFAULT_MAX_PEEK_BYTES + frame).contains(&read),
        "read {read} bytes before forwarding"
    );
    let held = holder.held.lock().unwrap().pop().unwrap();
    assert_eq!(held.body().held_bytes(), read);
    assert_eq!(keys.budget_available(), budget - charged(held.body()), "the held bytes hold the budget");

    // The whole body is replayed; the budget comes back as the held frames go.
    let (frames, _, _) = support::read_all(held.into_body()).await;
    let bytes: usize = frames.iter().map(Bytes::len).sum();
    assert_eq!(bytes, given.load(Ordering::Relaxed));
    assert!(bytes > 4 << 20);
    assert_eq!(keys.budget_available(), budget);
}

#[tokio::test(start_paused = true)]
async fn many_streams_exhaust_the_connection_budget_and_go_on_with_the_keys_they_have() {
    // 200 streams on one connection, each hiding its model behind 4 MiB; the upstream holds
    // every request it gets (a slow pool). No peek waits for budget: once it is used up, each
    // further peek stops at the frame it could not pay for, and its request goes on.
    let config = KeysConfig::default();
    let holder = Holder::<MadeBody>::default();
    let connection = Keys::new(holder.clone(), config.clone()).for_connection();
    let given = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..200 {
        let mut keys = connection.clone();
        let body = hidden_model("m", 4 << 20, 16 * 1024, given.clone());
        calls.push(tokio::spawn(async move {
            let result = keys.ready().await.unwrap().call(infer(body)).await;
            (result, Instant::now())
        }));
    }
    for call in calls {
        let (result, at) = call.await.unwrap();
        let keys = result.expect("forwarded, not refused");
        assert_eq!(at, start, "no peek waited");
        assert_eq!(keys.model, None, "the model is past every peek");
    }
    // Every request was forwarded; the bytes read from the connection's streams stay within the
    // budget and one frame per stream.
    assert_eq!(holder.held.lock().unwrap().len(), 200);
    let read = given.load(Ordering::Relaxed);
    assert!(
        read <= config.connection_budget + 200 * 16 * 1024,
        "read {} MiB from the connection's streams",
        read >> 20
    );
    assert!(connection.budget_available() < 16 * 1024 + 64, "{}", connection.budget_available());
    let longest = holder.held.lock().unwrap().iter().map(|r| r.body().held_bytes()).max().unwrap();
    assert!(longest >= DEFAULT_MAX_PEEK_BYTES, "the first peeks had the budget for a whole peek: {longest}");

    // Another connection has a budget of its own.
    let mut other = connection.for_connection();
    let keys = other.ready().await.unwrap().call(infer(hidden_model("m", 0, 16, Arc::default()))).await;
    assert_eq!(keys.unwrap().model, Some(ModelName::new("m")));

    // Once the upstream lets go of the requests, the connection's budget is whole again.
    holder.held.lock().unwrap().clear();
    assert_eq!(connection.budget_available(), config.connection_budget);
}

/// The budget a replayed body holds: its bytes, and 64 per frame.
fn charged<B: http_body::Body>(body: &Replay<B>) -> usize {
    body.held_bytes() + 64 * body.held_frames()
}

#[tokio::test(start_paused = true)]
async fn a_stalled_client_hits_the_peek_deadline() {
    let mut keys = Keys::new(recorder::<ChannelBody>(), KeysConfig::default());
    let wire = grpc_frame(&text_request("m", "hi", Some(2)));

    // Three bytes of the prefix, then nothing.
    let (tx, body) = channel_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::copy_from_slice(&wire[..3])))).unwrap();
    let start = Instant::now();
    let e = keys.ready().await.unwrap().call(infer(body)).await.unwrap_err();
    let (kind, code, message) = kind_and_code(&e);
    assert_eq!(
        (kind, code, message.as_str()),
        (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded, "deadline exceeded")
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(keys.budget_available(), KeysConfig::default().connection_budget);
    drop(tx);

    // The request's own deadline, when sooner.
    let (_tx, body) = channel_body();
    let req = http::Request::post(MODEL_INFER).header("grpc-timeout", "300m").body(body).unwrap();
    let start = Instant::now();
    let e = keys.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(kind_and_code(&e).0, ErrorKind::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn a_well_behaved_call_completes_while_hostile_ones_wait() {
    // One current-thread runtime: 40 stalled streams, 40 streams dribbling 1-byte frames and 40
    // streams of 4 MiB prefixes held by the upstream (forwarded once the 4 MiB budget of their
    // connection is used up), all on one connection; then a well-behaved call from another
    // connection to the same service.
    let config = KeysConfig::default().with_connection_budget(4 << 20);
    let upstream = Holder::<ChannelOrMade>::default();
    let connection = Keys::new(upstream.clone(), config.clone());
    let mut hostile = Vec::new();
    let mut senders = Vec::new();
    for i in 0..120 {
        let mut keys = connection.clone();
        let body = match i % 3 {
            0 => {
                let (tx, body) = channel_body();
                tx.unbounded_send(Ok(Frame::data(Bytes::from_static(&[0, 0, 1])))).unwrap();
                senders.push(tx);
                ChannelOrMade::Channel(body)
            }
            1 => {
                let (tx, body) = channel_body();
                for _ in 0..100 {
                    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(&[0])))).unwrap();
                }
                senders.push(tx);
                ChannelOrMade::Channel(body)
            }
            _ => ChannelOrMade::Made(hidden_model("m", 4 << 20, 16 * 1024, Arc::default())),
        };
        hostile.push(tokio::spawn(async move { keys.ready().await.unwrap().call(infer(body)).await }));
    }
    tokio::task::yield_now().await;

    let start = Instant::now();
    let text = prompt(4000);
    let wire = grpc_frame(&text_request("good", &text, Some(16)));
    let (tx, body) = channel_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::from(wire)))).unwrap();
    let mut keys = connection.for_connection();
    let good = keys.ready().await.unwrap().call(infer(ChannelOrMade::Channel(body))).await.unwrap();
    assert_eq!(good.model, Some(ModelName::new("good")));
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    let pending = hostile.iter().filter(|h| !h.is_finished()).count();
    assert!(pending > 0, "hostile calls are still waiting");

    // They then end: forwarded with the keys read before the budget ran out, or refused with a
    // clear error (stalled: the deadline); none holds the budget after.
    let mut refused = 0;
    for h in hostile {
        if let Err(e) = h.await.unwrap() {
            let (_, code, _) = kind_and_code(&e);
            assert!(matches!(code, Code::DeadlineExceeded | Code::ResourceExhausted), "{code:?}");
            refused += 1;
        }
    }
    assert!(refused >= pending.min(1), "{refused} refused");
    upstream.held.lock().unwrap().clear();
    assert_eq!(connection.budget_available(), config.connection_budget);
    drop(senders);
}

/// A channel body or a made one, so that one connection carries both.
enum ChannelOrMade {
    Channel(ChannelBody),
    Made(MadeBody),
}

impl http_body::Body for ChannelOrMade {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ChannelOrMade::Channel(b) => std::pin::Pin::new(b).poll_frame(cx),
            ChannelOrMade::Made(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
        }
    }
}

#[tokio::test]
async fn a_4_mib_prompt_is_sized_from_its_length_prefix() {
    let text = prompt(4 << 20);
    let wire = grpc_frame(&text_request("m", &text, Some(10)));
    let frames: Vec<Vec<u8>> = wire.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
    let holder = Holder::<ChannelBody>::default();
    let mut keys = Keys::new(holder.clone(), KeysConfig::default().with_block_tokens(16));
    let budget = keys.budget_available();
    let found = keys.ready().await.unwrap().call(infer(body_of(frames, None))).await.unwrap();
    assert_eq!(found.model, Some(ModelName::new("m")));
    assert_eq!(found.size, Some(switchyard_core::RequestSize::new(1 << 20, 10)));
    // The blocks read within the first MiB are the prompt's first blocks.
    let prefix = found.prefix.unwrap();
    let full = switchyard_core::PrefixBlocks::from_text(&text[..2 << 20], 16);
    assert!(prefix.len() > 16_000 && prefix.len() < 16_384, "{} blocks", prefix.len());
    assert_eq!(full.common_prefix(&prefix), prefix.len());

    // Permits come back frame by frame as the body is replayed, not all at the end.
    let mut body = holder.held.lock().unwrap().pop().unwrap().into_body();
    let held = charged(&body);
    assert_eq!(keys.budget_available(), budget - held);
    let first = http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.len(), 16 * 1024);
    assert_eq!(keys.budget_available(), budget - held + first.len() + 64);
    drop(body);
    assert_eq!(keys.budget_available(), budget, "dropping the body gives the rest back");
}
