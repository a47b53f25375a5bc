//! The queue: who waits, who goes next, who is refused.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use switchyard_core::{Deadline, Priority};
use tokio::time::Instant;

use crate::config::ShedConfig;
use crate::stats::{Counters, Reason, ShedStats, class};

/// Weight of a new slot interval in its moving average.
const EWMA_WEIGHT: f64 = 0.2;

/// Weight of one dispatch in the moving shares of the places each class takes (about the last
/// twenty dispatches).
const SHARE_WEIGHT: f64 = 0.05;

/// The least share of places a class is counted to get, however many go to the classes above it:
/// a cap on how far overtaking stretches an expected wait.
const MIN_SHARE: f64 = 0.1;

struct Waiter {
    id: u64,
    priority: Priority,
    enqueued: Instant,
    waker: Option<Waker>,
}

/// A refusal a waiter learns of at its next poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    pub(crate) retry_after: Duration,
}

struct State {
    /// Waiters per class (sheddable, standard, critical), oldest first.
    classes: [VecDeque<Waiter>; 3],
    len: usize,
    next_id: u64,
    /// Refusals of waiters not yet polled (at most one per refused waiter still alive).
    notices: Vec<(u64, Refusal)>,
    /// CoDel: when the waits, above target since, will have been so for an interval.
    first_above: Option<Instant>,
    overloaded: bool,
    /// When the queue last stopped counting as overloaded: waits back above target within an
    /// interval of it count as overloaded at once (CoDel resumes dropping where it left off).
    left_at: Option<Instant>,
    /// Moving average of the time between dispatches while requests wait: how often a place frees.
    slot_interval: Option<f64>,
    /// Per class, moving share of the places (dispatches and passes) taken by the classes above
    /// it: the requests that overtake one of its waiters.
    overtaken: [f64; 3],
    last_dispatch: Option<Instant>,
    /// Requests dispatched or passed through and not yet finished.
    in_flight: usize,
    /// Since when nothing has been in flight (`None`: since the queue began, or busy now).
    idle_since: Option<Instant>,
}

/// Where a waiter stands.
pub(crate) enum Turn {
    /// First in line: it may take the service's next place.
    Head,
    /// Others go first.
    Behind,
    /// Refused while waiting.
    Refused(Refusal),
}

/// The queue shared by a layer's services.
pub(crate) struct Queue {
    pub(crate) config: ShedConfig,
    state: Mutex<State>,
    pub(crate) counters: Counters,
}

impl Queue {
    pub(crate) fn new(config: ShedConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                classes: Default::default(),
                len: 0,
                next_id: 0,
                notices: Vec::new(),
                first_above: None,
                overloaded: false,
                left_at: None,
                slot_interval: None,
                overtaken: [0.0; 3],
                last_dispatch: None,
                in_flight: 0,
                idle_since: None,
            }),
            counters: Counters::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stats(&self) -> ShedStats {
        let (len, overloaded) = {
            let s = self.state();
            (s.len, s.overloaded)
        };
        self.counters.snapshot(len, overloaded)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.state().len == 0
    }

    /// Enqueues a request of `priority`, or refuses it. Its expected wait is the number of
    /// waiters that go before it, plus one, times the average interval between dispatches,
    /// stretched by the share of places the classes above it have been taking (they will overtake
    /// it as they arrive: a standard request behind 7 others, with a place freeing every 6 ms and
    /// critical requests taking 30 % of them, waits about 7 × 6 ÷ 0.7 = 60 ms, not 42).
    pub(crate) fn enqueue(
        &self,
        priority: Priority,
        deadline: Option<Deadline>,
        now: Instant,
    ) -> Result<u64, Refusal> {
        let mut wake = Vec::new();
        let result = {
            let mut s = self.state();
            self.drop_late(&mut s, now, &mut wake);
            let c = class(priority);
            let ahead: usize = s.classes[c..].iter().map(VecDeque::len).sum();
            let share = (1.0 - s.overtaken[c]).max(MIN_SHARE);
            let expected = s
                .slot_interval
                .map_or(Duration::ZERO, |i| Duration::from_secs_f64(i * (ahead + 1) as f64 / share));
            let retry_after = expected.max(self.config.target);
            let refuse = |reason| Err(Refusal { reason, retry_after });
            if deadline.is_some_and(|d| expected > d.remaining(now)) {
                refuse(Reason::Deadline)
            } else if priority != Priority::Critical
                && strict(&s, now, self.config.interval)
                && expected > self.config.target
            {
                refuse(Reason::Delay)
            } else if s.len >= self.config.max_queue
                && !self.displace(&mut s, priority, retry_after, &mut wake)
            {
                refuse(Reason::QueueFull)
            } else {
                let id = s.next_id;
                s.next_id += 1;
                s.classes[class(priority)].push_back(Waiter { id, priority, enqueued: now, waker: None });
                s.len += 1;
                Ok(id)
            }
        };
        wake.into_iter().for_each(Waker::wake);
        result
    }

    /// Makes room for a request of `priority` in a full queue: refuses the newest waiter of the
    /// lowest class below it. False when every waiter is of its class or above.
    fn displace(
        &self,
        s: &mut State,
        priority: Priority,
        retry_after: Duration,
        wake: &mut Vec<Waker>,
    ) -> bool {
        let Some(lowest) = (0..class(priority)).find(|&c| !s.classes[c].is_empty()) else {
            return false;
        };
        if let Some(victim) = s.classes[lowest].pop_back() {
            s.len -= 1;
            self.notify(s, victim, Refusal { reason: Reason::Displaced, retry_after }, wake);
        }
        true
    }

    fn notify(&self, s: &mut State, waiter: Waiter, refusal: Refusal, wake: &mut Vec<Waker>) {
        self.counters.refuse(refusal.reason, waiter.priority);
        s.notices.push((waiter.id, refusal));
        wake.extend(waiter.waker);
    }

    /// CoDel's drop, priority-aware: while the queue is overloaded, the oldest waiter of the
    /// lowest class present is refused if it has waited past the target. One per event, as CoDel
    /// drops one per dequeue. Critical waiters are never refused for delay, only for their
    /// deadline or a queue full of critical requests: once every other class is shed, the
    /// critical ones are all that is left to serve, and refusing one that can still make its
    /// deadline frees nothing for a more important request.
    fn drop_late(&self, s: &mut State, now: Instant, wake: &mut Vec<Waker>) {
        if !s.overloaded {
            return;
        }
        let critical = class(Priority::Critical);
        let Some(lowest) = (0..critical).find(|&c| !s.classes[c].is_empty()) else { return };
        let late = s.classes[lowest]
            .front()
            .is_some_and(|w| now.saturating_duration_since(w.enqueued) > self.config.target);
        if late && let Some(waiter) = s.classes[lowest].pop_front() {
            s.len -= 1;
            let retry_after = self.config.target;
            self.notify(s, waiter, Refusal { reason: Reason::Delay, retry_after }, wake);
            if let Some(head) = head_mut(s) {
                wake.extend(head.waker.clone());
            }
        }
    }

    /// Where waiter `id` stands; its waker is kept to tell it when that changes.
    pub(crate) fn turn(&self, id: u64, cx: &Context<'_>) -> Turn {
        let mut s = self.state();
        if let Some(at) = s.notices.iter().position(|(n, _)| *n == id) {
            return Turn::Refused(s.notices.swap_remove(at).1);
        }
        let is_head = head_mut(&mut s).is_some_and(|w| w.id == id);
        for w in s.classes.iter_mut().flat_map(|c| c.iter_mut()) {
            if w.id == id {
                if !w.waker.as_ref().is_some_and(|k| k.will_wake(cx.waker())) {
                    w.waker = Some(cx.waker().clone());
                }
                break;
            }
        }
        if is_head { Turn::Head } else { Turn::Behind }
    }

    /// Waiter `id` leaves the queue to be served: its wait is CoDel's sample and the slot
    /// interval's.
    pub(crate) fn dispatch(&self, id: u64, now: Instant) {
        let mut wake = Vec::new();
        {
            let mut s = self.state();
            if let Some(waiter) = remove(&mut s, id) {
                self.counters.admit(waiter.priority);
                take_place(&mut s, waiter.priority);
                let since = s.last_dispatch.map_or(waiter.enqueued, |l| l.max(waiter.enqueued));
                let gap = now.saturating_duration_since(since);
                // A gap spent mostly with nothing in flight (a cold start, a pool held empty)
                // waited for no place to free: it says nothing of the service's pace.
                let idle = if s.in_flight > 0 {
                    Duration::ZERO
                } else {
                    s.idle_since.map_or(gap, |t| now.saturating_duration_since(t).min(gap))
                };
                if idle.saturating_mul(2) <= gap {
                    let interval = gap.as_secs_f64();
                    s.slot_interval = Some(match s.slot_interval {
                        Some(avg) => avg + (interval - avg) * EWMA_WEIGHT,
                        None => interval,
                    });
                }
                // CoDel's sample is the standing queue's delay: with classes served out of
                // arrival order, the dispatched waiter (often a critical one that jumped the line)
                // may have waited little while older waiters of lower classes wait on; the
                // oldest of them counts too.
                let wait = now.saturating_duration_since(waiter.enqueued).max(oldest_wait(&s, now));
                self.sojourn(&mut s, wait, now);
            }
            s.last_dispatch = Some(now);
            s.in_flight += 1;
            s.idle_since = None;
            self.drop_late(&mut s, now, &mut wake);
            if let Some(head) = head_mut(&mut s) {
                wake.extend(head.waker.clone());
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// A request passed straight through (nobody waiting and the service ready).
    pub(crate) fn pass(&self, priority: Priority, now: Instant) {
        self.counters.admit(priority);
        let mut s = self.state();
        take_place(&mut s, priority);
        s.in_flight += 1;
        s.idle_since = None;
        s.last_dispatch = Some(now);
        self.sojourn(&mut s, Duration::ZERO, now);
    }

    fn sojourn(&self, s: &mut State, wait: Duration, now: Instant) {
        if wait <= self.config.target {
            if s.overloaded {
                s.left_at = Some(now);
            }
            s.first_above = None;
            s.overloaded = false;
        } else {
            let recently = s.left_at.is_some_and(|t| now.saturating_duration_since(t) < self.config.interval);
            if recently {
                s.overloaded = true;
            }
            match s.first_above {
                None => s.first_above = Some(now + self.config.interval),
                Some(at) if now >= at => s.overloaded = true,
                Some(_) => {}
            }
        }
    }

    /// Wakes the first in line (a place it may take was given back).
    pub(crate) fn wake_head(&self) {
        let waker = head_mut(&mut self.state()).and_then(|h| h.waker.clone());
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// A request dispatched or passed through has finished (answered, failed or dropped).
    pub(crate) fn finish(&self, now: Instant) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Some(now);
        }
    }

    /// Waiter `id` gave up (refused for its deadline, or its caller went away).
    pub(crate) fn leave(&self, id: u64) {
        let mut wake = None;
        {
            let mut s = self.state();
            s.notices.retain(|(n, _)| *n != id);
            let was_head = head_mut(&mut s).is_some_and(|w| w.id == id);
            if remove(&mut s, id).is_some() && was_head {
                wake = head_mut(&mut s).and_then(|h| h.waker.clone());
            }
        }
        if let Some(w) = wake {
            w.wake();
        }
    }

    /// Counts a refusal of a request that never waited.
    pub(crate) fn count(&self, reason: Reason, priority: Priority) {
        self.counters.refuse(reason, priority);
    }
}

/// How long the longest-waiting request still in the queue has waited (zero when it is empty).
fn oldest_wait(s: &State, now: Instant) -> Duration {
    s.classes
        .iter()
        .filter_map(|c| c.front())
        .map(|w| now.saturating_duration_since(w.enqueued))
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Whether admission holds expected waits to the target: while the queue is overloaded, and
/// while requests still wait within an interval of leaving overload. Under sustained overload
/// the waits admission holds near the target dip below it now and then; reopening the queue at
/// each dip to everything that fits a deadline lets in a flood that waits several targets behind
/// the line before the next long wait is dispatched. Once the line has emptied, admission opens
/// again (an empty line is not overload, and its next waits are what tells).
fn strict(s: &State, now: Instant, interval: Duration) -> bool {
    s.overloaded || (s.len > 0 && s.left_at.is_some_and(|t| now.saturating_duration_since(t) < interval))
}

/// A request of `priority` took a place: the classes below it were overtaken.
fn take_place(s: &mut State, priority: Priority) {
    let taker = class(priority);
    for (c, share) in s.overtaken.iter_mut().enumerate() {
        let above = if taker > c { 1.0 } else { 0.0 };
        *share += (above - *share) * SHARE_WEIGHT;
    }
}

fn head_mut(s: &mut State) -> Option<&mut Waiter> {
    s.classes.iter_mut().rev().find_map(|c| c.front_mut())
}

fn remove(s: &mut State, id: u64) -> Option<Waiter> {
    for c in s.classes.iter_mut() {
        if let Some(at) = c.iter().position(|w| w.id == id) {
            let waiter = c.remove(at);
            s.len -= 1;
            return waiter;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_cold_start_is_not_learnt_as_slow_service() {
        let queue = Queue::new(ShedConfig {
            max_queue: 8,
            target: Duration::from_millis(10),
            interval: Duration::from_millis(100),
            pool: None,
        });
        // The pool is held empty for 5 s with a request waiting; then the first dispatch.
        let id = queue.enqueue(Priority::Critical, None, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        queue.dispatch(id, Instant::now());
        // Had the hold been learnt, a newcomer would expect 5 s and miss a 100 ms deadline.
        let deadline = Deadline(Instant::now() + Duration::from_millis(100));
        let id = queue.enqueue(Priority::Standard, Some(deadline), Instant::now()).unwrap();
        // Busy from here on: a gap with a request in flight is learnt.
        tokio::time::advance(Duration::from_millis(400)).await;
        queue.dispatch(id, Instant::now());
        let deadline = Deadline(Instant::now() + Duration::from_millis(100));
        let refused = queue.enqueue(Priority::Standard, Some(deadline), Instant::now()).unwrap_err();
        assert_eq!(refused.reason, Reason::Deadline);
    }
}
