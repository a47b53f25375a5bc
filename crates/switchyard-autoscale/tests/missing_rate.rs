#![allow(clippy::unwrap_used)]
//! A snapshot without an arrival rate (a source that lost its counters, a first sample) is a
//! missing signal for the LLM-aware recommender, not a rate of zero: it never lowers the count
//! nor scales an idle-looking pool to zero, while the same snapshot with a rate of zero does.
//! Under tokio's paused clock.

use std::time::Duration;

use switchyard_autoscale::{
    Bounds, LlmAware, LlmAwareConfig, PoolSize, Recommender, ReplicaSignals, Signals,
};
use switchyard_core::EndpointId;
use tokio::time::Instant;

/// `n` replicas that learnt 1000 tokens a second each, with `pending_work` tokens waiting on each.
fn pool(n: u32, pending_work: u64) -> Signals {
    let replicas = (0..n)
        .map(|i| ReplicaSignals {
            id: EndpointId::new(format!("r{i}")),
            in_flight: u32::from(pending_work > 0),
            awaiting_first_byte: u32::from(pending_work > 0),
            pending_work,
            capacity_per_sec: Some(1000.0),
            report: None,
        })
        .collect();
    Signals::new(Instant::now(), replicas).with_held(0)
}

fn size(n: u32) -> PoolSize {
    PoolSize { desired: n, current: n, ready: n }
}

/// Decides once a second for `secs` seconds from `signals()`, following every decision; the
/// desired counts.
async fn run(r: &mut LlmAware, mut n: u32, secs: u32, signals: impl Fn(u32) -> Signals) -> Vec<u32> {
    let mut desired = Vec::new();
    for _ in 0..secs {
        tokio::time::advance(Duration::from_secs(1)).await;
        n = r.recommend(Instant::now(), size(n), Some(&signals(n))).desired;
        desired.push(n);
    }
    desired
}

#[tokio::test(start_paused = true)]
async fn a_missing_arrival_rate_never_scales_down_and_a_zero_rate_does() {
    let config = LlmAwareConfig { bounds: Bounds { min: 1, max: 8 }, ..LlmAwareConfig::default() };
    let mut r = LlmAware::new(config);
    // A light load with its rate: 100 tokens a second for four replicas of 1000.
    let steady = run(&mut r, 4, 5, |n| pool(n, 0).with_arrival_rate(1.0).with_work_rate(100.0)).await;
    assert_eq!(steady, vec![4; 5]);
    // The rates go missing for three scale-down windows: the count stays.
    let blind = run(&mut r, 4, 270, |n| pool(n, 0)).await;
    assert!(blind.iter().all(|&d| d == 4), "a missing rate lowered the count: {blind:?}");
    // The same snapshots with a rate of zero: down to the minimum at once (the window has
    // passed, and no demand in it needs more), and there it stays.
    let zero = run(&mut r, 4, 60, |n| pool(n, 0).with_arrival_rate(0.0).with_work_rate(0.0)).await;
    assert!(zero.iter().all(|&d| d == 1), "{zero:?}");
}

#[tokio::test(start_paused = true)]
async fn a_missing_rate_still_scales_up_on_the_backlog() {
    let config = LlmAwareConfig { bounds: Bounds { min: 1, max: 8 }, ..LlmAwareConfig::default() };
    let mut r = LlmAware::new(config);
    // 6000 tokens waiting on each of two replicas, to drain within 5 s at 1000 a second: 2.4
    // replicas of work, over a target of 0.9: 3.
    let up = run(&mut r, 2, 1, |n| pool(n, 6000)).await;
    assert_eq!(up, vec![3]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_pool_without_a_rate_is_not_scaled_to_zero() {
    let config = LlmAwareConfig {
        bounds: Bounds { min: 0, max: 8 },
        idle_to_zero: Some(Duration::from_secs(10)),
        ..LlmAwareConfig::default()
    };
    let mut r = LlmAware::new(config);
    let blind = run(&mut r, 1, 60, |n| pool(n, 0)).await;
    assert!(blind.iter().all(|&d| d == 1), "scaled to zero on a missing rate: {blind:?}");
    let idle = run(&mut r, 1, 12, |n| pool(n, 0).with_arrival_rate(0.0)).await;
    assert_eq!(idle.last(), Some(&0), "{idle:?}");
}
