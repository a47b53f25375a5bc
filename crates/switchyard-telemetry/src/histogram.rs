//! Prometheus histograms counted per thread shard, summed when rendered.
//!
//! The `metrics` Prometheus exporter keeps every recorded value until the next scrape, appending
//! it to a lock-free list shared by all threads (two atomic writes on a shared cache line per
//! value, an allocation every few dozen). On the request path of a gateway serving on every core,
//! those shared lines move between cores on every call. A [`BucketHistogram`] counts into fixed
//! buckets instead, in the shard of the recording thread (its own cache line), and the scrape sums
//! the shards: a call costs one bucket search and two uncontended atomic adds, and the memory is
//! fixed however long the scrapes are apart.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{HistogramFn, Key};

/// Shards of a count: threads beyond this many share shards.
pub(crate) const SHARDS: usize = 8;

/// Buckets (bounds) a histogram can have at most.
const MAX_BOUNDS: usize = 16;

thread_local! {
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard of the calling thread: threads take shards in turn as they first ask.
pub(crate) fn shard() -> usize {
    static NEXT_SHARD: AtomicU64 = AtomicU64::new(0);
    SHARD.with(|s| match s.get() {
        Some(index) => index,
        None => {
            let next = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
            let index = usize::try_from(next % SHARDS as u64).unwrap_or(0);
            s.set(Some(index));
            index
        }
    })
}

/// One thread shard's counts, on its own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Per bucket (not cumulative), the last one above every bound (`+Inf`).
    counts: [AtomicU64; MAX_BOUNDS + 1],
    /// The sum of the values, as `f64` bits.
    sum: AtomicU64,
}

/// A Prometheus histogram with fixed bounds, counted per thread shard.
#[derive(Debug)]
pub(crate) struct BucketHistogram {
    bounds: &'static [f64],
    shards: [Shard; SHARDS],
}

impl BucketHistogram {
    /// A histogram with the upper bounds `bounds` (ascending; at most 16 are used).
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self { bounds: &bounds[..bounds.len().min(MAX_BOUNDS)], shards: Default::default() }
    }

    /// The cumulative count at each bound and `+Inf`, and the sum.
    fn totals(&self) -> (Vec<u64>, f64) {
        let mut counts = vec![0u64; self.bounds.len() + 1];
        let mut sum = 0.0;
        for shard in &self.shards {
            for (total, count) in counts.iter_mut().zip(&shard.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
        }
        for i in 1..counts.len() {
            counts[i] += counts[i - 1];
        }
        (counts, sum)
    }

    /// Writes the histogram's `_bucket`, `_sum` and `_count` lines for `key`.
    pub(crate) fn render(&self, key: &Key, out: &mut String) {
        let (counts, sum) = self.totals();
        let mut labels = String::new();
        for label in key.labels() {
            let _ = write!(labels, "{}=\"{}\",", label.key(), escape(label.value()));
        }
        let name = key.name();
        for (bound, count) in self.bounds.iter().map(|b| b.to_string()).chain(["+Inf".into()]).zip(&counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
        }
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", counts.last().copied().unwrap_or(0));
    }
}

impl HistogramFn for BucketHistogram {
    fn record(&self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        let shard = &self.shards[shard()];
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // The shard's own line: the exchange fails only when two threads share a shard.
        let _ = shard.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }
}

/// A label value escaped for the Prometheus text format.
pub(crate) fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_they_do_not_exceed_and_render_cumulatively() {
        static BOUNDS: &[f64] = &[0.5, 1.0, 2.5];
        let histogram = BucketHistogram::new(BOUNDS);
        for value in [0.25, 0.5, 1.0, 2.0, 7.0] {
            histogram.record(value);
        }
        std::thread::scope(|s| {
            s.spawn(|| histogram.record(0.75));
        });
        let mut out = String::new();
        histogram.render(&Key::from_parts("x_seconds", vec![metrics::Label::new("m", "a\"b")]), &mut out);
        assert_eq!(
            out,
            "x_seconds_bucket{m=\"a\\\"b\",le=\"0.5\"} 2\n\
             x_seconds_bucket{m=\"a\\\"b\",le=\"1\"} 4\n\
             x_seconds_bucket{m=\"a\\\"b\",le=\"2.5\"} 5\n\
             x_seconds_bucket{m=\"a\\\"b\",le=\"+Inf\"} 6\n\
             x_seconds_sum{m=\"a\\\"b\"} 11.5\n\
             x_seconds_count{m=\"a\\\"b\"} 6\n"
        );
    }
}
