//! The gateway process's own figures on `/metrics`: its live Tokio tasks, resident memory and
//! open file descriptors, read at each scrape. Flat lines under steady load are what a soak
//! (`switchyard bench soak`) checks; a line that climbs is a leak.
//!
//! - `switchyard_gateway_tasks`: tasks alive on the gateway's runtimes (every serving thread's
//!   and the one running the acceptor and the admin API);
//! - `process_resident_memory_bytes` and `process_open_fds`: the names Prometheus' client
//!   libraries give them, read from `/proc/self` (Linux; left out where it cannot be read).

use metrics::{Key, Recorder, Unit};
use switchyard_telemetry::{MetricsRegistry, ScrapeSource};
use tokio::runtime::Handle;

/// Gauge: tasks alive on the gateway's Tokio runtimes.
pub const GATEWAY_TASKS: &str = "switchyard_gateway_tasks";
/// Gauge: the process's resident memory, in bytes.
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Gauge: the process's open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";

/// Reads the gateway's runtimes and its process at each scrape.
#[derive(Debug)]
pub(crate) struct ProcessMetrics {
    runtimes: Vec<Handle>,
}

impl ProcessMetrics {
    /// The figures of `runtimes` and of this process; describes the series in `registry`.
    pub(crate) fn new(runtimes: Vec<Handle>, registry: &MetricsRegistry) -> Self {
        registry.describe_gauge(
            GATEWAY_TASKS.into(),
            Some(Unit::Count),
            "Tasks alive on the gateway's runtimes (serving threads, acceptor and admin API).".into(),
        );
        registry.describe_gauge(
            PROCESS_RESIDENT_MEMORY.into(),
            Some(Unit::Bytes),
            "Resident memory of the gateway process.".into(),
        );
        registry.describe_gauge(
            PROCESS_OPEN_FDS.into(),
            Some(Unit::Count),
            "File descriptors the gateway process has open.".into(),
        );
        Self { runtimes }
    }
}

impl ScrapeSource for ProcessMetrics {
    fn publish(&self, recorder: &dyn Recorder) {
        static METADATA: metrics::Metadata<'static> =
            metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let gauge = |name: &'static str, value: f64| {
            recorder.register_gauge(&Key::from_static_name(name), &METADATA).set(value)
        };
        let tasks: usize = self.runtimes.iter().map(|r| r.metrics().num_alive_tasks()).sum();
        gauge(GATEWAY_TASKS, tasks as f64);
        if let Some(bytes) = resident_bytes() {
            gauge(PROCESS_RESIDENT_MEMORY, bytes as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(PROCESS_OPEN_FDS, fds.count() as f64);
        }
    }
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss(&status)
}

/// The `VmRSS:` line of a `/proc/PID/status` text, in bytes.
pub(crate) fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_the_resident_set_in_bytes() {
        let status = "Name:\tswitchyard\nVmPeak:\t  2048 kB\nVmRSS:\t   1234 kB\nThreads:\t3\n";
        assert_eq!(vm_rss(status), Some(1234 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
        assert_eq!(vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[tokio::test]
    async fn a_scrape_counts_the_runtimes_tasks_and_the_process_figures() {
        let registry = MetricsRegistry::new();
        let source = ProcessMetrics::new(vec![Handle::current()], &registry);
        registry.add_source(std::sync::Arc::new(source));
        let value = |text: &str, name: &str| -> Option<f64> {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        let before = value(&registry.render(), GATEWAY_TASKS).unwrap();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let parked: Vec<_> = (0..5).map(|_| tokio::spawn(async {})).collect();
        let held = tokio::spawn(async move {
            let _ = wait.await;
        });
        for task in parked {
            task.await.unwrap();
        }
        let text = registry.render();
        assert_eq!(value(&text, GATEWAY_TASKS).unwrap(), before + 1.0, "{text}");
        let _ = release.send(());
        held.await.unwrap();
        assert_eq!(value(&registry.render(), GATEWAY_TASKS).unwrap(), before);
        if cfg!(target_os = "linux") {
            assert!(value(&text, PROCESS_RESIDENT_MEMORY).is_some_and(|b| b > 1e6), "{text}");
            assert!(value(&text, PROCESS_OPEN_FDS).is_some_and(|n| n >= 3.0), "{text}");
        }
    }
}
