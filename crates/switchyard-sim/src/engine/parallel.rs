//! The loop of a parallel-kind replica ([`ReplicaKind::Parallel`](crate::ReplicaKind)): `k`
//! slots, a fixed service time per request, FIFO admission into the first free slot.
//!
//! The same state, queue, deadlines, cancellation and load snapshots as the LLM engine; only the
//! work differs. The task sleeps until the next service ends or something changes (a submission,
//! a cancellation that frees a slot, shutdown), whichever comes first, so a request that finds a
//! free slot starts at once rather than at the next end of service.

use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::{EngineShared, EngineState, Sequence, Work};

impl EngineState {
    /// Starts waiting requests, in order, while a slot is free; each ends `service_time` later.
    fn admit_parallel(&mut self, slots: usize, service_time: Duration, now: Instant) {
        while self.running.len() < slots {
            let Some(req) = self.waiting.pop_front() else { break };
            req.progress().admitted_at = Some(now);
            let prefilled = req.prompt_tokens;
            self.running.push(Sequence {
                req,
                prefilled,
                emitted: 0,
                reservation: 0,
                work: Work::Idle,
                ends_at: Some(now + service_time),
            });
        }
    }

    /// Finishes every request whose service ended by `now`: all its tokens at once, at its end
    /// of service. Returns the wakers of their generations.
    fn finish_parallel(&mut self, now: Instant) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let mut done = 0;
        self.running.retain(|seq| {
            let Some(end) = seq.ends_at.filter(|&end| end <= now) else { return true };
            let mut p = seq.req.progress();
            p.emitted = seq.req.output_tokens;
            p.first_token_at = Some(end);
            p.finished_at = Some(end);
            wakers.extend(p.waker.take());
            done += 1;
            false
        });
        self.completed += done;
        wakers
    }

    /// When the next service ends, if any runs.
    fn next_end(&self) -> Option<Instant> {
        self.running.iter().filter_map(|s| s.ends_at).min()
    }
}

/// The parallel replica's task: returns on shutdown or once every handle and request is gone.
pub(super) async fn run(shared: &Arc<EngineShared>, service_time: Duration) {
    let slots = shared.config.max_batch as usize;
    loop {
        let (next, wakers, done) = {
            let mut state = shared.lock();
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let mut wakers = state.finish_parallel(now);
            wakers.extend(state.drop_expired(now));
            state.admit_parallel(slots, service_time, now);
            let next = state.next_end();
            shared.publish(&state);
            let done = next.is_none() && state.handles_gone && state.waiting.is_empty();
            (next, wakers, done)
        };
        wakers.into_iter().for_each(Waker::wake);
        if done {
            return;
        }
        match next {
            // `Notify` keeps a permit for a notification sent while the state was being read,
            // so no submission is missed between the lock and the wait.
            Some(end) => tokio::select! {
                () = sleep_until(end) => {}
                () = shared.wake.notified() => {}
            },
            None => shared.wake.notified().await,
        }
    }
}
