//! The cluster's child processes: start one, learn its addresses from its log, watch it, stop it.
//!
//! A child logs (tracing, to stderr) a line such as `... worker serving on 127.0.0.1:40123` once
//! it listens; the address is the first whitespace-separated token after the phrase. A reader
//! task keeps the child's last [`TAIL_LINES`] stderr lines, so that an error about the child can
//! show why it failed. Every child is spawned with `kill_on_drop`: whatever path leaves the
//! cluster early drops it and kills it; the normal end is [`ChildProcess::stop`], SIGTERM and a
//! wait for a clean exit.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lines of a child's stderr kept for error messages.
pub(crate) const TAIL_LINES: usize = 20;

/// Longest stderr line kept, in characters; longer ones are cut.
const MAX_LINE_CHARS: usize = 400;

/// What went wrong with a child process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process could not be started.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// The child's name (`worker-0`, `gateway`).
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The process ended while it should have been serving.
    #[error("{name} exited early ({status}); its last stderr lines:\n{tail}")]
    ExitedEarly {
        /// The child's name.
        name: String,
        /// How it ended.
        status: String,
        /// Its last stderr lines.
        tail: String,
    },
    /// The process did not log its address in time.
    #[error("{name} did not log {phrase:?} within {waited:?}; its last stderr lines:\n{tail}")]
    StartTimeout {
        /// The child's name.
        name: String,
        /// The log phrase awaited.
        phrase: &'static str,
        /// How long we waited.
        waited: Duration,
        /// Its last stderr lines.
        tail: String,
    },
    /// The process did not exit cleanly when asked to stop.
    #[error("{name} did not stop cleanly ({status}); its last stderr lines:\n{tail}")]
    Stop {
        /// The child's name.
        name: String,
        /// What happened: its exit status, or that it had to be killed.
        status: String,
        /// Its last stderr lines.
        tail: String,
    },
}

/// A running child process of the cluster.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    name: String,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: JoinHandle<()>,
}

impl ChildProcess {
    /// Starts `exe args…` as `name`, and waits (at most `timeout`) until its stderr holds a line
    /// with each of `phrases`. Returns the child and, for each phrase, the address logged after it.
    pub(crate) async fn start(
        name: &str,
        exe: &Path,
        args: &[String],
        phrases: &[&'static str],
        timeout: Duration,
    ) -> Result<(Self, Vec<String>), ProcessError> {
        let mut child = Command::new(exe)
            .args(args)
            // The address lines are INFO; a quieter RUST_LOG inherited from the user would hide them.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn { name: name.to_string(), source })?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        // One message per phrase at most, so the channel never fills.
        let (found_tx, mut found_rx) = mpsc::channel::<(usize, String)>(phrases.len().max(1));
        let reader = match child.stderr.take() {
            Some(stderr) => tokio::spawn(read_stderr(stderr, phrases.to_vec(), found_tx, Arc::clone(&tail))),
            None => tokio::spawn(async {}),
        };
        let mut process = Self { name: name.to_string(), child, tail, reader };

        let mut addresses: Vec<Option<String>> = vec![None; phrases.len()];
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        while let Some(missing) = addresses.iter().position(Option::is_none) {
            tokio::select! {
                Some((i, address)) = found_rx.recv() => addresses[i] = Some(address),
                status = process.child.wait() => {
                    return Err(process.exited_early(status).await);
                }
                () = &mut deadline => {
                    return Err(ProcessError::StartTimeout {
                        name: process.name.clone(),
                        phrase: phrases[missing],
                        waited: timeout,
                        tail: process.tail(),
                    });
                }
            }
        }
        Ok((process, addresses.into_iter().flatten().collect()))
    }

    /// The child's process id, while it runs.
    pub(crate) fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` to the child (the fault bench's SIGKILL, SIGSTOP, SIGCONT, SIGTERM,
    /// SIGUSR1); an error says why it could not.
    #[cfg(unix)]
    pub(crate) fn signal(&self, signal: rustix::process::Signal) -> Result<(), String> {
        let pid = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| format!("{} has exited", self.name))?;
        rustix::process::kill_process(pid, signal).map_err(|e| format!("cannot signal {}: {e}", self.name))
    }

    /// Waits at most `grace` for the child to exit by itself (after a signal), then kills it.
    pub(crate) async fn reap(mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// The child's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Completes when the child exits, with the error that its early exit is.
    pub(crate) async fn exited(&mut self) -> ProcessError {
        let status = self.child.wait().await;
        self.exited_early(status).await
    }

    async fn exited_early(&mut self, status: std::io::Result<ExitStatus>) -> ProcessError {
        // The reader may still hold the child's last words.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.reader).await;
        ProcessError::ExitedEarly {
            name: self.name.clone(),
            status: match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            },
            tail: self.tail(),
        }
    }

    /// The child's last stderr lines, one per line, indented.
    pub(crate) fn tail(&self) -> String {
        let lines = match self.tail.lock() {
            Ok(lines) => lines.iter().map(|l| format!("    {l}")).collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        };
        if lines.is_empty() { "    (nothing)".to_string() } else { lines.join("\n") }
    }

    /// Asks the child to stop (SIGTERM; a plain kill where there are no signals) and waits at
    /// most `grace` for it to exit. An exit other than 0, a child that had already exited, and
    /// one that must be killed after `grace` are errors.
    pub(crate) async fn stop(mut self, grace: Duration) -> Result<(), ProcessError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(self.exited_early(Ok(status)).await);
        }
        terminate(&mut self.child);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => return Ok(()),
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("cannot wait for it: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("still running {grace:?} after SIGTERM, killed")
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.reader).await;
        Err(ProcessError::Stop { name: self.name.clone(), status, tail: self.tail() })
    }
}

#[cfg(unix)]
fn terminate(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw);
    match pid {
        Some(pid) => {
            if let Err(e) = kill_process(pid, Signal::TERM) {
                tracing::warn!("cannot send SIGTERM to {pid:?}: {e}");
            }
        }
        None => {
            let _ = child.start_kill();
        }
    }
}

#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.start_kill();
}

/// Reads the child's stderr to its end: reports the address after each phrase (once), keeps the
/// last [`TAIL_LINES`] lines.
async fn read_stderr(
    stderr: tokio::process::ChildStderr,
    phrases: Vec<&'static str>,
    found: mpsc::Sender<(usize, String)>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = BufReader::new(stderr);
    let mut pending: Vec<Option<&'static str>> = phrases.into_iter().map(Some).collect();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(address) = slot.and_then(|phrase| address_after(line, phrase)) {
                let _ = found.try_send((i, address));
                *slot = None;
            }
        }
        if let Ok(mut lines) = tail.lock() {
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(line.chars().take(MAX_LINE_CHARS).collect());
        }
    }
}

/// The first whitespace-separated token after `phrase` in `line`, if the line holds the phrase.
pub(crate) fn address_after(line: &str, phrase: &str) -> Option<String> {
    let (_, rest) = line.split_once(phrase)?;
    rest.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_after_the_phrase() {
        let line = "2026-01-01T00:00:00Z  INFO switchyard::worker: worker serving on 127.0.0.1:40123 model=\"sim-llm\"";
        assert_eq!(address_after(line, "worker serving on ").as_deref(), Some("127.0.0.1:40123"));
        assert_eq!(
            address_after("admin serving on [::1]:9", "admin serving on ").as_deref(),
            Some("[::1]:9")
        );
        assert_eq!(address_after("gateway serving on ", "gateway serving on "), None);
        assert_eq!(address_after("something else", "worker serving on "), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_child_that_exits_before_logging_is_named_with_its_stderr() {
        let err = ChildProcess::start(
            "shell",
            Path::new("/bin/sh"),
            &["-c".into(), "echo first >&2; echo 'it broke' >&2; exit 3".into()],
            &["serving on "],
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("shell exited early"), "{text}");
        assert!(text.contains("it broke") && text.contains("first"), "{text}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn learns_addresses_and_stops_with_sigterm() {
        let script = "trap 'exit 0' TERM; echo 'x serving on 1.2.3.4:5 more' >&2; \
                      echo 'y serving on 6.7.8.9:10' >&2; while true; do sleep 0.05; done";
        let (child, addresses) = ChildProcess::start(
            "shell",
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &["y serving on ", "x serving on "],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(addresses, ["6.7.8.9:10", "1.2.3.4:5"]);
        assert_eq!(child.name(), "shell");
        child.stop(Duration::from_secs(10)).await.unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_child_that_never_logs_times_out() {
        let err = ChildProcess::start(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "echo waiting >&2; sleep 30".into()],
            &["serving on "],
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProcessError::StartTimeout { .. }), "{err}");
        assert!(err.to_string().contains("waiting"), "{err}");
    }
}
