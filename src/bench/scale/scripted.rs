//! The scripted part of scenario `scale`: explicit scale steps interleaved with the load.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchyard_autoscale::Scaler;
use switchyard_autoscale::scaler::process::ProcessScaler;
use tokio::sync::watch;
use tokio::time::Instant;

use super::traffic::{generate, start_gateway, watch, worker_process};
use super::{
    COLD_START, CONNECTIONS, Outcomes, PHASES, READY_TIMEOUT, SAMPLE_EVERY, ScaleEvent, ScriptedReport,
};
use crate::bench::{BenchArgs, BenchError};

/// Waits until `scaler` has `n` replicas ready, at most [`READY_TIMEOUT`].
async fn until_ready(scaler: &tokio::sync::Mutex<ProcessScaler>, n: u32) -> Result<(), BenchError> {
    let give_up = Instant::now() + READY_TIMEOUT;
    while scaler.lock().await.size().ready < n {
        if Instant::now() >= give_up {
            return Err(BenchError::Setup(format!("{n} replicas not ready within {READY_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling the scaler's observable size
    }
    Ok(())
}

/// The scripted part: [`PHASES`], each `--duration` seconds.
pub(super) async fn run(args: &BenchArgs, exe: &Path) -> Result<ScriptedReport, BenchError> {
    let phase = Duration::from_secs_f64(args.duration);
    let (gateway, publisher, board) = start_gateway(args.proxy_threads()).await?;
    let process = worker_process(exe, COLD_START);
    let scaler = Arc::new(tokio::sync::Mutex::new(ProcessScaler::new(process, publisher, board.clone())));

    // The first phase's replicas, ready before the load begins.
    let (first_n, first_rate) = PHASES[0];
    scaler.lock().await.set_desired(first_n).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    until_ready(&scaler, first_n).await?;
    let channels = crate::bench::load::connect(&[gateway.local_addr().to_string()], CONNECTIONS)
        .await
        .map_err(BenchError::Setup)?;
    let (rate, rate_rx) = watch::channel(first_rate);
    let stop = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let size_of = {
        let scaler = scaler.clone();
        move || scaler.try_lock().ok().map(|s| s.size())
    };
    let (watch_stop, watch_stopped) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(watch(board.clone(), start, size_of, rate_rx.clone(), watch_stopped));
    let generator = tokio::spawn(generate(channels, rate_rx, stop.clone(), 7, start));

    let mut events = Vec::new();
    let mut current = first_n;
    for (i, &(n, r)) in PHASES.iter().enumerate().skip(1) {
        tokio::time::sleep_until(start + phase * i as u32).await;
        let at = Instant::now();
        scaler.lock().await.set_desired(n).await.map_err(|e| BenchError::Setup(e.to_string()))?;
        let ready_after_s = if n > current {
            // Up: the rate rises once the new replicas are ready.
            until_ready(&scaler, n).await?;
            Some(at.elapsed().as_secs_f64())
        } else {
            None
        };
        rate.send_replace(r);
        eprintln!("bench: scale: scripted {current} -> {n} replicas, {r} calls/s");
        events.push(ScaleEvent {
            at_s: at.saturating_duration_since(start).as_secs_f64(),
            from: current,
            to: n,
            ready_after_s,
        });
        current = n;
    }
    tokio::time::sleep_until(start + phase * PHASES.len() as u32).await;
    stop.notify_one();
    let (calls, not_sent) = generator.await.map_err(|e| BenchError::Setup(format!("load generator: {e}")))?;
    // Let the last sample see the end, then stop the watcher and the replicas.
    tokio::time::sleep(SAMPLE_EVERY).await;
    let _ = watch_stop.send(());
    let watched = watcher.await.map_err(|e| BenchError::Setup(format!("watcher: {e}")))?;
    let scaler =
        Arc::try_unwrap(scaler).map_err(|_| BenchError::Setup("the scaler is still shared".into()))?;
    scaler.into_inner().shutdown().await;
    if let Err(e) = gateway.shutdown().await {
        eprintln!("bench: warning: gateway: {e}");
    }

    let drained = watched.drained;
    Ok(ScriptedReport {
        scaling: "explicit scale steps interleaved with the load (up: rate raised once the new replicas are ready; \
                  down: rate lowered and replicas removed at once)"
            .into(),
        phase_s: args.duration,
        phases: PHASES.to_vec(),
        outcomes: Outcomes::of(&calls, not_sent),
        scale_downs: events.iter().filter(|e| e.to < e.from).count(),
        scale_events: events,
        drained_with_calls_in_flight: drained.iter().filter(|d| d.in_flight_at_removal > 0).count(),
        drained,
        timeline: watched.timeline,
    })
}
