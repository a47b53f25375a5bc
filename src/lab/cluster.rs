//! What every lab run shares: the replicas of a scenario, the paused-clock runtime that runs
//! them, and the reading of a request's token stream.

use std::time::Duration;

use futures::{Stream, StreamExt};
use switchyard_sim::{ConfigError, EngineConfig, EngineHandle, Token};
use tokio::time::Instant;

/// One simulated replica of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSpec {
    /// Its endpoint name.
    pub name: String,
    /// Its engine settings (the speed among them).
    pub config: EngineConfig,
    /// The mean of a seeded exponential delay before each request reaches it, in order (the
    /// network and a loaded machine's scheduler, as on real processes); `None`: at once.
    pub delay: Option<Duration>,
}

impl ReplicaSpec {
    /// A default replica (Llama 3.1 8B on one H100) at `speed`.
    pub fn with_speed(name: impl Into<String>, speed: f64) -> Self {
        Self { name: name.into(), config: EngineConfig { speed, ..EngineConfig::default() }, delay: None }
    }

    /// Its endpoint weight for weighted policies: its speed in quarters of an H100 (at least 1),
    /// as an operator who knows the hardware would set it.
    pub fn weight(&self) -> u32 {
        (self.config.speed * 4.0).round().max(1.0) as u32
    }
}

/// Starts every replica's engine on the current runtime.
pub(crate) fn spawn_engines(specs: &[ReplicaSpec]) -> Result<Vec<EngineHandle>, ConfigError> {
    specs.iter().map(|s| EngineHandle::spawn(s.config.clone())).collect()
}

/// Runs `f` to completion on a fresh current-thread runtime whose clock starts paused: virtual
/// time jumps to the next timer whenever every task waits, so an hour of simulated serving takes
/// seconds, and the same inputs give the same run.
pub(crate) fn run_paused<F: Future>(f: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    Ok(runtime.block_on(f))
}

/// When the tokens of one request came, measured from `since`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamTimes {
    /// Until the first token, if one came.
    pub(crate) first: Option<Duration>,
    /// Until the last token, if the stream got to it.
    pub(crate) last: Option<Duration>,
}

/// Reads `tokens` to its end, calling `on_token` at each token, and times it from `since`.
pub(crate) async fn read_tokens<S>(tokens: S, since: Instant, mut on_token: impl FnMut(&Token)) -> StreamTimes
where
    S: Stream<Item = Token>,
{
    let mut tokens = std::pin::pin!(tokens);
    let mut times = StreamTimes::default();
    while let Some(token) = tokens.next().await {
        on_token(&token);
        let at = Instant::now().saturating_duration_since(since);
        if times.first.is_none() {
            times.first = Some(at);
        }
        if token.last {
            times.last = Some(at);
        }
    }
    times
}
