//! The hash policies' cost per request.
//!
//! - `ring/lookup/N`: [`Ring::owner`] of a random hash on a ring of N endpoints of weight 1 at
//!   160 points each (the issue's target: ≤ 150 ns at 1,000 endpoints, no allocation; the lookup
//!   reads two bucket bounds and searches the few points between them, it allocates nothing by
//!   construction).
//! - `pick/<policy>/N`: a whole pick of `consistent-hash` and `bounded-load-hash` (the bounded
//!   one sums the in-flight counts of the eligible endpoints, O(N)), the ring already built.
//!
//! - `prefix/lookup-32-blocks/64-endpoints-1M-blocks`: [`PrefixIndex::longest_matches`] of a
//!   32-block prompt held by two of 64 endpoints, in an index of 1,048,576 (block, endpoint)
//!   entries (the issue's target: ≤ 2 µs). The bench prints the index's heap bytes per entry
//!   (target: ≤ 100).
//!
//! ```sh
//! cargo bench -p switchyard-hash --bench hash
//! ```

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard_balance::EndpointState;
use switchyard_balance::policy::{Endpoints, Policy, RequestInfo};
use switchyard_core::{Endpoint, RoutingKey};
use switchyard_hash::{ConsistentHash, DEFAULT_POINTS_PER_WEIGHT, PrefixIndex, Ring};

const SIZES: [usize; 3] = [10, 100, 1000];

fn hashes() -> Vec<u64> {
    let mut x = 0x1234_5678_9abc_def0u64;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect()
}

fn ring_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring/lookup");
    let hashes = hashes();
    for n in SIZES {
        let ids: Vec<String> = (0..n).map(|i| format!("10.0.{}.{}:9001", i / 256, i % 256)).collect();
        let ring = Ring::new(ids.iter().map(|s| (s.as_str(), 1)), DEFAULT_POINTS_PER_WEIGHT);
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(ring.owner(black_box(hashes[i])))
            })
        });
    }
    group.finish();
}

fn picks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let _guard = rt.enter();
    let keys: Vec<http::Extensions> = (0..1024)
        .map(|k| {
            let mut e = http::Extensions::new();
            e.insert(RoutingKey::new(format!("session-{k}")));
            e
        })
        .collect();
    for (name, policy) in [
        ("consistent-hash", ConsistentHash::new()),
        ("bounded-load-hash", ConsistentHash::bounded(1.25).expect("valid")),
    ] {
        let mut group = c.benchmark_group(format!("pick/{name}"));
        for n in SIZES {
            let eps: Vec<Arc<EndpointState>> = (0..n)
                .map(|i| {
                    Arc::new(EndpointState::new(
                        Endpoint::new(format!("e{i}"), "http://e"),
                        Default::default(),
                    ))
                })
                .collect();
            let endpoints = Endpoints::all_eligible(&eps, 1);
            let now = tokio::time::Instant::now();
            let mut i = 0usize;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(policy.pick(&RequestInfo::new(Some(&keys[i]), now), &endpoints))
                })
            });
        }
        group.finish();
    }
}

fn prefix_lookup(c: &mut Criterion) {
    const SLOTS: usize = 64;
    const BLOCKS: u64 = 32;
    const PROMPTS: u64 = 16_384;
    let mut index = PrefixIndex::new(SLOTS, 1 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Each prompt (32 unique blocks) held by two endpoints: 16,384 × 32 × 2 = 1,048,576 entries.
    let prompts: Vec<Vec<u64>> =
        (0..PROMPTS).map(|p| (0..BLOCKS).map(|b| (p << 8 | b) ^ 0x5555).collect()).collect();
    for prompt in &prompts {
        let a = (next() % SLOTS as u64) as usize;
        let b = (a + 1 + (next() % (SLOTS as u64 - 1)) as usize) % SLOTS;
        index.insert(a, prompt);
        index.insert(b, prompt);
    }
    let entries = index.len();
    let bytes = index.memory_bytes();
    println!(
        "prefix index: {entries} entries, {bytes} heap bytes, {:.1} bytes per entry",
        bytes as f64 / entries as f64
    );
    let mut matched = vec![0u32; SLOTS];
    let mut i = 0usize;
    c.bench_function("prefix/lookup-32-blocks/64-endpoints-1M-blocks", |b| {
        b.iter(|| {
            i = (i + 7919) % prompts.len();
            black_box(index.longest_matches(black_box(&prompts[i]), &mut matched))
        })
    });
}

criterion_group!(benches, ring_lookup, picks, prefix_lookup);
criterion_main!(benches);
