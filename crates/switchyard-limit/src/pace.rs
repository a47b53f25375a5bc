//! Pace: whether a streaming response (an LLM's tokens) keeps a pace that its deadline and its
//! service's time-per-token objective allow, judged while it streams, so that a limit hears of
//! an overload seconds before the deadline it costs.
//!
//! On an LLM engine an overload shows first in the time per output token (TPOT): every step of
//! a saturated engine carries a prefill chunk, and a decoding request waits for it. The missed
//! deadline comes seconds later, and a loss-based limit (AIMD) that hears of it only then has
//! admitted seconds' worth of requests too many. [`PaceCheck`] watches a stream's tokens (or,
//! on the gateway, its gRPC messages) and says [`Pace::Behind`] as soon as the stream is late
//! by both of two tests; the caller then [settles](crate::Permit::settle) the request's permit
//! as a drop, keeping its place until the stream ends.
//!
//! # The rule
//!
//! After the `n`-th token (`n ≥ min_tokens`), with the first token at `t₁` and now `t`, the
//! stream's pace is the mean time per token since the first: `pace = (t − t₁) / (n − 1)`. The
//! stream is behind when **both** hold:
//!
//! 1. `pace > tpot_objective`: it is slower than the service's per-token objective, and
//! 2. `t + pace × (max_tokens − n) > deadline`: at that pace, the tokens it may still owe take
//!    it past its deadline.
//!
//! A test whose input is unknown does not forgive: without a deadline or a `max_tokens`, the
//! objective alone decides. A stream that has sent `max_tokens` tokens is never behind.
//!
//! # Why it errs late, not early, when `max_tokens` is a loose bound
//!
//! A caller knows `max_tokens`, an upper bound: a real engine stops at its end-of-sequence token,
//! often long before. Test 2 alone would count as owed every token up to `max_tokens` and
//! report drops for streams that end early within their deadline. Test 1 bounds that: a stream
//! at or under the objective is never behind, whatever its length, so a stream that ends early
//! at a good pace is never reported. A stream reported behind is slower than the objective (an
//! overload signal in itself: the service promised that pace) *and* could not make its
//! deadline if it ran to `max_tokens`. Where `max_tokens` is tight, test 2 forgives slow streams
//! whose deadline still holds; where it is loose, test 1 decides. A `max_tokens` below the real
//! output (a wrong guess of the server's default) only shortens what is owed: it errs late.
//! The pace is a mean since the first token (not since the request, whose queueing and prefill
//! are the time to first token's), over at least `min_tokens` tokens, so that one engine step
//! that carried a long prefill chunk does not stand for the whole stream.
//!
//! # Defaults and sources
//!
//! - `min_tokens` 16: in lab `overload` (AIMD over four simulated replicas), judging from the 3rd
//!   or 8th token held the limit too low (goodput at 3× capacity 0.84 and 0.92), from the 16th
//!   or a quarter of the output did not (1.18 and 1.15).
//! - `tpot_objective` 100 ms: an interactive chat objective, as in DistServe (OSDI '24), whose
//!   chatbot workload sets a TPOT objective of 0.1 s; four to five times the decode step of a
//!   full batch of Llama 3.1 8B on an H100 (the `switchyard-sim` defaults: 19-25 ms). Set it to
//!   the service's own objective; on the gateway it is per streamed message (a server that sends
//!   several tokens per message needs it multiplied).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use switchyard_limit::{Pace, PaceBudget, PaceCheck, PaceParams};
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let start = Instant::now();
//! let budget = PaceBudget { deadline: Some(start + Duration::from_secs(2)), max_tokens: Some(512) };
//! let mut check = PaceCheck::new(PaceParams::default(), budget);
//! let mut pace = Pace::Unjudged;
//! for _ in 0..16 {
//!     pace = check.token(Instant::now());
//!     tokio::time::advance(Duration::from_millis(200)).await;
//! }
//! // 200 ms a token, over its 100 ms objective, and 496 more at that pace miss the deadline.
//! assert_eq!(pace, Pace::Behind);
//! # }
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// The parameters of [`PaceCheck`]. See the [module docs](self) for the rule and the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaceParams {
    /// Tokens (messages) a stream must have sent before its pace is judged (at least 2). 16.
    pub min_tokens: u32,
    /// The time per output token the service is expected to keep, in milliseconds. 100.
    pub tpot_objective_ms: u64,
}

impl Default for PaceParams {
    fn default() -> Self {
        Self { min_tokens: 16, tpot_objective_ms: 100 }
    }
}

impl PaceParams {
    /// The per-token objective.
    pub fn tpot_objective(&self) -> Duration {
        Duration::from_millis(self.tpot_objective_ms)
    }
}

/// What the caller knows of a streaming request: its deadline and the most tokens it asked for.
///
/// On the gateway, [`PaceBudgetLayer`](crate::PaceBudgetLayer) puts it into a response's
/// extensions from the request's [`Deadline`](switchyard_core::Deadline) and
/// [`RequestSize`](switchyard_core::RequestSize); [`PacedHttpPermit`](crate::PacedHttpPermit)
/// paces only responses that carry one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaceBudget {
    /// When the caller gives up.
    pub deadline: Option<Instant>,
    /// The most tokens the request may generate (an upper bound: the real output may be shorter).
    pub max_tokens: Option<u32>,
}

/// What [`PaceCheck::token`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Too few tokens yet to judge (or the stream has sent all it may).
    Unjudged,
    /// Within its objective, or able to make its deadline at its pace.
    OnPace,
    /// Slower than its objective and, at that pace, past its deadline if it runs to
    /// `max_tokens`: a drop for the limit.
    Behind,
}

/// Watches one stream's tokens against its [`PaceBudget`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct PaceCheck {
    params: PaceParams,
    budget: PaceBudget,
    tokens: u32,
    first_at: Option<Instant>,
}

impl PaceCheck {
    /// A check of a stream that has sent nothing yet.
    pub fn new(params: PaceParams, budget: PaceBudget) -> Self {
        Self { params, budget, tokens: 0, first_at: None }
    }

    /// Tokens seen so far.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// Records one token that arrived at `now` and judges the stream's pace.
    pub fn token(&mut self, now: Instant) -> Pace {
        self.tokens = self.tokens.saturating_add(1);
        let first = *self.first_at.get_or_insert(now);
        let n = self.tokens;
        if n < self.params.min_tokens.max(2) {
            return Pace::Unjudged;
        }
        let owed = match self.budget.max_tokens {
            Some(max) if n >= max => return Pace::Unjudged,
            Some(max) => Some(max - n),
            None => None,
        };
        let pace = now.saturating_duration_since(first) / (n - 1);
        if pace <= self.params.tpot_objective() {
            return Pace::OnPace;
        }
        let misses = match (self.budget.deadline, owed) {
            (Some(deadline), Some(owed)) => now + pace.saturating_mul(owed) > deadline,
            // An unknown input does not forgive: the objective alone decides.
            _ => true,
        };
        if misses { Pace::Behind } else { Pace::OnPace }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` tokens `gap` apart (the first now); the last verdict.
    async fn stream(check: &mut PaceCheck, n: u32, gap: Duration) -> Vec<Pace> {
        let mut verdicts = Vec::new();
        for i in 0..n {
            if i > 0 {
                tokio::time::advance(gap).await;
            }
            verdicts.push(check.token(Instant::now()));
        }
        verdicts
    }

    fn budget(deadline_s: u64, max_tokens: u32) -> PaceBudget {
        PaceBudget {
            deadline: Some(Instant::now() + Duration::from_secs(deadline_s)),
            max_tokens: Some(max_tokens),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_cannot_make_its_deadline_is_behind_from_its_min_tokens_th_token() {
        // 150 ms a token; 200 tokens take 30 s, the deadline is 10 s away.
        let mut check = PaceCheck::new(PaceParams::default(), budget(10, 200));
        let verdicts = stream(&mut check, 16, Duration::from_millis(150)).await;
        assert!(verdicts[..15].iter().all(|v| *v == Pace::Unjudged), "{verdicts:?}");
        assert_eq!(verdicts[15], Pace::Behind);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_early_at_a_good_pace_is_never_behind_though_max_tokens_is_loose() {
        // max_tokens 4096 at 40 ms a token would take 164 s, far past the 10 s deadline; the
        // real output is 100 tokens, 4 s: it makes its deadline, and the check never says behind.
        let mut check = PaceCheck::new(PaceParams::default(), budget(10, 4096));
        let verdicts = stream(&mut check, 100, Duration::from_millis(40)).await;
        assert!(verdicts.iter().all(|v| *v != Pace::Behind), "{verdicts:?}");
        assert_eq!(verdicts[99], Pace::OnPace);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_stream_whose_deadline_holds_even_at_max_tokens_is_forgiven() {
        // 150 ms a token, over the objective, but 100 tokens take 15 s of a 60 s deadline.
        let mut check = PaceCheck::new(PaceParams::default(), budget(60, 100));
        let verdicts = stream(&mut check, 100, Duration::from_millis(150)).await;
        assert!(verdicts.iter().all(|v| *v != Pace::Behind), "{verdicts:?}");
        // Without a max_tokens nothing is known to be owed: the objective alone decides.
        let mut unbounded = PaceCheck::new(
            PaceParams::default(),
            PaceBudget { deadline: Some(Instant::now() + Duration::from_secs(60)), max_tokens: None },
        );
        let verdicts = stream(&mut unbounded, 16, Duration::from_millis(150)).await;
        assert_eq!(verdicts[15], Pace::Behind);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_is_the_mean_since_the_first_token_and_one_slow_step_does_not_decide() {
        // The first token after a long queue (not counted), then one step of 600 ms among
        // 40 ms ones: the mean over 16 tokens is 75 ms, within the objective.
        let mut check = PaceCheck::new(PaceParams::default(), budget(5, 1000));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(check.token(Instant::now()), Pace::Unjudged);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(check.token(Instant::now()), Pace::Unjudged);
        let verdicts = stream(&mut check, 14, Duration::from_millis(40)).await;
        assert_eq!(check.tokens(), 16);
        assert_eq!(verdicts[13], Pace::OnPace);
        // A stream that has sent all it may is not judged.
        let mut short = PaceCheck::new(PaceParams { min_tokens: 2, tpot_objective_ms: 1 }, budget(1, 2));
        let verdicts = stream(&mut short, 2, Duration::from_secs(5)).await;
        assert_eq!(verdicts, [Pace::Unjudged, Pace::Unjudged]);
    }
}
