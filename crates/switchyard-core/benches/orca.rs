//! What reading one ORCA load report costs: the `endpoint-load-metrics-bin` value a worker sends
//! in its trailers, decoded into a [`ReportedLoad`] (base64, then the protobuf message with its
//! metric map).
//!
//! - `orca/decode_header_value`: a worker's usual report (queue depth, running requests, KV-cache
//!   use, batch size, CPU and one extra named metric).
//! - `orca/decode_header_value_large`: forty extra named metrics, past the stack buffer.
//!
//! ```sh
//! cargo bench -p switchyard-core --bench orca
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_core::{ReportedLoad, orca};

fn usual() -> ReportedLoad {
    let mut report = ReportedLoad {
        queue_depth: 3,
        running: 17,
        kv_cache_utilization: 0.42,
        capacity: 64,
        cpu_utilization: 0.35,
        ..ReportedLoad::default()
    };
    report.named.insert("prefix_hit_rate".to_string(), 0.25);
    report
}

fn large() -> ReportedLoad {
    let mut report = usual();
    report.named.extend((0..40).map(|i| (format!("metric_number_{i}"), f64::from(i))));
    report
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("orca");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (name, report) in [("decode_header_value", usual()), ("decode_header_value_large", large())] {
        let value = orca::encode_header_value(&report);
        group.bench_function(name, |b| b.iter(|| orca::decode_header_value(black_box(&value))));
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
