//! The engine's behaviour under tokio's paused clock: every time asserted is virtual.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::PrefixBlocks;
use switchyard_sim::{
    EngineConfig, EngineHandle, GenerationOutcome, GenerationRequest, PREFIX_HIT_RATE, SimError, SubmitError,
};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

fn spawn(config: EngineConfig) -> EngineHandle {
    EngineHandle::spawn(config).expect("valid config")
}

async fn run_one(engine: &EngineHandle, req: GenerationRequest) -> GenerationOutcome {
    engine.submit(req).expect("submitted").collect_outcome().await.expect("finished")
}

/// Submits all requests at once and collects every outcome, in submission order.
async fn run_all(engine: &EngineHandle, reqs: Vec<GenerationRequest>) -> Vec<GenerationOutcome> {
    let gens: Vec<_> = reqs.into_iter().map(|r| engine.submit(r).expect("submitted")).collect();
    futures::future::join_all(gens.into_iter().map(|g| g.collect_outcome()))
        .await
        .into_iter()
        .map(|r| r.expect("finished"))
        .collect()
}

fn close(a: Duration, b: Duration, tolerance: Duration) -> bool {
    a.abs_diff(b) <= tolerance
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn ttft_grows_with_prompt_length_and_matches_the_prefill_cost() {
    let config = EngineConfig::default();
    let engine = spawn(config.clone());
    let mut last = Duration::ZERO;
    for prompt in [100, 1000, 4000, 16_000] {
        let out = run_one(&engine, GenerationRequest::new(prompt, 1)).await;
        assert!(out.ttft > last, "prompt {prompt}: {:?} after {last:?}", out.ttft);
        assert!(close(out.ttft, config.prefill_time(u64::from(prompt)), MS), "{out:?}");
        assert_eq!(out.queued, Duration::ZERO);
        assert_eq!(out.total, out.ttft, "one output token: done at the first");
        last = out.ttft;
    }
}

#[tokio::test(start_paused = true)]
async fn a_cached_prefix_skips_its_prefill() {
    let engine = spawn(EngineConfig::default());
    let prefix = PrefixBlocks::new((0..16u64).collect::<Vec<_>>());
    let req = GenerationRequest::new(8000, 4).with_prefix(prefix);
    let first = run_one(&engine, req.clone()).await;
    let second = run_one(&engine, req).await;
    assert_eq!(first.cached_prompt_tokens, 0);
    // 8000 tokens hold 15 full 512-token blocks; the 16th id names a partial block.
    assert_eq!(second.cached_prompt_tokens, 15 * 512);
    assert!(second.ttft < first.ttft / 2, "{second:?} vs {first:?}");
    let load = engine.load();
    assert_eq!(load.prefix_cache_blocks, 15);
    assert_eq!((load.prefix_hit_blocks, load.prefix_lookup_blocks), (15, 30));
    assert_eq!(engine.reported_load().named[PREFIX_HIT_RATE], 0.5);

    // A request sharing only the first blocks hits those, up to the first miss.
    let partial = PrefixBlocks::new(vec![0, 1, 2, 99, 4]);
    let out = run_one(&engine, GenerationRequest::new(3000, 1).with_prefix(partial)).await;
    assert_eq!(out.cached_prompt_tokens, 3 * 512);
}

#[tokio::test(start_paused = true)]
async fn a_fully_cached_prompt_still_computes_its_last_token() {
    let engine = spawn(EngineConfig::default());
    let req = GenerationRequest::new(1024, 1).with_prefix(PrefixBlocks::new(vec![7, 8]));
    run_one(&engine, req.clone()).await;
    let out = run_one(&engine, req).await;
    assert_eq!(out.cached_prompt_tokens, 1023);
}

#[tokio::test(start_paused = true)]
async fn the_batch_limit_queues_the_next_request() {
    let engine = spawn(EngineConfig { max_batch: 1, ..EngineConfig::default() });
    let out = run_all(&engine, vec![GenerationRequest::new(500, 20), GenerationRequest::new(500, 20)]).await;
    assert_eq!(out[0].queued, Duration::ZERO);
    assert!(close(out[1].queued, out[0].total, MS), "{out:?}");
    assert!(close(out[1].total, out[0].total * 2, MS), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn half_speed_doubles_every_time() {
    let reqs = || vec![GenerationRequest::new(3000, 50), GenerationRequest::new(200, 80)];
    let fast = run_all(&spawn(EngineConfig::default()), reqs()).await;
    let slow = run_all(&spawn(EngineConfig { speed: 0.5, ..EngineConfig::default() }), reqs()).await;
    for (f, s) in fast.iter().zip(&slow) {
        assert!(close(s.ttft, f.ttft * 2, MS), "{s:?} vs {f:?}");
        assert!(close(s.total, f.total * 2, MS), "{s:?} vs {f:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn kv_capacity_bounds_admission() {
    let config = EngineConfig { kv_capacity_tokens: 1000, ..EngineConfig::default() };
    let engine = spawn(config);
    let gens: Vec<_> = (0..2).map(|_| engine.submit(GenerationRequest::new(400, 200)).unwrap()).collect();
    tokio::task::yield_now().await;
    let load = engine.load();
    assert_eq!((load.running, load.queue_depth), (1, 1), "600 + 600 tokens exceed 1000");
    assert_eq!(load.kv_used_tokens, 600);
    assert!((load.kv_cache_utilization - 0.6).abs() < 1e-9);
    let out: Vec<_> = futures::future::join_all(gens.into_iter().map(|g| g.collect_outcome())).await;
    let (a, b) = (out[0].as_ref().unwrap(), out[1].as_ref().unwrap());
    assert!(close(b.queued, a.total, MS), "{a:?} {b:?}");

    // Something that could never fit is refused at once rather than blocking the queue.
    let err = engine.submit(GenerationRequest::new(2000, 1)).unwrap_err();
    assert_eq!(
        err,
        SubmitError::PromptTooLong { prompt_tokens: 2000, max_tokens: 1, kv_capacity_tokens: 1000 }
    );
    assert!(err.to_string().contains("1000"), "{err}");
    assert!(matches!(
        engine.submit(GenerationRequest::new(900, 101)),
        Err(SubmitError::PromptTooLong { .. })
    ));
    assert_eq!(engine.load().completed, 2);
}

#[tokio::test(start_paused = true)]
async fn decode_slows_with_the_batch_context() {
    let alone = run_one(&spawn(EngineConfig::default()), GenerationRequest::new(100, 50)).await;
    let crowded =
        run_all(&spawn(EngineConfig::default()), (0..32).map(|_| GenerationRequest::new(4000, 50)).collect())
            .await;
    let alone_tpot = alone.time_per_output_token();
    let crowded_tpot = crowded[0].time_per_output_token();
    assert!(
        alone_tpot > Duration::from_micros(6000) && alone_tpot < Duration::from_micros(7000),
        "{alone_tpot:?}"
    );
    assert!(crowded_tpot > alone_tpot * 3 / 2, "{crowded_tpot:?} vs {alone_tpot:?}");
}

#[tokio::test(start_paused = true)]
async fn saturated_throughput_rises_with_the_batch_then_flattens() {
    let mut throughput = Vec::new();
    for batch in [1u32, 4, 16, 64, 256] {
        let engine = spawn(EngineConfig { max_batch: batch, ..EngineConfig::default() });
        let start = Instant::now();
        let n = 2 * batch;
        let out = run_all(&engine, (0..n).map(|_| GenerationRequest::new(1000, 200)).collect()).await;
        let tokens: u32 = out.iter().map(|o| o.output_tokens).sum();
        throughput.push(f64::from(tokens) / start.elapsed().as_secs_f64());
    }
    let gain: Vec<f64> = throughput.windows(2).map(|w| w[1] / w[0]).collect();
    assert!(gain.iter().all(|&g| g > 1.0), "{throughput:?}");
    assert!(gain[0] > 3.0, "batching pays at small batches: {throughput:?}");
    assert!(gain[3] < gain[0] / 1.5, "and flattens as KV reads dominate: {throughput:?}");
}

#[tokio::test(start_paused = true)]
async fn dropping_a_generation_frees_its_slot() {
    let engine = spawn(EngineConfig { max_batch: 1, ..EngineConfig::default() });
    let mut long = engine.submit(GenerationRequest::new(100, 10_000)).unwrap();
    let short = engine.submit(GenerationRequest::new(100, 5)).unwrap();
    let first = long.next().await.unwrap();
    assert_eq!(first.index, 0);
    drop(long);
    let out = short.collect_outcome().await.unwrap();
    // Admitted one step after the cancel, not 10,000 tokens later.
    assert!(out.queued < Duration::from_millis(20), "{out:?}");
    assert_eq!(engine.load().running, 0);
    assert_eq!(engine.load().kv_used_tokens, 0);
    assert_eq!(engine.load().completed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses() {
    let mut engine = spawn(EngineConfig { max_batch: 1, max_queue: 2, ..EngineConfig::default() });
    // The engine task has not run yet, so all three wait.
    let _a = engine.submit(GenerationRequest::new(10, 1)).unwrap();
    let _b = engine.ready().await.unwrap().call(GenerationRequest::new(10, 1)).await.unwrap();
    let err = engine.ready().await.unwrap().call(GenerationRequest::new(10, 1)).await.unwrap_err();
    assert_eq!(err, SubmitError::QueueFull { max_queue: 2 });
    assert_eq!(engine.load().queue_depth, 2);
    assert_eq!(engine.reported_load().queue_depth, 2);
    assert_eq!(engine.reported_load().capacity, 1);
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_and_configs_are_refused_with_names() {
    let err = EngineHandle::spawn(EngineConfig { speed: -1.0, ..EngineConfig::default() }).unwrap_err();
    assert_eq!(err.to_string(), "speed must be > 0, got -1");
    let engine = spawn(EngineConfig { max_tokens_limit: 100, ..EngineConfig::default() });
    assert_eq!(engine.submit(GenerationRequest::new(0, 1)).unwrap_err(), SubmitError::EmptyPrompt);
    assert_eq!(engine.submit(GenerationRequest::new(1, 0)).unwrap_err(), SubmitError::ZeroMaxTokens);
    assert_eq!(
        engine.submit(GenerationRequest::new(1, 101)).unwrap_err(),
        SubmitError::MaxTokensTooLarge { max_tokens: 101, limit: 100 }
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_stream_in_order_and_end_after_the_last() {
    let engine = spawn(EngineConfig::default());
    let gen_ = engine.submit(GenerationRequest::new(50, 4)).unwrap();
    assert_eq!(gen_.prompt_tokens(), 50);
    let tokens: Vec<_> = gen_.collect().await;
    assert_eq!(tokens.iter().map(|t| t.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(tokens.iter().map(|t| t.last).collect::<Vec<_>>(), [false, false, false, true]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_generations_early() {
    let engine = spawn(EngineConfig::default());
    let mut g = engine.submit(GenerationRequest::new(100, 1000)).unwrap();
    g.next().await.unwrap();
    engine.shutdown();
    assert_eq!(g.collect_outcome().await.unwrap_err(), SimError::Stopped { generated: 2, expected: 1000 });
    assert_eq!(engine.submit(GenerationRequest::new(1, 1)).unwrap_err(), SubmitError::Stopped);
    assert!(engine.is_stopped());
}

#[tokio::test(start_paused = true)]
async fn the_engine_finishes_its_work_after_the_last_handle_and_then_stops() {
    let engine = spawn(EngineConfig::default());
    let mut load = engine.watch_load();
    let g = engine.submit(GenerationRequest::new(100, 20)).unwrap();
    drop(engine);
    assert_eq!(g.collect_outcome().await.unwrap().output_tokens, 20);
    // The engine task exits, dropping the last owner of the load channel.
    while load.changed().await.is_ok() {}
    assert_eq!(load.borrow().completed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_long_prefill_is_chunked_and_does_not_stall_decodes() {
    let config = EngineConfig::default();
    let engine = spawn(config.clone());
    let mut decoding = engine.submit(GenerationRequest::new(100, 200)).unwrap();
    decoding.next().await.unwrap();
    let long = engine.submit(GenerationRequest::new(30_000, 1)).unwrap();
    let mut worst = Duration::ZERO;
    let mut at = Instant::now();
    for _ in 0..20 {
        decoding.next().await.unwrap();
        worst = worst.max(at.elapsed());
        at = Instant::now();
    }
    let whole = config.prefill_time(30_000);
    assert!(worst < whole / 2, "one step holds at most an 8192-token chunk: {worst:?} vs {whole:?}");
    assert!(long.collect_outcome().await.unwrap().ttft > whole);
}

#[tokio::test(start_paused = true)]
async fn runs_are_reproducible() {
    async fn run() -> Vec<GenerationOutcome> {
        let engine =
            spawn(EngineConfig { max_batch: 8, kv_capacity_tokens: 20_000, ..EngineConfig::default() });
        let reqs = (0..40u32)
            .map(|i| {
                GenerationRequest::new(200 + (i * 977) % 3000, 1 + (i * 31) % 120)
                    .with_prefix(PrefixBlocks::new(vec![u64::from(i % 3), 100 + u64::from(i % 5)]))
            })
            .collect();
        run_all(&engine, reqs).await
    }
    assert_eq!(run().await, run().await);
}

/// Waits (in virtual time) until the published load satisfies `f`.
async fn load_until(engine: &EngineHandle, f: impl FnMut(&switchyard_sim::ReplicaLoad) -> bool) {
    let mut load = engine.watch_load();
    load.wait_for(f).await.expect("the engine runs");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_queued_request_leaves_the_queue_at_once() {
    let engine = spawn(EngineConfig { max_batch: 1, ..EngineConfig::default() });
    let mut running = engine.submit(GenerationRequest::new(100, 1000)).unwrap();
    let queued = engine.submit(GenerationRequest::new(5000, 10)).unwrap();
    running.next().await.unwrap();
    let before = engine.load();
    assert_eq!((before.running, before.queue_depth), (1, 1));
    drop(queued);
    // No step has passed: the queue is empty the moment the caller goes.
    let after = engine.load();
    assert_eq!((after.running, after.queue_depth, after.cancelled), (1, 0, 1));
    assert_eq!(after.kv_used_tokens, before.kv_used_tokens, "a queued request holds no KV");
    let next = run_one(&engine, GenerationRequest::new(100, 1)).await;
    assert!(next.queued >= Duration::from_secs(5), "still behind the running request: {next:?}");
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn a_request_cancelled_while_prefilling_frees_its_kv_at_once() {
    let config = EngineConfig::default();
    let engine = spawn(config.clone());
    // 64 k tokens: eight chunks of 8,192, several seconds of prefill.
    let long = engine.submit(GenerationRequest::new(64_000, 100)).unwrap();
    load_until(&engine, |l| l.running == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // into the prefill, in virtual time
    let during = engine.load();
    assert_eq!(during.kv_used_tokens, 64_100, "prompt + outputs reserved at admission");
    drop(long);
    let after = engine.load();
    assert_eq!((after.running, after.kv_used_tokens, after.cancelled), (0, 0, 1));
    // The next request starts when the step in progress ends, not after the long prefill.
    let start = Instant::now();
    let next = run_one(&engine, GenerationRequest::new(100, 1)).await;
    assert!(next.queued < Duration::from_secs(1), "{next:?}");
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    assert_eq!(engine.load().completed, 1);
    // Its prefix was never completed, so nothing of it was cached.
    assert_eq!(engine.load().prefix_cache_blocks, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_cancelled_while_decoding_frees_its_kv_at_once() {
    let engine = spawn(EngineConfig::default());
    let mut a = engine.submit(GenerationRequest::new(1000, 10_000)).unwrap();
    let mut b = engine.submit(GenerationRequest::new(2000, 10_000)).unwrap();
    for _ in 0..5 {
        a.next().await.unwrap();
        b.next().await.unwrap();
    }
    assert_eq!(engine.load().kv_used_tokens, 11_000 + 12_000);
    drop(a);
    let after = engine.load();
    assert_eq!((after.running, after.kv_used_tokens, after.cancelled), (1, 12_000, 1));
    drop(b);
    let after = engine.load();
    assert_eq!((after.running, after.kv_used_tokens, after.cancelled), (0, 0, 2));
    assert_eq!(after.completed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_past_its_deadline_is_dropped_before_prefill() {
    let engine = spawn(EngineConfig { max_batch: 1, ..EngineConfig::default() });
    // About 6.5 s of decoding ahead of the others.
    let running = engine.submit(GenerationRequest::new(100, 1000)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    let late = engine.submit(GenerationRequest::new(8000, 10).with_deadline(deadline)).unwrap();
    let patient = engine.submit(GenerationRequest::new(100, 1)).unwrap();
    let err = late.collect_outcome().await.unwrap_err();
    let SimError::DeadlineExceeded { queued } = err else { panic!("{err:?}") };
    // Dropped at the first step boundary after the deadline, not when its turn came.
    assert!(close(queued, Duration::from_secs(1), Duration::from_millis(20)), "{queued:?}");
    assert_eq!(
        err.to_string(),
        format!("the deadline passed after {queued:?} in the queue, before the request ran")
    );
    let load = engine.load();
    assert_eq!((load.running, load.queue_depth, load.expired, load.cancelled), (1, 1, 1, 0));
    assert_eq!(running.collect_outcome().await.unwrap().output_tokens, 1000);
    let out = patient.collect_outcome().await.unwrap();
    // No prefill of the expired 8,000-token prompt between the two.
    assert!(out.ttft - out.queued < Duration::from_millis(20), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_only_bounds_the_wait_in_the_queue() {
    let engine = spawn(EngineConfig::default());
    let deadline = Instant::now() + Duration::from_millis(50);
    let out = run_one(&engine, GenerationRequest::new(100, 100).with_deadline(deadline)).await;
    assert!(out.total > Duration::from_millis(50), "admitted in time, so it runs to its end: {out:?}");
    assert_eq!(engine.load().expired, 0);
}

#[tokio::test(start_paused = true)]
async fn a_model_that_stops_before_max_tokens_ends_its_stream_there_having_reserved_max_tokens() {
    let engine = spawn(EngineConfig::default());
    let mut generation =
        engine.submit(GenerationRequest::new(1000, 512).with_output_tokens(40)).expect("submitted");
    assert_eq!((generation.max_tokens(), generation.output_tokens()), (512, 40));
    let first = generation.next().await.expect("a first token");
    assert_eq!(engine.load().kv_used_tokens, 1000 + 512, "the reservation covers max_tokens");
    assert!(!first.last);
    let mut tokens = vec![first];
    while let Some(token) = generation.next().await {
        tokens.push(token);
    }
    assert_eq!(tokens.len(), 40);
    assert!(tokens[39].last && tokens[..39].iter().all(|t| !t.last));
    assert_eq!(engine.load().completed, 1);
    // Never more than max_tokens, never fewer than one.
    let out = run_one(&engine, GenerationRequest::new(100, 8).with_output_tokens(100)).await;
    assert_eq!(out.output_tokens, 8);
    let out = run_one(&engine, GenerationRequest::new(100, 8).with_output_tokens(0)).await;
    assert_eq!(out.output_tokens, 1);
}
