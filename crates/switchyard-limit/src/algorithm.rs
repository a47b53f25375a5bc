//! What every limit algorithm is: a state machine that turns samples into a limit.

use std::fmt;
use std::time::Duration;

use switchyard_core::Outcome;
use tokio::time::Instant;

/// One finished request, as a limit algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the request ended (time-windowed algorithms, such as Envoy's, read it).
    pub now: Instant,
    /// Its round-trip time: from admission to the first byte of its response (the whole response
    /// for a unary call, the time to first token for a stream).
    pub rtt: Duration,
    /// Requests in flight when it was admitted, itself included.
    pub in_flight: usize,
    /// Whether it was dropped: refused for lack of capacity, timed out or failed by the server
    /// (see [`Signal::of`]).
    pub dropped: bool,
}

/// What an [`Outcome`] tells a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Served: its RTT is a latency sample.
    Success,
    /// Dropped: the service is past its capacity (loss-based algorithms back off).
    Dropped,
    /// Says nothing about capacity: no sample (the caller went away, or the request never
    /// reached the service).
    Ignored,
}

impl Signal {
    /// How a request's outcome feeds a limit, as Netflix's gRPC interceptors classify calls:
    /// `OK` and application errors (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) are successes;
    /// `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED` and `UNAVAILABLE` are drops; a cancelled call
    /// and a connection never opened are ignored.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Ok | Outcome::Other { .. } => Signal::Success,
            Outcome::Overloaded { .. } | Outcome::DeadlineExceeded | Outcome::Unavailable => Signal::Dropped,
            Outcome::Cancelled | Outcome::ConnectFailed => Signal::Ignored,
            // Outcome is non-exhaustive: a kind added later says nothing until classified here.
            _ => Signal::Ignored,
        }
    }
}

/// A concurrency-limit algorithm: a plain state machine, fed one [`Sample`] per finished request,
/// answering with the number of requests that may be in flight at once.
///
/// Implementations do no I/O and read no clock: time comes in the samples, so tests and the lab
/// drive them under tokio's paused clock or in a simulation of their own.
pub trait LimitAlgorithm: Send + Sync + fmt::Debug {
    /// The algorithm's registered name (`fixed`, `aimd`, `gradient2`, `vegas`, `envoy-gradient`).
    fn name(&self) -> &'static str;

    /// The limit in force.
    fn limit(&self) -> usize;

    /// Feeds one sample; returns the new limit.
    fn update(&mut self, sample: &Sample) -> usize;
}

impl LimitAlgorithm for Box<dyn LimitAlgorithm> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn limit(&self) -> usize {
        (**self).limit()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        (**self).update(sample)
    }
}

/// `max(1, floor(log10(limit)))`, the step function of Netflix's Vegas (its `Log10RootFunction`).
pub(crate) fn log10_step(limit: f64) -> f64 {
    limit.max(1.0).log10().floor().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Code;

    #[test]
    fn outcomes_are_classified() {
        assert_eq!(Signal::of(&Outcome::Ok), Signal::Success);
        assert_eq!(Signal::of(&Outcome::Other { code: Code::NotFound }), Signal::Success);
        assert_eq!(Signal::of(&Outcome::Overloaded { pushback: None }), Signal::Dropped);
        assert_eq!(Signal::of(&Outcome::DeadlineExceeded), Signal::Dropped);
        assert_eq!(Signal::of(&Outcome::Unavailable), Signal::Dropped);
        assert_eq!(Signal::of(&Outcome::Cancelled), Signal::Ignored);
        assert_eq!(Signal::of(&Outcome::ConnectFailed), Signal::Ignored);
        assert_eq!(log10_step(5.0), 1.0);
        assert_eq!(log10_step(150.0), 2.0);
    }
}
