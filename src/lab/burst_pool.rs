//! The `burst` scenario's pool: simulated replicas started and stopped by an autoscaler through
//! the [`Scaler`] trait, with a cold start, joining the balancer only once started and leaving it
//! by draining.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use switchyard_autoscale::{PoolSize, ScaleError, Scaler};
use switchyard_balance::{Backend, LoadBoard};
use switchyard_core::{Endpoint, EndpointId};
use switchyard_sim::{EngineConfig, EngineHandle};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower::discover::Change;

use super::replica::SimReplica;

/// A change for the balancer's discovery stream.
pub(crate) type PoolChange = Result<Change<EndpointId, Backend<SimReplica>>, Infallible>;

#[derive(Debug)]
struct Member {
    id: EndpointId,
    engine: Option<EngineHandle>,
    starting: Option<AbortHandle>,
}

/// What the pool looked like after one change, from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PoolEvent {
    /// Seconds from the start.
    pub(crate) at: f64,
    /// Replicas asked for.
    pub(crate) desired: u32,
    /// Replicas ready.
    pub(crate) ready: u32,
    /// Replicas paid for: starting, ready and draining.
    pub(crate) provisioned: u32,
}

#[derive(Debug)]
struct State {
    members: Vec<Member>,
    draining: u32,
    next: u64,
    desired: u32,
    events: Vec<PoolEvent>,
}

/// A pool of simulated replicas (cheap to clone: clones share it).
#[derive(Debug, Clone)]
pub(crate) struct SimPool {
    state: Arc<Mutex<State>>,
    tx: mpsc::Sender<PoolChange>,
    board: LoadBoard,
    config: EngineConfig,
    cold_start: Duration,
    start: Instant,
}

impl SimPool {
    /// A pool feeding `tx`, whose balancer publishes on `board`.
    pub(crate) fn new(
        tx: mpsc::Sender<PoolChange>,
        board: LoadBoard,
        config: EngineConfig,
        cold_start: Duration,
    ) -> Self {
        let state = State { members: Vec::new(), draining: 0, next: 0, desired: 0, events: Vec::new() };
        Self { state: Arc::new(Mutex::new(state)), tx, board, config, cold_start, start: Instant::now() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, state: &mut State) {
        let ready = state.members.iter().filter(|m| m.engine.is_some()).count() as u32;
        let event = PoolEvent {
            at: Instant::now().saturating_duration_since(self.start).as_secs_f64(),
            desired: state.desired,
            ready,
            provisioned: state.members.len() as u32 + state.draining,
        };
        state.events.push(event);
    }

    /// Every ready replica's load report now, as a metrics scrape of its engine would read it.
    pub(crate) fn scrape(&self) -> Vec<(EndpointId, switchyard_core::ReportedLoad)> {
        let state = self.lock();
        state
            .members
            .iter()
            .filter_map(|m| m.engine.as_ref().map(|e| (m.id.clone(), e.reported_load())))
            .collect()
    }

    /// The pool's history of changes.
    pub(crate) fn events(&self) -> Vec<PoolEvent> {
        self.lock().events.clone()
    }

    /// Starts `n` replicas ready at once (the pool at the start of a run).
    pub(crate) async fn start_ready(&self, n: u32) -> Result<(), ScaleError> {
        for _ in 0..n {
            let id = {
                let mut state = self.lock();
                state.desired += 1;
                let id = EndpointId::new(format!("replica-{}", state.next));
                state.next += 1;
                state.members.push(Member { id: id.clone(), engine: None, starting: None });
                id
            };
            self.join(id).await?;
        }
        Ok(())
    }

    /// Starts the replica's engine and adds it to the balancer.
    async fn join(&self, id: EndpointId) -> Result<(), ScaleError> {
        let engine =
            EngineHandle::spawn(self.config.clone()).map_err(|e| ScaleError::Start(e.to_string()))?;
        let endpoint = Endpoint::new(id.clone(), format!("sim://{id}"));
        self.tx
            .send(Ok(Change::Insert(id.clone(), Backend::new(endpoint, SimReplica::new(engine.clone())))))
            .await
            .map_err(|_| ScaleError::DiscoveryGone)?;
        let mut state = self.lock();
        match state.members.iter_mut().find(|m| m.id == id) {
            Some(member) => {
                member.engine = Some(engine);
                member.starting = None;
            }
            None => engine.shutdown(),
        }
        self.record(&mut state);
        Ok(())
    }

    fn start_one(&self) {
        let mut state = self.lock();
        let id = EndpointId::new(format!("replica-{}", state.next));
        state.next += 1;
        let pool = self.clone();
        let joining = id.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(pool.cold_start).await;
            if let Err(e) = pool.join(joining).await {
                tracing::warn!("lab burst: a replica could not start: {e}");
            }
        });
        state.members.push(Member { id, engine: None, starting: Some(task.abort_handle()) });
    }

    fn stop_one(&self) {
        let mut state = self.lock();
        // A replica still starting first (it took nothing), else the newest ready one.
        let index =
            state.members.iter().rposition(|m| m.engine.is_none()).or(state.members.len().checked_sub(1));
        let Some(member) = index.map(|i| state.members.remove(i)) else { return };
        if let Some(starting) = member.starting {
            starting.abort();
            return;
        }
        let Some(engine) = member.engine else { return };
        state.draining += 1;
        let pool = self.clone();
        tokio::spawn(async move {
            let _ = pool.tx.send(Ok(Change::Remove(member.id.clone()))).await;
            // Out of discovery: the balancer keeps it on its board until its requests end.
            while pool.board.get(&member.id).is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await; // polling the board while it drains
            }
            engine.shutdown();
            let mut state = pool.lock();
            state.draining = state.draining.saturating_sub(1);
            pool.record(&mut state);
        });
    }

    /// Stops every engine (the end of a run).
    pub(crate) fn shutdown(&self) {
        for member in self.lock().members.drain(..) {
            if let Some(task) = member.starting {
                task.abort();
            }
            if let Some(engine) = member.engine {
                engine.shutdown();
            }
        }
    }
}

impl Scaler for SimPool {
    async fn set_desired(&mut self, replicas: u32) -> Result<(), ScaleError> {
        let current = {
            let mut state = self.lock();
            state.desired = replicas;
            state.members.len() as u32
        };
        for _ in current..replicas {
            self.start_one();
        }
        for _ in replicas..current {
            self.stop_one();
        }
        let mut state = self.lock();
        self.record(&mut state);
        Ok(())
    }

    fn size(&self) -> PoolSize {
        let state = self.lock();
        PoolSize {
            desired: state.desired,
            current: state.members.len() as u32,
            ready: state.members.iter().filter(|m| m.engine.is_some()).count() as u32,
        }
    }
}
