//! The balancer's own cost per request: pick, load bookkeeping, and a no-op endpoint.
//!
//! Every iteration is one whole request: `poll_ready`, `call`, the response future polled to its
//! (immediate) end, and the response dropped. The endpoints answer at once with a ready future, so
//! what is left is the balancer. Both balancers are driven by hand with a no-op waker rather than
//! by a runtime: neither needs one here (the endpoints are always ready and nothing sleeps), and a
//! runtime's scheduling would be measured along with the balancer.
//!
//! - `p2c/switchyard/N`: our [`Balance`] with the P2C peak-EWMA policy, completing each
//!   request at its response ([`CompleteOnResponse`]): the in-flight count, the latency sample and
//!   the outlier detector all run, as in production.
//! - `p2c/tower/N`: `tower::balance::p2c::Balance` over `tower::load::PeakEwmaDiscover` (30 ms
//!   default RTT, 10 s decay, `CompleteOnResponse`) on the same endpoints.
//! - `p2c/direct`: the no-op endpoint called without a balancer, the floor under both.
//! - `policies/<name>/N`: our other policies, the default (load-report) among them. No endpoint
//!   has a load report here, so load-report's pick skips every report.
//! - `reported/load-report/N`: load-report where every endpoint holds a fresh report (a batch
//!   capacity and the prefill backlog, nothing queued), as where the replicas report in every
//!   response: each pick reads the report of every endpoint it compares. It leaves out the
//!   decoding of a trailer, once per response that carries one.
//!
//! ```sh
//! cargo bench -p switchyard-balance --bench balance
//! ```

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard_balance::policy::LoadReport;
use switchyard_balance::{Backend, Balance, CompleteOnResponse, PolicyHandle, PolicyKind};
use switchyard_core::{Endpoint, ReportedLoad, orca};
use tower::Service;
use tower::discover::Change;

const SIZES: [usize; 3] = [8, 64, 1024];

type Request = http::Request<()>;

/// An endpoint that answers every request at once.
#[derive(Debug, Clone, Copy)]
struct Noop;

impl Service<Request> for Noop {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request) -> Self::Future {
        ready(Ok(()))
    }
}

/// One whole request through `service`, which must answer without waiting.
fn one_request<S>(service: &mut S, cx: &mut Context<'_>)
where
    S: Service<Request>,
    S::Error: std::fmt::Debug,
{
    match service.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("balancer failed: {e:?}"),
        Poll::Pending => panic!("balancer not ready"),
    }
    let mut response = pin!(service.call(Request::new(())));
    match response.as_mut().poll(cx) {
        Poll::Ready(Ok(rsp)) => drop(black_box(rsp)),
        Poll::Ready(Err(e)) => panic!("request failed: {e:?}"),
        Poll::Pending => panic!("a no-op endpoint kept the request waiting"),
    }
}

fn backends(n: usize) -> impl Iterator<Item = Backend<Noop>> {
    (0..n).map(|i| {
        let address = format!("http://10.{}.{}.{}:9001", i >> 16 & 255, i >> 8 & 255, i & 255);
        Backend::new(Endpoint::new(format!("replica-{i}"), address), Noop)
    })
}

fn switchyard(n: usize, policy: PolicyKind) -> impl Service<Request, Error = tower::BoxError> {
    Balance::from_backends(backends(n))
        .with_policy(PolicyHandle::of(policy, 7))
        .with_completion(CompleteOnResponse)
}

fn tower_p2c(n: usize) -> impl Service<Request, Error = tower::BoxError> {
    let changes: Vec<Result<_, Infallible>> = (0..n).map(|i| Ok(Change::Insert(i, Noop))).collect();
    let discover = tower::load::PeakEwmaDiscover::new::<Request>(
        futures::stream::iter(changes),
        Duration::from_millis(30),
        Duration::from_secs(10),
        tower::load::CompleteOnResponse::default(),
    );
    tower::balance::p2c::Balance::new(discover)
}

/// Benchmarks `service` after one request has taken in its endpoints (discovery), so iterations
/// measure the steady state.
fn bench_service<S>(b: &mut criterion::Bencher<'_>, mut service: S)
where
    S: Service<Request>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    one_request(&mut service, &mut cx);
    b.iter(|| one_request(&mut service, &mut cx));
}

fn p2c(c: &mut Criterion) {
    let mut group = c.benchmark_group("p2c");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(6)).sample_size(60);
    group.bench_function("direct", |b| bench_service(b, Noop));
    for n in SIZES {
        group.bench_with_input(BenchmarkId::new("switchyard", n), &n, |b, &n| {
            bench_service(b, switchyard(n, PolicyKind::P2cPeakEwma))
        });
        group.bench_with_input(BenchmarkId::new("tower", n), &n, |b, &n| bench_service(b, tower_p2c(n)));
    }
    group.finish();
}

fn policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("policies");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(40);
    for kind in [
        PolicyKind::RoundRobin,
        PolicyKind::LeastConnections,
        PolicyKind::LeastResponseTime,
        PolicyKind::LoadReport,
    ] {
        for n in SIZES {
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, &n| {
                bench_service(b, switchyard(n, kind))
            });
        }
    }
    group.finish();
}

fn reported(c: &mut Criterion) {
    let mut group = c.benchmark_group("reported");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(40);
    let report = ReportedLoad {
        capacity: 64,
        named: [(orca::PREFILL_BACKLOG_TOKENS.to_string(), 0.0)].into(),
        ..ReportedLoad::default()
    };
    for n in SIZES {
        group.bench_with_input(BenchmarkId::new("load-report", n), &n, |b, &n| {
            // Reports an hour old still count, so none goes stale while criterion measures.
            let policy = LoadReport::with_seed(7).with_max_age(Duration::from_secs(3600));
            let mut balancer = Balance::from_backends(backends(n))
                .with_policy(PolicyHandle::new(Arc::new(policy)))
                .with_completion(CompleteOnResponse);
            let board = balancer.board();
            let mut cx = Context::from_waker(Waker::noop());
            one_request(&mut balancer, &mut cx);
            for e in board.snapshot() {
                let state = board.state(&e.endpoint.id).expect("an endpoint of the board");
                state.record_report(report.clone(), tokio::time::Instant::now());
            }
            b.iter(|| one_request(&mut balancer, &mut cx));
        });
    }
    group.finish();
}

criterion_group!(benches, p2c, policies, reported);
criterion_main!(benches);
