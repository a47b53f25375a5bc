#![allow(clippy::unwrap_used, clippy::expect_used, clippy::async_yields_async)]
//! The shed queue under the paused clock, over a service of one slot (tower's ConcurrencyLimit
//! over a service that takes 100 ms a request).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::{Deadline, Outcome, Priority, StatusLayer};
use switchyard_shed::{Reason, ShedConfig, ShedLayer};
use tokio::time::Instant;
use tower::limit::ConcurrencyLimit;
use tower::{BoxError, Layer, Service, ServiceExt};

type Seen = Arc<Mutex<Vec<(Priority, Option<Deadline>, Instant)>>>;

/// One slot, 100 ms a request; records what reached it.
fn backend(
    seen: &Seen,
) -> ConcurrencyLimit<
    impl Service<http::Request<()>, Response = http::Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static,
> {
    let seen = seen.clone();
    ConcurrencyLimit::new(
        tower::service_fn(move |req: http::Request<()>| {
            let seen = seen.clone();
            async move {
                let e = req.extensions();
                seen.lock().unwrap().push((
                    e.get::<Priority>().copied().unwrap_or_default(),
                    e.get::<Deadline>().copied(),
                    Instant::now(),
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Infallible>(http::Response::new(String::from("ok")))
            }
        }),
        1,
    )
}

fn request(priority: Priority) -> http::Request<()> {
    let mut req = http::Request::new(());
    req.extensions_mut().insert(priority);
    req
}

/// Lets every spawned task run until it waits on the clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_queue_bound_holds_and_every_request_is_served_or_counted() {
    let seen = Seen::default();
    let shed = ShedLayer::new(ShedConfig { max_queue: 4, ..ShedConfig::default() });
    let service = shed.layer(backend(&seen));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let priority = [Priority::Sheddable, Priority::Standard, Priority::Critical][i % 3];
        tasks.push(tokio::spawn(service.clone().oneshot(request(priority))));
        settle().await;
        assert!(shed.stats().waiting <= 4, "{:?}", shed.stats());
        if i % 4 == 0 {
            tokio::time::advance(Duration::from_millis(30)).await;
            settle().await;
            assert!(shed.stats().waiting <= 4, "{:?}", shed.stats());
        }
    }
    let mut ok = 0;
    for task in tasks {
        ok += u64::from(task.await.unwrap().is_ok());
    }
    let stats = shed.stats();
    assert_eq!(ok, seen.lock().unwrap().len() as u64);
    assert_eq!(ok + stats.refused_total(), 60, "{stats:?}");
    assert_eq!(stats.admitted.iter().sum::<u64>(), ok);
    assert!(stats.refused_total() > 0);
}

#[tokio::test(start_paused = true)]
async fn expired_requests_never_reach_the_backend() {
    let seen = Seen::default();
    let shed = ShedLayer::new(ShedConfig::default());
    let service = shed.layer(backend(&seen));
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let mut req = request(Priority::Critical);
        // Deadlines from 0 to 950 ms: the backend serves 10 a second, so most cannot be met.
        let timeout = format!("{}m", i * 50);
        req.headers_mut().insert("grpc-timeout", timeout.parse().unwrap());
        tasks.push(tokio::spawn(service.clone().oneshot(req)));
        settle().await;
    }
    let mut failures = 0;
    for task in tasks {
        failures += u64::from(task.await.unwrap().is_err());
    }
    let seen = seen.lock().unwrap();
    for (_, deadline, at) in seen.iter() {
        let deadline = deadline.expect("the deadline went into the extensions");
        assert!(!deadline.is_past(*at), "a request reached the backend at or after its deadline");
    }
    let stats = shed.stats();
    assert!(stats.refused(Reason::Expired, Priority::Critical) >= 1, "{stats:?}");
    assert_eq!(failures, stats.refused_total(), "{stats:?}");
    assert_eq!(seen.len() as u64 + failures, 20);
}

#[tokio::test(start_paused = true)]
async fn the_lowest_class_is_shed_first_and_critical_only_when_nothing_else_is_left() {
    let seen = Seen::default();
    let shed = ShedLayer::new(ShedConfig { max_queue: 3, ..ShedConfig::default() });
    let service = shed.layer(backend(&seen));
    let spawn = |priority| {
        let task = tokio::spawn(service.clone().oneshot(request(priority)));
        async move {
            settle().await;
            task
        }
    };
    let busy = spawn(Priority::Standard).await; // takes the slot
    let mut sheddable = Vec::new();
    for _ in 0..3 {
        sheddable.push(spawn(Priority::Sheddable).await);
    }
    let mut standard = Vec::new();
    for _ in 0..3 {
        standard.push(spawn(Priority::Standard).await);
    }
    let stats = shed.stats();
    assert_eq!(stats.refused(Reason::Displaced, Priority::Sheddable), 3, "{stats:?}");
    assert_eq!(stats.refused_in(Priority::Standard), 0);
    let critical = spawn(Priority::Critical).await;
    assert_eq!(shed.stats().refused(Reason::Displaced, Priority::Standard), 1);
    // A late sheddable finds the queue full of more important requests.
    let late = spawn(Priority::Sheddable).await;
    assert_eq!(shed.stats().refused(Reason::QueueFull, Priority::Sheddable), 1);
    let extra_critical = [spawn(Priority::Critical).await, spawn(Priority::Critical).await];
    assert_eq!(shed.stats().refused_in(Priority::Standard), 3, "every standard gave way first");
    assert_eq!(shed.stats().refused_in(Priority::Critical), 0);
    let one_too_many = spawn(Priority::Critical).await;
    let stats = shed.stats();
    assert_eq!(stats.refused(Reason::QueueFull, Priority::Critical), 1, "only criticals left: {stats:?}");

    for t in sheddable.into_iter().chain(standard).chain([late, one_too_many]) {
        assert!(t.await.unwrap().is_err());
    }
    for t in [busy, critical].into_iter().chain(extra_critical) {
        assert!(t.await.unwrap().is_ok());
    }
    let order: Vec<Priority> = seen.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(order, [Priority::Standard, Priority::Critical, Priority::Critical, Priority::Critical]);
}

#[tokio::test(start_paused = true)]
async fn a_spike_is_not_overload_but_waits_above_target_for_an_interval_are() {
    let seen = Seen::default();
    let config = ShedConfig { max_queue: 100, ..ShedConfig::default() }; // 50 ms over 500 ms
    let shed = ShedLayer::new(config);
    let service = shed.layer(backend(&seen));
    let mut tasks = Vec::new();
    let start = Instant::now();
    let mut first_delay_refusal = None;
    // 12.5 requests a second against a capacity of 10.
    while start.elapsed() < Duration::from_secs(4) {
        tasks.push(tokio::spawn(service.clone().oneshot(request(Priority::Standard))));
        settle().await;
        if first_delay_refusal.is_none() && shed.stats().refused(Reason::Delay, Priority::Standard) > 0 {
            first_delay_refusal = Some(start.elapsed());
        }
        tokio::time::advance(Duration::from_millis(80)).await;
        settle().await;
    }
    let at = first_delay_refusal.expect("sustained overload is refused");
    assert!(
        at >= Duration::from_millis(550),
        "refused after {at:?}: waits were above target for less than the interval"
    );
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let stats = shed.stats();
    assert!(stats.waiting == 0 && stats.refused(Reason::Delay, Priority::Standard) > 0, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn critical_requests_served_ahead_of_the_line_do_not_hide_a_standing_queue() {
    // The slot frees every 100 ms; a critical request arrives 5 ms before each free slot and is
    // served first, having waited 5 ms. Standard requests arrive at 12.5 a second on top: their
    // queue stands and grows, and the queue must see it although every critical wait is short.
    let seen = Seen::default();
    let shed = ShedLayer::new(ShedConfig { max_queue: 100, ..ShedConfig::default() });
    let service = shed.layer(backend(&seen));
    let mut tasks = Vec::new();
    let mut most_waiting = 0;
    for tick in 0..800u64 {
        // 5 ms ticks over 4 s.
        if tick % 16 == 0 {
            tasks.push(tokio::spawn(service.clone().oneshot(request(Priority::Standard))));
        }
        if tick % 20 == 19 {
            tasks.push(tokio::spawn(service.clone().oneshot(request(Priority::Critical))));
        }
        settle().await;
        most_waiting = most_waiting.max(shed.stats().waiting);
        tokio::time::advance(Duration::from_millis(5)).await;
        settle().await;
    }
    let stats = shed.stats();
    assert!(
        stats.refused(Reason::Delay, Priority::Standard) > 0,
        "the standing queue is overload: {stats:?}"
    );
    assert_eq!(stats.refused_in(Priority::Critical), 0, "{stats:?}");
    assert!(
        most_waiting <= 12,
        "the standard queue was held short, at most {most_waiting} waited: {stats:?}"
    );
    for t in tasks {
        let _ = t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_carries_its_pushback_and_reads_back_as_overloaded() {
    let seen = Seen::default();
    let shed =
        ShedLayer::new(ShedConfig { max_queue: 1, pool: Some("llama".into()), ..ShedConfig::default() });
    let service = StatusLayer.layer(shed.layer(backend(&seen)));
    let busy = tokio::spawn(service.clone().oneshot(request(Priority::Standard)));
    settle().await;
    let waiting = tokio::spawn(service.clone().oneshot(request(Priority::Standard)));
    settle().await;
    let refused: http::Response<String> = service.clone().oneshot(request(Priority::Standard)).await.unwrap();
    assert_eq!(refused.headers()["grpc-status"], "8");
    assert_eq!(refused.headers()["grpc-message"], "pool \"llama\": request shed to protect the others");
    let pushback = refused.headers()["grpc-retry-pushback-ms"].to_str().unwrap().parse::<u64>().unwrap();
    assert!(pushback >= 50, "at least the target: {pushback}");
    assert_eq!(
        Outcome::from_trailers(refused.headers()),
        Some(Outcome::Overloaded { pushback: Some(Duration::from_millis(pushback)) })
    );
    let _: Result<_, BoxError> = busy.await.unwrap();
    let _: Result<_, BoxError> = waiting.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn sustained_overload_keeps_admitted_waits_near_target_when_waits_dip_below_it() {
    // Standard requests at 25 a second against a capacity of 10. Once the queue counts as
    // overloaded it holds the waits near `target`; a wait that dips below target must not reopen
    // it to everything that fits its deadline for a new interval (CoDel resumes dropping when the
    // waits come back above target soon after leaving).
    let seen = Seen::default();
    let shed = ShedLayer::new(ShedConfig { max_queue: 100, ..ShedConfig::default() }); // 50 ms / 500 ms
    let service = shed.layer(backend(&seen));
    let mut tasks = Vec::new();
    let start = Instant::now();
    let patience = Duration::from_secs(10);
    while start.elapsed() < Duration::from_secs(8) {
        let mut req = request(Priority::Standard);
        req.extensions_mut().insert(Deadline(Instant::now() + patience));
        tasks.push(tokio::spawn(service.clone().oneshot(req)));
        settle().await;
        tokio::time::advance(Duration::from_millis(40)).await;
        settle().await;
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    // The wait of every request served after the first two seconds: its start is its deadline
    // less its patience.
    let waits: Vec<Duration> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, deadline, at)| {
            let sent = deadline.expect("every request has one").0 - patience;
            (sent >= start + Duration::from_secs(2)).then(|| at.saturating_duration_since(sent))
        })
        .collect();
    let longest = waits.iter().max().copied().expect("some were served");
    assert!(waits.len() >= 50, "served {} after two seconds", waits.len());
    assert!(
        longest <= Duration::from_millis(150),
        "admitted waits stayed near target under sustained overload; the longest was {longest:?} of {:?}",
        waits
    );
}

#[tokio::test(start_paused = true)]
async fn at_three_times_capacity_standard_waits_stay_near_target_though_critical_requests_overtake() {
    // Bench `overload`'s shape in virtual time: 16 places of 100 ms (160 a second), Poisson
    // arrivals of one critical, three sheddable and six standard requests in every ten, each with
    // a 1 s deadline; 2 × capacity for 3 s, then 3 × for 8 s. At 3 × the critical requests take
    // 30 % of the places and overtake every standard waiter: an expected wait counted in places
    // alone lets standard requests wait three targets.
    let seen: Arc<Mutex<Vec<(Priority, Instant, Instant)>>> = Arc::default();
    let reached = seen.clone();
    let backend = ConcurrencyLimit::new(
        tower::service_fn(move |req: http::Request<()>| {
            let reached = reached.clone();
            async move {
                let e = req.extensions();
                let sent = e.get::<Deadline>().expect("a deadline").0 - Duration::from_secs(1);
                reached.lock().unwrap().push((
                    e.get::<Priority>().copied().unwrap_or_default(),
                    sent,
                    Instant::now(),
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }
        }),
        16,
    );
    let shed = ShedLayer::new(ShedConfig::default());
    let service = shed.layer(backend);
    let mut tasks = Vec::new();
    let start = Instant::now();
    let mut random: u64 = 0x5eed;
    let mut sent_at = 0.0;
    let mut i = 0;
    let measured_from = start + Duration::from_secs(5);
    while sent_at < 11.0 {
        random = random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let uniform = ((random >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let rate = if sent_at < 3.0 { 320.0 } else { 480.0 };
        sent_at += -uniform.ln() / rate;
        let at = start + Duration::from_secs_f64(sent_at);
        tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
        settle().await;
        let priority = match i % 10 {
            0 => Priority::Critical,
            1 | 4 | 7 => Priority::Sheddable,
            _ => Priority::Standard,
        };
        i += 1;
        let mut req = request(priority);
        req.extensions_mut().insert(Deadline(Instant::now() + Duration::from_secs(1)));
        tasks.push(tokio::spawn(service.clone().oneshot(req)));
        settle().await;
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let measured: Vec<_> = seen.iter().filter(|(_, sent, _)| *sent >= measured_from).collect();
    let mut waits: Vec<Duration> = measured
        .iter()
        .filter(|(p, _, _)| *p == Priority::Standard)
        .map(|(_, sent, at)| *at - *sent)
        .collect();
    waits.sort();
    let p99 = waits[waits.len() * 99 / 100];
    let served_per_second = measured.len() as f64 / 6.0;
    assert!(
        p99 <= Duration::from_millis(100),
        "standard requests admitted at 3 x waited {p99:?} at the 99th percentile (target 50 ms)"
    );
    assert!(served_per_second >= 152.0, "the places stayed busy: {served_per_second:.1} a second of 160");
}
