#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The autoscaler's Prometheus signal source against a real Prometheus server (Debian's
//! `prometheus` package; `scripts/install-test-deps.sh` installs it) scraping two real gateways
//! in front of the same two workers: the snapshot sums the gateways, agrees with their
//! `BoardSignals` (the work rate within the tolerance of `rate()`), and a stopped Prometheus is a missing signal, never a scale-down.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::prometheus::Prometheus;
use common::worker::Worker;
use switchyard::balance::PolicyKind;
use switchyard::gateway::{Gateway, GatewayConfig, GatewayTelemetry};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use switchyard_autoscale::{
    Autoscaler, BoardSignals, Kpa, KpaConfig, PoolSize, PrometheusConfig, PrometheusError, PrometheusSignals,
    ScaleError, Scaler, SignalSource, Signals,
};
use switchyard_telemetry::MetricsRegistry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An in-process worker decoding slowly: a long answer stays in flight for many scrapes.
async fn worker() -> Worker {
    common::worker::in_process(WorkerArgs { speed: 0.05, ..WorkerArgs::default() }).await
}

async fn gateway(workers: &[&Worker]) -> Gateway {
    let backends: Vec<String> = workers.iter().map(|w| format!("http://{}", w.addr)).collect();
    let config = GatewayConfig::single_pool(&backends, PolicyKind::RoundRobin).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let telemetry = GatewayTelemetry::new(MetricsRegistry::new(), true, false);
    Gateway::start_with_telemetry(config, listener, Some(admin), telemetry).unwrap()
}

async fn client(gateway: &Gateway) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", gateway.local_addr())).await.unwrap()
}

/// `n` answers of `tokens` tokens each through `gateway`, at once, in the background.
async fn hold(gateway: &Gateway, n: usize, tokens: u32) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut client = client(gateway).await;
        tasks.push(tokio::spawn(async move {
            let request = worker::request::text_request("sim-llm", &format!("A long story {i}."), tokens);
            let _ = client.model_infer(request).await;
        }));
    }
    tasks
}

/// A scaler that follows every request at once.
struct Following(PoolSize);

impl Scaler for Following {
    async fn set_desired(&mut self, replicas: u32) -> Result<(), ScaleError> {
        self.0 = PoolSize { desired: replicas, current: replicas, ready: replicas };
        Ok(())
    }
    fn size(&self) -> PoolSize {
        self.0
    }
}

/// The work the gateways' balancers started so far, over every endpoint.
fn started_work(gateways: &[&Gateway]) -> u64 {
    gateways
        .iter()
        .flat_map(|g| {
            let board = g.pools()[0].board().clone();
            board.snapshot().into_iter().filter_map(move |e| board.state(&e.endpoint.id))
        })
        .map(|state| state.started_work())
        .sum()
}

fn in_flight_by_endpoint(signals: &[Signals]) -> BTreeMap<String, u32> {
    let mut sum = BTreeMap::new();
    for s in signals {
        for r in &s.replicas {
            *sum.entry(r.id.to_string()).or_default() += r.in_flight;
        }
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_signals_sum_two_gateways_agree_with_their_boards_and_go_missing_when_it_stops() {
    let (a, b) = (worker().await, worker().await);
    let (one, two) = (gateway(&[&a, &b]).await, gateway(&[&a, &b]).await);
    // Answers sent with nothing ahead: both gateways learn each replica's capacity.
    for g in [&one, &two] {
        let mut client = client(g).await;
        for i in 0..4 {
            client
                .model_infer(worker::request::text_request("sim-llm", &format!("Hi {i}."), 1))
                .await
                .unwrap();
        }
    }
    let mut prometheus =
        Prometheus::start("switchyard-gateway", &[one.admin_addr().unwrap(), two.admin_addr().unwrap()])
            .await;
    // Once Prometheus has scraped the picks so far, three long answers through the first gateway
    // and two through the second: five in flight, five picks within the rate's window.
    prometheus
        .until_result("switchyard_endpoint_picks_total", |r| r.as_array().is_some_and(|r| r.len() == 4))
        .await;
    // Every series sampled over a whole rate window first, so that `rate()` below extrapolates
    // over a gap of a scrape interval, not over the half of the window a young series leaves.
    prometheus
        .until_result("min(count_over_time(switchyard_endpoint_started_work_total[10s]))", |r| {
            r[0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|n| n >= 9.0)
        })
        .await;
    let work_before = started_work(&[&one, &two]);
    let held = hold(&one, 3, 400).await;
    let held_two = hold(&two, 2, 400).await;
    prometheus
        .until_result("sum(switchyard_endpoint_in_flight_requests)", |r| {
            r[0]["value"][1].as_str() == Some("5")
        })
        .await;

    let mut config = PrometheusConfig::new(prometheus.url(), "default");
    config.rate_window = Duration::from_secs(10);
    let source = PrometheusSignals::new(config).unwrap();
    // The rate needs two scrapes of the picks in its window; until then the snapshot is missing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let from_prometheus = loop {
        match source.fetch().await {
            Ok(s) if s.in_flight() == 5 => break s,
            Ok(_) | Err(PrometheusError::Missing { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no complete snapshot within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await; // polling interval
    };
    let boards: Vec<Signals> = [&one, &two]
        .iter()
        .map(|g| BoardSignals::new(g.pools()[0].board().clone()).sample_at(tokio::time::Instant::now()))
        .collect();

    // The same replicas, each with the sum of both gateways' requests in flight.
    let summed = in_flight_by_endpoint(&boards);
    assert_eq!(in_flight_by_endpoint(std::slice::from_ref(&from_prometheus)), summed);
    assert_eq!(summed.len(), 2);
    assert_eq!(summed.values().sum::<u32>(), 5, "3 + 2 held answers");
    // Waiting work and the learnt capacity agree too (nothing ends while the answers decode).
    let awaiting: u64 = boards.iter().map(Signals::awaiting_first_byte).sum();
    assert_eq!(from_prometheus.awaiting_first_byte(), awaiting);
    assert_eq!(from_prometheus.pending_work(), boards.iter().map(Signals::pending_work).sum::<u64>());
    for replica in &from_prometheus.replicas {
        let learnt: Vec<f64> = boards
            .iter()
            .flat_map(|s| &s.replicas)
            .filter(|r| r.id == replica.id)
            .filter_map(|r| r.capacity_per_sec)
            .collect();
        let mean = learnt.iter().sum::<f64>() / learnt.len() as f64;
        let got = replica.capacity_per_sec.expect("a learnt capacity");
        assert!((got - mean).abs() <= 1e-6 * mean, "{}: {got} vs the boards' mean {mean}", replica.id);
    }
    // The five held answers started within the rate's window.
    let rate = from_prometheus.arrival_rate.expect("a rate");
    assert!(rate > 0.0, "{rate}");
    // And their work: the boards' counters grew by the held prompts' tokens (nothing else started
    // since Prometheus began), which `rate()` spreads over the window, extrapolated from its first
    // and last scrape to the window's ends (a scrape interval of 1 s at each end: a quarter more
    // at most, allowing for late scrapes on a busy machine).
    let work = (started_work(&[&one, &two]) - work_before) as f64;
    let window = 10.0;
    let work_rate = from_prometheus.work_rate.expect("a work rate from the started-work counter");
    assert!(
        work_rate >= 0.95 * work / window && work_rate <= 1.3 * work / window,
        "prometheus {work_rate} tokens/s vs the boards' {work} tokens in a {window} s window"
    );
    // Both rates are read off the same scrapes: their ratio is the boards' work per request.
    let per_request = work / 5.0;
    assert!(
        (work_rate / rate - per_request).abs() <= 0.05 * per_request,
        "{work_rate} / {rate} vs the boards' {per_request} tokens a request"
    );

    // The polled source feeds an autoscaler: 5 in flight over 4 replicas for a target of 70 a
    // replica is a scale-down (the KPA halves at most).
    let mut polled = source.clone().poll(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while polled.sample().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", polled.last_error());
        tokio::time::sleep(Duration::from_millis(50)).await; // polling interval
    }
    let kpa = || Kpa::new(KpaConfig { target: 100.0, ..KpaConfig::default() });
    let four = PoolSize { desired: 4, current: 4, ready: 4 };
    let mut autoscaler = Autoscaler::new(polled, kpa(), Following(four));
    let live = autoscaler.step().await.unwrap();
    assert!(live.had_signals);
    assert_eq!(live.recommendation.desired, 2, "{live:?}");

    // A gateway goes away: its load would be missing from the sums, so the whole snapshot is.
    for task in held_two {
        task.abort();
    }
    two.shutdown().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let error = loop {
        match source.fetch().await {
            Err(e @ PrometheusError::Missing { .. }) => break e,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "a stopped gateway still counts after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await; // polling interval
    };
    assert!(error.to_string().contains("is down"), "{error}");

    // Prometheus stops: an error naming the query, and a missing signal that keeps the count.
    prometheus.stop().await;
    let error = source.fetch().await.unwrap_err();
    assert!(
        matches!(&error, PrometheusError::Unreachable { query, .. } if query.starts_with("up{")),
        "{error}"
    );
    let polled = source.poll(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while polled.last_error().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the poller has not failed within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling an observable state
    }
    let mut autoscaler = Autoscaler::new(polled, kpa(), Following(four));
    let blind = autoscaler.step().await.unwrap();
    assert!(!blind.had_signals);
    assert_eq!(blind.recommendation.desired, 4, "a missing signal never scales down: {blind:?}");
    assert_eq!(autoscaler.scaler().size(), four);

    for task in held {
        task.abort();
    }
    one.shutdown().await.unwrap();
}
