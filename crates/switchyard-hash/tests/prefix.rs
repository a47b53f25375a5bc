//! The prefix-aware policy through the real balancer, and its index over the bundled trace.

use std::sync::Arc;
use std::time::Duration;

use switchyard_balance::policy::{Endpoints, Policy, RequestInfo};
use switchyard_balance::{Backend, Balance, CompleteOnResponse, EndpointState, PolicyHandle};
use switchyard_core::{Endpoint, PrefixBlocks, RequestSize};
use switchyard_hash::{PrefixAware, PrefixAwareConfig};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

type Req = http::Request<Duration>;

fn request(blocks: &[u64], hold: Duration) -> Req {
    let mut req = http::Request::new(hold);
    req.extensions_mut().insert(PrefixBlocks::new(blocks.to_vec()));
    req.extensions_mut().insert(RequestSize::new(512 * blocks.len() as u32, 100));
    req
}

#[tokio::test(start_paused = true)]
async fn a_cached_prefix_on_an_overloaded_replica_goes_elsewhere() {
    let backends = (0..4).map(|i| {
        let service = tower::service_fn(move |req: Req| async move {
            tokio::time::sleep(*req.body()).await;
            Ok::<_, std::convert::Infallible>(i)
        });
        Backend::new(Endpoint::new(format!("replica-{i}"), format!("http://r{i}")), service)
    });
    let config = PrefixAwareConfig { load_factor: 1.25, ..PrefixAwareConfig::default() };
    let policy = Arc::new(PrefixAware::new(config).expect("valid"));
    let mut b = Balance::from_backends(backends)
        .with_policy(PolicyHandle::new(policy))
        .with_completion(CompleteOnResponse);
    let board = b.board();
    let prefix: Vec<u64> = (100..116).collect();
    // The first request places the prefix; it answers at once.
    let home = b.ready().await.expect("ready").call(request(&prefix, Duration::ZERO)).await.expect("ok");
    // Background load on the other replicas: 6 long requests each, with prefixes of their own.
    let mut held = Vec::new();
    for k in 0..24u64 {
        let call =
            b.ready().await.expect("ready").call(request(&[k * 1000, k * 1000 + 1], Duration::from_secs(60)));
        held.push(tokio::spawn(call));
    }
    // Requests for the cached prefix pile onto its replica while it is within its bound, then
    // go elsewhere: it never holds more than ⌈1.25 × the mean⌉.
    let mut at_home = 0;
    let mut elsewhere = 0;
    for _ in 0..40 {
        let call = b.ready().await.expect("ready").call(request(&prefix, Duration::from_secs(60)));
        held.push(tokio::spawn(call));
        tokio::task::yield_now().await;
        let loads: Vec<u32> = board.snapshot().iter().map(|e| e.load.in_flight).collect();
        let total: u32 = loads.iter().sum();
        let max = *loads.iter().max().expect("four");
        assert!(f64::from(max) <= (1.25 * f64::from(total) / 4.0).ceil() + 1.0, "{loads:?}");
    }
    for t in held.drain(24..) {
        if t.await.expect("no panic").expect("ok") == home { at_home += 1 } else { elsewhere += 1 }
    }
    assert!(at_home >= 5, "the cached prefix's replica took its share first: {at_home}");
    assert!(elsewhere >= 20, "then the prefix went elsewhere: {elsewhere} of 40");
}

#[test]
fn the_index_stays_within_its_bound_over_the_whole_trace() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../traces/mooncake_conversation.jsonl");
    let text = std::fs::read_to_string(path).expect("the bundled trace");
    // A small cache (97 blocks per replica) so that eviction runs all through the trace.
    let config = PrefixAwareConfig { capacity_tokens: 50_000, ..PrefixAwareConfig::default() };
    let policy = PrefixAware::new(config).expect("valid");
    let eps: Vec<Arc<EndpointState>> = (0..8)
        .map(|i| {
            Arc::new(EndpointState::new(
                Endpoint::new(format!("replica-{i}"), "http://r"),
                Default::default(),
            ))
        })
        .collect();
    let now = Instant::now();
    let mut requests = 0;
    let mut peak_bytes = 0;
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let ids: Vec<u64> = record["hash_ids"]
            .as_array()
            .expect("hash_ids")
            .iter()
            .map(|v| v.as_u64().expect("an id"))
            .collect();
        let mut ext = http::Extensions::new();
        ext.insert(PrefixBlocks::new(ids));
        ext.insert(RequestSize::new(record["input_length"].as_u64().expect("length") as u32, 1));
        policy.pick(&RequestInfo::new(Some(&ext), now), &Endpoints::all_eligible(&eps, 0)).expect("a pick");
        let stats = policy.index_stats();
        assert_eq!(stats.capacity, 8 * 97);
        assert!(stats.entries <= stats.capacity, "{stats:?}");
        assert!(stats.memory_bytes <= 100 * stats.capacity, "{stats:?}");
        peak_bytes = peak_bytes.max(stats.memory_bytes);
        requests += 1;
    }
    assert!(requests > 10_000);
    let stats = policy.index_stats();
    // Idle replicas: every prompt opens with block 0, so the cheapest place is always the one
    // replica that has it; that replica's list is full and evicts all through the trace.
    assert!(stats.entries >= 97, "the trace fills a replica's list: {stats:?}");
    eprintln!(
        "index: {} entries, peak {peak_bytes} bytes ({:.1} per entry)",
        stats.entries,
        peak_bytes as f64 / stats.entries as f64
    );
}
