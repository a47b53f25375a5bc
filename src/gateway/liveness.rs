//! Whether an endpoint's process is answering now, asked before an attempt no retry can save goes
//! on its connection.
//!
//! A replica whose process has stopped (SIGSTOP, a debugger, a host frozen under memory
//! pressure) still accepts TCP connections and data: its kernel acknowledges every byte. Its
//! calls then wait for their deadlines, and a request written to its socket may still be read
//! and run once it resumes, so a call that is not idempotent cannot be sent again elsewhere. The
//! balancer leaves such a replica once its backlog is overdue, tens of milliseconds after the
//! stop; what it sends there in between is lost.
//!
//! The endpoint's HTTP/2 connection tells sooner: its peer answers a `PING` from its connection's
//! task, whatever its calls are doing, unless the process itself is not running. So a
//! [`FinalAttempt`](switchyard_core::FinalAttempt) (an attempt whose failure goes back to the
//! caller) goes on a connection only once the endpoint has been heard from within [`FRESH`]: a
//! response head, or the answer to a ping sent since. If it has not, the connection's task pings
//! it and the attempt waits for the answer. If none comes within the pool's `probe_timeout`
//! (counted from the sending of a ping still unanswered, so that attempts that come while one is
//! wait no longer than it), the attempt fails before anything of it was sent
//! ([`ErrorKind::ConnectFailed`]), which a retry layer sends to another endpoint whatever its
//! method. Attempts a retry can save go at once.
//!
//! A connection sends at most [`PINGS_BETWEEN_HEADS`] pings for its attempts between the response
//! heads the endpoint sends (keep-alive pings count toward them, and go regardless), as gRPC
//! servers take more for abuse; past them, attempts go unconfirmed until a response comes.
//!
//! The connection's task also pings every [`KEEP_ALIVE_INTERVAL`] and closes the connection when
//! a ping is not answered in as long (a dead peer is found before requests wait on it for long).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use switchyard_core::{Error, ErrorKind};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How recently the endpoint must have been heard from for an attempt no retry can save to go
/// without a ping first: a stop in that time is the risk left.
pub(crate) const FRESH: Duration = Duration::from_millis(1);

/// How many pings an attempt may have sent for it since the endpoint last sent a response head;
/// past them, attempts go without one. gRPC servers (grpc-core, grpc-go) count a ping that comes
/// soon after another with no data sent between as a strike and close the connection with
/// `GOAWAY` (`ENHANCE_YOUR_CALM`, "too_many_pings") past two strikes, and a response head is
/// data they send: two pings between heads stay within that.
pub(crate) const PINGS_BETWEEN_HEADS: u32 = 2;

/// The shortest wait for a ping's answer a pool may set: tokio's timers count whole
/// milliseconds.
pub(crate) const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest wait for a ping's answer a pool may set: a ping unanswered for
/// [`KEEP_ALIVE_INTERVAL`] closes the connection anyway.
pub(crate) const MAX_PROBE_TIMEOUT: Duration = KEEP_ALIVE_INTERVAL;

/// How often a connection to an endpoint is pinged when nothing asks, so a dead peer is found
/// before requests wait on it for long; one that does not answer within the same time is closed.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// What is known of one connection's peer: when it was last heard from, whether a ping waits for
/// its answer, whether the connection has closed. Shared by the connection's task, which pings,
/// and the requests sent on it.
pub(crate) struct Liveness {
    /// The instant the times below count from.
    start: Instant,
    /// Nanoseconds after `start`, plus one, when the peer was last heard from; 0: never.
    heard: AtomicU64,
    /// Nanoseconds after `start`, plus one, when the ping awaiting its answer was sent; 0: none.
    pinged: AtomicU64,
    /// Pings sent since the peer last sent a response head.
    pings: AtomicU32,
    /// The latest `asked` stamp of an attempt waiting to hear from the peer: the task pings for
    /// it only while the peer has not been heard from since.
    wanted: AtomicU64,
    /// Set when the connection's task has ended.
    closed: AtomicBool,
    /// Wakes the task to ping.
    ask: Notify,
    /// Wakes the attempts waiting for an answer (or for the connection's end).
    answered: Notify,
}

/// Why an attempt was not sent: the endpoint did not show it is running.
#[derive(Debug, thiserror::Error)]
enum NotAnswered {
    #[error("the endpoint did not answer a ping within {0:?}")]
    Silent(Duration),
    #[error("the connection to the endpoint closed")]
    Closed,
}

impl Liveness {
    /// A connection just opened, not heard from yet.
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            heard: AtomicU64::new(0),
            pinged: AtomicU64::new(0),
            pings: AtomicU32::new(0),
            wanted: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            ask: Notify::new(),
            answered: Notify::new(),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn instant(&self, stamp: u64) -> Option<Instant> {
        stamp.checked_sub(1).map(|nanos| self.start + Duration::from_nanos(nanos))
    }

    /// The peer was heard from now (a response head came).
    pub(crate) fn heard(&self) {
        self.heard.fetch_max(self.stamp(Instant::now()), Ordering::Release);
        self.pings.store(0, Ordering::Release);
    }

    /// Whether an attempt may have a ping sent for it: fewer than [`PINGS_BETWEEN_HEADS`] since
    /// the last response head.
    fn may_ping(&self) -> bool {
        self.pings.load(Ordering::Acquire) < PINGS_BETWEEN_HEADS
    }

    /// Whether the peer was heard from within [`FRESH`] of `now`.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.instant(self.heard.load(Ordering::Acquire))
            .is_some_and(|heard| now.saturating_duration_since(heard) <= FRESH)
    }

    /// Whether the connection's task has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection closed and wakes whoever waits on it.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.answered.notify_waiters();
    }

    /// Waits until the peer is heard from after this call began: the connection's task pings it
    /// for this (once the ping on its way, if one is, is answered), and the wait lasts at most
    /// `timeout` (at most [`KEEP_ALIVE_INTERVAL`], see [`MAX_PROBE_TIMEOUT`]) after the ping on its
    /// way was sent, or after this call began. An error when it
    /// is not heard from: typed [`ErrorKind::ConnectFailed`], as nothing of the attempt was sent.
    /// With [`PINGS_BETWEEN_HEADS`] pings sent since the last response head and none on its way,
    /// it returns at once: the attempt goes unconfirmed.
    pub(crate) async fn confirm(&self, timeout: Duration) -> Result<(), Error> {
        let now = Instant::now();
        let asked = self.stamp(now);
        let since = self.instant(self.pinged.load(Ordering::Acquire)).unwrap_or(now);
        let give_up = since + timeout;
        self.wanted.fetch_max(asked, Ordering::AcqRel);
        let mut asked_task = false;
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if self.heard.load(Ordering::Acquire) >= asked {
                return Ok(());
            }
            if self.is_closed() {
                return Err(Error::new(ErrorKind::ConnectFailed).with_source(NotAnswered::Closed));
            }
            // Read in this order: the task marks its ping on its way before it counts it.
            if !self.may_ping() && self.pinged.load(Ordering::Acquire) == 0 {
                // No ping on its way and none to be sent: it goes unconfirmed, as without probes.
                return Ok(());
            }
            if !asked_task {
                self.ask.notify_one();
                asked_task = true;
            }
            if tokio::time::timeout_at(give_up, answered).await.is_err() {
                return Err(Error::new(ErrorKind::ConnectFailed).with_source(NotAnswered::Silent(timeout)));
            }
        }
    }

    /// The connection's side: pings the peer when an attempt asks and every
    /// [`KEEP_ALIVE_INTERVAL`] otherwise, and records each answer as hearing from the peer when
    /// its ping was sent (the peer answered after that; an answer already on its way when an
    /// attempt asked tells nothing of the time since). Returns when a ping is not answered within
    /// [`KEEP_ALIVE_INTERVAL`] or cannot be sent (the connection is going): the connection is then
    /// closed. Without `ping_pong` (already taken) it waits forever.
    pub(crate) async fn watch(&self, ping_pong: Option<h2::PingPong>) {
        let Some(mut ping_pong) = ping_pong else { return std::future::pending().await };
        loop {
            let asked = tokio::select! {
                () = tokio::time::sleep(KEEP_ALIVE_INTERVAL) => false,
                () = self.ask.notified() => true,
            };
            if asked && self.wanted.load(Ordering::Acquire) <= self.heard.load(Ordering::Acquire) {
                // Whoever asked has heard from the peer since (a response head came).
                self.answered.notify_waiters();
                continue;
            }
            if asked && !self.may_ping() {
                // Past the pings the peer allows between heads: the attempts go unconfirmed.
                self.answered.notify_waiters();
                continue;
            }
            let sent = self.stamp(Instant::now());
            self.pinged.store(sent, Ordering::Release);
            self.pings.fetch_add(1, Ordering::AcqRel);
            if ping_pong.send_ping(h2::Ping::opaque()).is_err() {
                return;
            }
            let pong = std::future::poll_fn(|cx| ping_pong.poll_pong(cx));
            if !matches!(tokio::time::timeout(KEEP_ALIVE_INTERVAL, pong).await, Ok(Ok(_))) {
                return;
            }
            self.pinged.store(0, Ordering::Release);
            self.heard.fetch_max(sent, Ordering::Release);
            self.answered.notify_waiters();
        }
    }
}
