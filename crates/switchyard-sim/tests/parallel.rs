//! The parallel kind of replica under tokio's paused clock: `k` slots at a fixed service time,
//! FIFO queueing for the rest. Every time asserted is virtual and exact.

use std::time::Duration;

use futures::StreamExt;
use switchyard_sim::{EngineConfig, EngineHandle, GenerationRequest, ReplicaKind, SimError, SubmitError};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn spawn(config: EngineConfig) -> EngineHandle {
    EngineHandle::spawn(config).expect("valid config")
}

/// Submits `n` requests at once and returns each one's total time, in submission order.
async fn totals(engine: &EngineHandle, n: usize) -> Vec<Duration> {
    let gens: Vec<_> =
        (0..n).map(|_| engine.submit(GenerationRequest::new(100, 3)).expect("submitted")).collect();
    futures::future::join_all(gens.into_iter().map(|g| g.collect_outcome()))
        .await
        .into_iter()
        .map(|r| r.expect("finished").total)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn k_requests_run_in_parallel_and_the_rest_queue() {
    let engine = spawn(EngineConfig::parallel(4, 10 * MS));
    let times = totals(&engine, 10).await;
    // Four at once in 10 ms, the next four in the following 10 ms, then two.
    assert_eq!(times, [vec![10 * MS; 4], vec![20 * MS; 4], vec![30 * MS; 2]].concat());
    assert_eq!(engine.load().completed, 10);
}

#[tokio::test(start_paused = true)]
async fn service_time_ignores_size_and_scales_with_speed() {
    let slow = spawn(EngineConfig { speed: 0.25, ..EngineConfig::parallel(8, 10 * MS) });
    let small = slow.submit(GenerationRequest::new(1, 1)).unwrap().collect_outcome().await.unwrap();
    let big = slow.submit(GenerationRequest::new(50_000, 500)).unwrap().collect_outcome().await.unwrap();
    assert_eq!(small.total, 40 * MS);
    assert_eq!(big.total, 40 * MS);
    assert_eq!(big.ttft, big.total, "every token comes at the end of the service");
    assert_eq!(big.output_tokens, 500);
}

#[tokio::test(start_paused = true)]
async fn tokens_all_come_at_the_end_of_service() {
    let engine = spawn(EngineConfig::parallel(1, 10 * MS));
    let start = Instant::now();
    let mut generation = engine.submit(GenerationRequest::new(10, 3)).unwrap();
    let mut seen = Vec::new();
    while let Some(token) = generation.next().await {
        seen.push((token.index, token.last, Instant::now() - start));
    }
    assert_eq!(seen, vec![(0, false, 10 * MS), (1, false, 10 * MS), (2, true, 10 * MS)]);
}

#[tokio::test(start_paused = true)]
async fn a_late_arrival_takes_a_free_slot_at_once() {
    let engine = spawn(EngineConfig::parallel(2, 10 * MS));
    let first = engine.submit(GenerationRequest::new(10, 1)).unwrap();
    let first = tokio::spawn(first.collect_outcome());
    tokio::time::sleep(3 * MS).await;
    let second = engine.submit(GenerationRequest::new(10, 1)).unwrap().collect_outcome().await.unwrap();
    assert_eq!(second.queued, Duration::ZERO);
    assert_eq!(second.total, 10 * MS, "not held until the first one's end of service");
    assert_eq!(first.await.unwrap().unwrap().total, 10 * MS);
}

#[tokio::test(start_paused = true)]
async fn the_load_counts_slots_and_queue() {
    let engine = spawn(EngineConfig::parallel(2, 10 * MS));
    let gens: Vec<_> = (0..5).map(|_| engine.submit(GenerationRequest::new(10, 1)).unwrap()).collect();
    tokio::task::yield_now().await;
    let load = engine.load();
    assert_eq!((load.running, load.queue_depth, load.max_batch), (2, 3, 2));
    assert_eq!(engine.reported_load().capacity, 2);
    drop(gens);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_request_frees_its_slot() {
    let engine = spawn(EngineConfig::parallel(1, 10 * MS));
    let running = engine.submit(GenerationRequest::new(10, 1)).unwrap();
    let waiting = engine.submit(GenerationRequest::new(10, 1)).unwrap();
    let waiting = tokio::spawn(waiting.collect_outcome());
    tokio::time::sleep(4 * MS).await;
    drop(running);
    let out = waiting.await.unwrap().unwrap();
    assert_eq!(out.queued, 4 * MS);
    assert_eq!(out.total, 14 * MS);
    assert_eq!(engine.load().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded_and_deadlines_drop_queued_requests() {
    let engine = spawn(EngineConfig { max_queue: 2, ..EngineConfig::parallel(1, 10 * MS) });
    let _running = engine.submit(GenerationRequest::new(10, 1)).unwrap();
    tokio::task::yield_now().await;
    let expiring =
        engine.submit(GenerationRequest::new(10, 1).with_deadline(Instant::now() + 5 * MS)).unwrap();
    let _queued = engine.submit(GenerationRequest::new(10, 1)).unwrap();
    let refused = engine.submit(GenerationRequest::new(10, 1)).unwrap_err();
    assert_eq!(refused, SubmitError::QueueFull { max_queue: 2 });
    let err = expiring.collect_outcome().await.unwrap_err();
    assert!(matches!(err, SimError::DeadlineExceeded { .. }), "{err:?}");
    assert_eq!(engine.load().expired, 1);
}

#[test]
fn a_zero_service_time_is_refused_and_the_kind_round_trips() {
    let err = EngineConfig::parallel(4, Duration::ZERO).validate().unwrap_err();
    assert_eq!(err.field, "kind.service_time_ms");
    let config: EngineConfig =
        serde_json::from_str(r#"{"max_batch": 8, "kind": {"type": "parallel", "service_time_ms": 10}}"#)
            .unwrap();
    assert_eq!(config, EngineConfig::parallel(8, 10 * MS));
    assert_eq!(EngineConfig::default().kind, ReplicaKind::Llm);
    assert_eq!(config.parallel_service_time(), Some(10 * MS));
}
