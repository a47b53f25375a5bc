#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Edge cases of the engine under tokio's paused clock: the head-of-line wait behind a request
//! too large for the free KV cache, cancelling that request, and the prefix cache giving way at
//! admission so that cached + reserved never exceeds the capacity.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::PrefixBlocks;
use switchyard_sim::{EngineConfig, EngineHandle, GenerationRequest, ReplicaLoad};

fn spawn(config: EngineConfig) -> EngineHandle {
    EngineHandle::spawn(config).expect("valid config")
}

/// Waits (in virtual time) until the published load satisfies `f`.
async fn load_until(engine: &EngineHandle, f: impl FnMut(&ReplicaLoad) -> bool) -> ReplicaLoad {
    let mut load = engine.watch_load();
    load.wait_for(f).await.expect("the engine runs").clone()
}

#[tokio::test(start_paused = true)]
async fn a_small_request_waits_behind_a_large_one_at_the_head_of_the_queue() {
    // 10,000 tokens of KV. A runs (6,000 reserved); B needs 5,000 and waits for A; C needs 110,
    // which would fit now, but the queue is first come, first served.
    let engine = spawn(EngineConfig { kv_capacity_tokens: 10_000, ..EngineConfig::default() });
    let mut a = engine.submit(GenerationRequest::new(4000, 2000)).unwrap();
    a.next().await.unwrap();
    let b = engine.submit(GenerationRequest::new(3000, 2000)).unwrap();
    let c = engine.submit(GenerationRequest::new(100, 10)).unwrap();
    tokio::task::yield_now().await;
    let load = engine.load();
    assert_eq!((load.running, load.queue_depth, load.kv_used_tokens), (1, 2, 6000), "{load:?}");

    let (a, b, c) = tokio::join!(a.collect_outcome(), b.collect_outcome(), c.collect_outcome());
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    // C, behind B, is admitted with B when A leaves: it waited out A's whole generation.
    // C came at A's first token and is admitted when A leaves (within a step).
    let a_left = a.total - a.ttft;
    assert!(c.queued.abs_diff(a_left) < Duration::from_millis(20), "{a:?} {c:?}");
    assert_eq!(c.queued, b.queued, "admitted together: {b:?} {c:?}");
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_request_at_the_head_lets_the_one_behind_in() {
    let engine = spawn(EngineConfig { kv_capacity_tokens: 10_000, ..EngineConfig::default() });
    let mut a = engine.submit(GenerationRequest::new(4000, 2000)).unwrap();
    a.next().await.unwrap();
    let b = engine.submit(GenerationRequest::new(3000, 2000)).unwrap();
    let c = engine.submit(GenerationRequest::new(100, 10)).unwrap();
    tokio::task::yield_now().await;
    assert_eq!((engine.load().running, engine.load().queue_depth), (1, 2));
    drop(b); // the blocker's caller goes
    let load = load_until(&engine, |l| l.running == 2).await;
    assert_eq!((load.queue_depth, load.cancelled, load.kv_used_tokens), (0, 1, 6110), "{load:?}");
    let c = c.collect_outcome().await.unwrap();
    // Admitted at the next step, long before A ends (about 2,000 decode steps).
    assert!(c.queued < a.collect_outcome().await.unwrap().total / 100, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn the_prefix_cache_gives_way_at_admission_and_never_overfills_the_kv_cache() {
    // 4,096 tokens of KV in 512-token blocks: eight blocks.
    let config = EngineConfig { kv_capacity_tokens: 4096, ..EngineConfig::default() };
    let engine = spawn(config.clone());
    let mut watch = engine.watch_load();
    let checker = tokio::spawn(async move {
        let mut seen = 0;
        while watch.changed().await.is_ok() {
            let load = watch.borrow_and_update().clone();
            assert!(load.kv_used_tokens <= load.kv_capacity_tokens, "over capacity: {load:?}");
            seen += 1;
        }
        seen
    });

    // Six blocks' worth of prompt, cached once its prefill is done.
    let prefix = PrefixBlocks::new((0..6u64).collect::<Vec<_>>());
    engine
        .submit(GenerationRequest::new(3072, 1).with_prefix(prefix.clone()))
        .unwrap()
        .collect_outcome()
        .await
        .unwrap();
    let cached = engine.load();
    assert_eq!((cached.prefix_cache_blocks, cached.kv_used_tokens), (6, 3072), "{cached:?}");

    // 2,100 tokens reserved leave room for three blocks: the three least recently used go.
    let mut big = engine.submit(GenerationRequest::new(2000, 100)).unwrap();
    big.next().await.unwrap();
    let load = engine.load();
    assert_eq!(load.prefix_cache_blocks, 3, "{load:?}");
    assert_eq!(load.kv_used_tokens, 2100 + 3 * 512, "{load:?}");
    big.collect_outcome().await.unwrap();

    // The first blocks of the prefix were the oldest: the ones evicted, so a hit needs them
    // back (a prefix hit is only ever a leading run).
    let again = engine
        .submit(GenerationRequest::new(3072, 1).with_prefix(prefix))
        .unwrap()
        .collect_outcome()
        .await
        .unwrap();
    assert_eq!(again.cached_prompt_tokens, 0, "{again:?}");
    engine.shutdown();
    drop(engine);
    assert!(checker.await.unwrap() > 0);
}
