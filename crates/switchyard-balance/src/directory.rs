//! The balancer's endpoints: membership kept up to date by a discovery task, off the request
//! path.
//!
//! A [`Directory`] holds the current members (endpoint state and service, in membership order)
//! under a lock, and a version number that moves on every change. Discovery changes are applied
//! by a task of their own (spawned by [`Balance::new`](crate::Balance::new)); a request only
//! reads the version (one atomic load), and takes the lock to copy the members only when the
//! version has moved since its balancer last looked. Each change wakes a balancer waiting for its
//! first endpoint.
//!
//! - Inserting an id already known with the same address updates it in place: it keeps its
//!   [`EndpointState`] (in flight, latency, speed, ejection) and takes the new service and the
//!   new weight and labels. Membership does not change.
//! - Inserting a known id with another address replaces the endpoint (a new state); the old one
//!   drains.
//! - A removed endpoint leaves the members at once (it gets no new request). If requests are in
//!   flight on it, it stays on the [`LoadBoard`], [draining](EndpointState::is_draining), until
//!   the last ends.
//! - The membership generation moves on every insert of a new endpoint and every removal, never
//!   on ejection or an in-place update, so that a policy's structures (a hash ring) are rebuilt
//!   only when the members change.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures::task::AtomicWaker;
use switchyard_core::EndpointId;
use tower::BoxError;
use tower::discover::{Change, Discover};

use crate::board::LoadBoard;
use crate::endpoint::{EndpointState, TrackingConfig};
use crate::outlier::PoolState;
use crate::service::Backend;

/// One member: its live state and the service that reaches it.
pub(crate) struct Slot<S> {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) service: S,
}

impl<S: Clone> Clone for Slot<S> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), service: self.service.clone() }
    }
}

/// The members, and what the writer side needs: where to publish, how to track, and the pool's
/// shared state.
pub(crate) struct Writer<S> {
    pub(crate) slots: Vec<Slot<S>>,
    /// Moves on every insert of a new endpoint and every removal.
    pub(crate) generation: u64,
    pub(crate) board: LoadBoard,
    pub(crate) tracking: TrackingConfig,
    pub(crate) pool: Arc<PoolState>,
}

pub(crate) struct Directory<S> {
    writer: Mutex<Writer<S>>,
    /// Moves on every change of `slots`.
    version: AtomicU64,
    /// How many members there are.
    len: AtomicUsize,
    /// No more changes will come: discovery ended, or there is none.
    ended: AtomicBool,
    /// A balancer waiting for its first endpoint.
    waker: AtomicWaker,
}

impl<S> Directory<S> {
    pub(crate) fn new(writer: Writer<S>) -> Self {
        Self {
            writer: Mutex::new(writer),
            version: AtomicU64::new(1),
            len: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// The version of the members: it moves on every change.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// How many members there are.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn writer(&self) -> MutexGuard<'_, Writer<S>> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Takes every member off the board (the balancer is gone).
    pub(crate) fn clear_board(&self) {
        let writer = self.writer();
        for slot in &writer.slots {
            writer.board.remove(slot.state.id(), &slot.state);
        }
    }

    /// Moves every member to `board`.
    pub(crate) fn move_to_board(&self, board: LoadBoard) {
        let mut writer = self.writer();
        for slot in &writer.slots {
            writer.board.remove(slot.state.id(), &slot.state);
            board.insert(slot.state.clone());
        }
        writer.board = board;
    }
}

impl<S: Clone> Directory<S> {
    /// Applies one discovery change.
    pub(crate) fn apply(&self, change: Change<EndpointId, Backend<S>>) {
        let mut writer = self.writer();
        match change {
            Change::Insert(id, backend) => insert(&mut writer, id, backend),
            Change::Remove(id) => remove(&mut writer, &id),
        }
        self.len.store(writer.slots.len(), Ordering::Release);
        self.version.fetch_add(1, Ordering::AcqRel);
        drop(writer);
        self.waker.wake();
    }

    /// A copy of the members, their generation, and the version they are at.
    pub(crate) fn read(&self) -> (Vec<Slot<S>>, u64, u64) {
        let writer = self.writer();
        (writer.slots.clone(), writer.generation, self.version())
    }
}

fn insert<S>(writer: &mut Writer<S>, id: EndpointId, backend: Backend<S>) {
    let mut endpoint = backend.endpoint;
    endpoint.id = id;
    match writer.slots.iter().position(|s| s.state.id() == &endpoint.id) {
        Some(i) if writer.slots[i].state.endpoint().address == endpoint.address => {
            // The same endpoint again: keep its load, take the new service and description.
            writer.slots[i].state.update(endpoint);
            writer.slots[i].service = backend.service;
        }
        Some(i) => {
            // A new endpoint under a known id (its address changed): counted anew, as a new one.
            let state = Arc::new(EndpointState::new(endpoint, writer.tracking));
            state.set_counting_prior(counting_prior(&writer.slots));
            state.set_limit(writer.pool.endpoint_limit.as_ref().map(crate::EndpointLimit::build));
            writer.board.insert(state.clone());
            let old = std::mem::replace(&mut writer.slots[i], Slot { state, service: backend.service });
            writer.generation += 1;
            retire(&writer.board, &writer.pool, &old.state);
        }
        None => {
            let state = Arc::new(EndpointState::new(endpoint, writer.tracking));
            state.set_counting_prior(counting_prior(&writer.slots));
            state.set_limit(writer.pool.endpoint_limit.as_ref().map(crate::EndpointLimit::build));
            writer.board.insert(state.clone());
            writer.slots.push(Slot { state, service: backend.service });
            writer.generation += 1;
        }
    }
    writer.pool.size.store(writer.slots.len(), Ordering::Release);
}

/// How a new endpoint counts the work until its own answers judge: as most of its peers were
/// judged to (a replica added to a pool of LLM engines counts its prompts' sizes from its first
/// answer; one added to classic servers every request alike), per request where none has been
/// judged yet (see [`capacity`](crate::capacity)).
fn counting_prior<S>(slots: &[Slot<S>]) -> bool {
    let (mut per_request, mut per_work) = (0usize, 0usize);
    for slot in slots {
        match slot.state.counting_verdict() {
            Some(true) => per_request += 1,
            Some(false) => per_work += 1,
            None => {}
        }
    }
    per_work <= per_request
}

fn remove<S>(writer: &mut Writer<S>, id: &EndpointId) {
    let Some(i) = writer.slots.iter().position(|s| s.state.id() == id) else { return };
    // `remove`, not `swap_remove`: the order policies see stays stable.
    let old = writer.slots.remove(i);
    writer.generation += 1;
    writer.pool.size.store(writer.slots.len(), Ordering::Release);
    retire(&writer.board, &writer.pool, &old.state);
}

/// An endpoint leaves the members: it gives back an ejection slot it held, and drains.
fn retire(board: &LoadBoard, pool: &PoolState, state: &Arc<EndpointState>) {
    // Its ejection may have run out without the balancer seeing it yet: it holds a slot until
    // then, so ask the outlier state, not the clock.
    if state.outlier.lock().unwrap_or_else(PoisonError::into_inner).retire() {
        pool.release_ejection();
    }
    if state.drain(board, state) {
        tracing::debug!(endpoint = %state.id(), in_flight = state.in_flight(), "removed endpoint drains");
    }
}

/// Drives `discover` into `directory` until the stream ends or the directory is dropped.
///
/// A discovery error is logged and the stream polled again after a back-off (100 ms doubling to
/// 5 s, reset by the next change), keeping the endpoints known so far.
pub(crate) async fn run<D, S>(discover: D, directory: Weak<Directory<S>>)
where
    D: Discover<Key = EndpointId, Service = Backend<S>>,
    D::Error: Into<BoxError>,
    S: Clone,
{
    let mut discover = pin!(discover);
    let mut backoff = Duration::from_millis(100);
    loop {
        let change = std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).await;
        let Some(directory) = directory.upgrade() else { return };
        match change {
            None => {
                directory.end();
                return;
            }
            Some(Ok(change)) => {
                backoff = Duration::from_millis(100);
                directory.apply(change);
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                tracing::warn!(retry_in = ?backoff, "endpoint discovery failed: {e}");
                drop(directory);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
