//! Scale-down under load over real `switchyard worker` processes: the replicas removed have
//! calls in flight, and no call fails (the process scaler drains before it stops a worker);
//! and the real autoscaler (`LlmAware` over the gateway's board, the process scaler) scales the
//! pool up and down under a rising and falling load without failing a call.

mod common;

use std::time::Duration;

use switchyard::bench::scale::autoscaled::{AutoscaledRun, Settings};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker;
use switchyard_autoscale::Scaler;
use switchyard_autoscale::scaler::process::{ProcessConfig, ProcessScaler};
use tokio::task::JoinSet;
use tokio::time::Instant;

async fn until(mut done: impl FnMut() -> bool, what: &str) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < give_up, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling an observable state
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_under_load_fails_no_call() {
    let (gateway, publisher) = common::gateway::one_pool().await;
    let board = gateway.pool("default").unwrap().board().clone();

    // Calls of 300 ms, 8 at once a worker: a replica removed under load has calls running.
    let mut config = ProcessConfig::new(common::BIN);
    config.worker_args =
        ["--kind", "parallel", "--parallel", "8", "--service-ms", "300"].map(String::from).into();
    let mut scaler = ProcessScaler::new(config, publisher, board.clone());
    scaler.set_desired(3).await.unwrap();
    until(|| board.len() == 3, "three replicas in the pool").await;

    // An open loop of calls, one every 10 ms, until told to stop.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(async move {
        let mut calls = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => break,
            }
            let mut client = GrpcInferenceServiceClient::new(channel.clone());
            calls.spawn(async move {
                let mut request = tonic::Request::new(worker::request::text_request("sim-llm", "scale", 4));
                request.set_timeout(Duration::from_secs(10));
                client.model_infer(request).await.map(|_| ())
            });
        }
        let mut ends = Vec::new();
        while let Some(end) = calls.join_next().await {
            ends.push(end.unwrap());
        }
        ends
    });

    // Every replica busy, then two of them removed at once.
    until(|| board.snapshot().iter().all(|e| e.load.in_flight > 0), "every replica has calls in flight")
        .await;
    let leaving: Vec<_> =
        board.snapshot().into_iter().filter(|e| e.endpoint.id.as_str() != "worker-0").collect();
    let in_flight_leaving: u32 = leaving.iter().map(|e| e.load.in_flight).sum();
    assert!(in_flight_leaving > 0);
    scaler.set_desired(1).await.unwrap();
    until(|| board.len() == 1, "the two replicas drain and leave the board").await;
    assert_eq!(board.snapshot()[0].endpoint.id.as_str(), "worker-0", "the newest replicas go first");
    // The load goes on over the one replica left for a moment.
    tokio::time::sleep(Duration::from_millis(500)).await; // more load after the drain, not a wait for a state
    let _ = stop.send(());
    let ends = load.await.unwrap();
    let failed: Vec<_> = ends.iter().filter_map(|e| e.as_ref().err()).collect();
    assert!(ends.len() > 50, "{} calls only", ends.len());
    assert!(
        failed.is_empty(),
        "{} of {} calls failed across the scale-down: {failed:?}",
        failed.len(),
        ends.len()
    );
    scaler.shutdown().await;
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_scales_up_then_down_under_load_and_fails_no_call() {
    // Windows shrunk to a 20 s run (a scale-down needs 3.3 s of demand that fits one replica
    // fewer), a 300 ms cold start, workers of 8 slots at 400 ms (20 calls/s each).
    let settings = Settings::for_run(20.0, Duration::from_millis(300), 1);
    let mut run = AutoscaledRun::start(std::path::Path::new(common::BIN), &settings).await.unwrap();
    // Twice what one replica serves: the autoscaler adds replicas, which join once SERVING.
    run.set_rate(40.0);
    // The most replicas seen ready (serving) at once.
    let most_ready = std::cell::Cell::new(0);
    let up = run
        .until("a scale-up, its replicas ready", Duration::from_secs(30), |p| {
            most_ready.set(most_ready.get().max(p.size.ready));
            p.scale_ups >= 1 && p.size.ready >= 2
        })
        .await
        .unwrap();
    // A fifth of one replica: it drains the extra replicas. A scale-down lets go of as many as
    // the window allows at once, and the balancer sees them leave discovery one by one, so wait
    // until every replica that served is either still ready or drained off the board.
    run.set_rate(4.0);
    let down = run
        .until("a scale-down, its replicas drained off the board", Duration::from_secs(30), |p| {
            most_ready.set(most_ready.get().max(p.size.ready));
            p.scale_downs >= 1
                && p.drained >= 1
                && p.draining == 0
                && p.drained + p.size.ready >= most_ready.get()
        })
        .await
        .unwrap();
    let report = run.finish(Vec::new()).await.unwrap();
    eprintln!("{}", report.summary());
    assert!(up.size.ready >= 2, "{up:?}");
    assert!(down.size.desired < report.desired_max, "{down:?}: desired at most {}", report.desired_max);
    assert!(report.scale_ups >= 1 && report.scale_downs >= 1, "{:?}", report.scale_events);
    assert!(report.ready_max >= 2, "{:?}", report.timeline);
    assert!(!report.drained.is_empty() && report.drained.iter().all(|d| d.left_board_at_s.is_some()));
    let o = &report.outcomes;
    assert!(o.requests > 20, "{o:?}");
    assert_eq!(
        (o.failures, o.ok),
        (0, o.requests),
        "calls failed while the autoscaler scaled: {:?}",
        o.failures_by_status
    );
    assert_eq!(report.failed_during_scale_down, 0);
}
