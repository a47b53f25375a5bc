//! Reading a request's first frames under bounds: bytes, frames, a deadline and the connection's
//! byte budget.
//!
//! A [`Peek`] reads body frames and feeds each one to the [`Scanner`] once, holding the frames
//! for the replay, until the scan stops (every key known, or the first message over), the body
//! ends, [`max_peek_bytes`](KeysConfig::max_peek_bytes) are read, or the connection's byte budget
//! is used up. It fails:
//! - with [`TooLarge`](ErrorKind::TooLarge) when the keys are still unknown after
//!   [`max_peek_frames`](KeysConfig::max_peek_frames) frames (a client dribbling bytes to make
//!   the proxy work per byte);
//! - with [`DeadlineExceeded`](ErrorKind::DeadlineExceeded) when the client stalls: no frame
//!   before the peek's deadline (its [`peek_timeout`](KeysConfig::peek_timeout) or the request's
//!   own deadline, whichever is sooner).
//!
//! Every frame held takes permits from the connection's budget (a semaphore of bytes): one per
//! byte plus [`FRAME_COST`] for the frame itself (or the whole budget for a frame larger than
//! it). The permits travel with the frame into the [`Replay`] and are released as the frame is
//! handed on. A frame for which the budget has no permits left is held without them (it has been
//! read already: one frame, at most HTTP/2's frame size) and ends the peek there, with the keys
//! found so far: a peek never waits for budget, so many streams sharing a connection cannot hold
//! each other's budget until all time out; the request goes on, routed by what is known.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use switchyard_core::{Error, ErrorKind};
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::time::{Instant, Sleep};

use crate::config::KeysConfig;
use crate::replay::{Held, Replay};
use crate::scan::{BodyKeys, Scanner};

/// Budget permits a held frame takes besides its bytes: its entry in the replay queue (about 60
/// bytes) and, for HTTP/2, the 9-byte frame header that stays in the connection's read buffer
/// with it. Without it, a client's 1-byte frames would hold ten times the memory they are
/// charged for.
pub(crate) const FRAME_COST: usize = 64;

/// The peek of one request's body.
pub(crate) struct Peek<B: Body> {
    /// The client's body; `None` once it ended.
    body: Option<B>,
    scanner: Option<Scanner>,
    head: VecDeque<Held>,
    error: Option<B::Error>,
    trailers: Option<http::HeaderMap>,
    frames: u32,
    read: usize,
    config: Arc<KeysConfig>,
    budget: Arc<Semaphore>,
    /// The budget had no permits for the last frame: the peek ends there.
    out_of_budget: bool,
    deadline: Instant,
    /// Made the first time the peek has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> Peek<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    pub(crate) fn new(
        body: B,
        scanner: Scanner,
        config: Arc<KeysConfig>,
        budget: Arc<Semaphore>,
        deadline: Instant,
    ) -> Self {
        Self {
            body: Some(body),
            scanner: Some(scanner),
            head: VecDeque::new(),
            error: None,
            trailers: None,
            frames: 0,
            read: 0,
            config,
            budget,
            out_of_budget: false,
            deadline,
            sleep: None,
        }
    }

    /// Reads frames until the keys are known or a bound is reached.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Once the peek has waited, its deadline may pass while it is not polled, and then it
        // may be woken by a frame: it must not read on.
        if self.sleep.is_some() && Instant::now() >= self.deadline {
            return Poll::Ready(Err(Error::new(ErrorKind::DeadlineExceeded)));
        }
        loop {
            if self.done() {
                return Poll::Ready(Ok(()));
            }
            let Some(body) = self.body.as_mut() else { return Poll::Ready(Ok(())) };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.frames = self.frames.saturating_add(1);
                        if self.frames > self.config.max_peek_frames {
                            return Poll::Ready(Err(Error::new(ErrorKind::TooLarge(
                                "the first message came in too many small frames".into(),
                            ))));
                        }
                        self.scan(&data);
                        self.hold(data);
                    }
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.body = None;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.error = Some(e);
                    self.body = None;
                }
                Poll::Ready(None) => self.body = None,
                Poll::Pending => return self.poll_deadline(cx),
            }
        }
    }

    fn done(&self) -> bool {
        self.body.is_none()
            || self.out_of_budget
            || self.read >= self.config.max_peek_bytes
            || self.scanner.as_ref().is_none_or(|s| s.stopped().is_some())
    }

    fn scan(&mut self, data: &[u8]) {
        let room = self.config.max_peek_bytes.saturating_sub(self.read);
        if let Some(scanner) = self.scanner.as_mut() {
            scanner.feed(&data[..room.min(data.len())]);
        }
        self.read = self.read.saturating_add(data.len());
    }

    /// Keeps `data` for the replay, with its budget permits; without them (the budget is used
    /// up) it is kept all the same, and the peek ends.
    fn hold(&mut self, data: Bytes) {
        let cost = data.len().saturating_add(FRAME_COST).min(self.config.budget_permits());
        let permits = u32::try_from(cost).unwrap_or(u32::MAX);
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => self.head.push_back(Held { data, _permit: Some(permit) }),
            Err(TryAcquireError::NoPermits) => {
                tracing::debug!(read = self.read, "the connection's peek budget is used up: keys so far");
                self.out_of_budget = true;
                self.head.push_back(Held { data, _permit: None });
            }
            Err(TryAcquireError::Closed) => self.head.push_back(Held { data, _permit: None }),
        }
    }

    /// Waits for the deadline alongside the next frame.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let deadline = self.deadline;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Error::new(ErrorKind::DeadlineExceeded))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The keys found and the body to forward, once [`poll`](Self::poll) is ready (after an
    /// error, dropping them releases what the peek held).
    pub(crate) fn finish(&mut self) -> (BodyKeys, Replay<B>) {
        let keys = self.scanner.take().map(Scanner::finish).unwrap_or_default();
        let replay = Replay::peeked(
            std::mem::take(&mut self.head),
            self.error.take(),
            self.trailers.take(),
            self.body.take(),
        );
        (keys, replay)
    }
}
