//! Random draws shared by the randomised policies.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngExt;

/// Breaks ties and near-ties among the cheapest candidates at random, so that independent
/// balancers that see the same costs (the same replicas, the same reports) do not all send their
/// next request to the same replica, and one balancer does not always prefer the replica of
/// the lowest index or the one whose learnt speed happens to be a little better.
///
/// A candidate is a near-tie when its cost is within [`NEAR_TIE`] of the least:
/// `cost ≤ least × (1 + NEAR_TIE)`. One of them is drawn uniformly. The draws are a counter
/// hashed with the seed (SplitMix64), lock-free, so the same seed gives the same picks in the
/// same order, and two balancers seeded differently draw independently.
#[derive(Debug)]
pub(crate) struct NearTie {
    seed: u64,
    draws: AtomicU64,
}

/// How far above the least cost a candidate still counts as a near-tie: 0.5 %, costs equal
/// but for rounding and the last digits of a learnt speed. Exact ties are common (a balancer
/// with nothing in flight on replicas of one speed), and drawing among them is what keeps
/// independent balancers apart. Wider bands were measured in lab `herd` (three seeds, Azure
/// trace): at 2, 5 and 10 % one balancer's p99 TTFT rose by 1-4 % and 8 or 32 balancers gained
/// nothing over drawing among exact ties only.
pub const NEAR_TIE: f64 = 0.005;

/// The most candidates [`NearTie::pick`] weighs at once; the policies compare at most this many
/// endpoints (they sample larger pools).
pub(crate) const MAX_CANDIDATES: usize = 32;

impl NearTie {
    /// Draws from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed, draws: AtomicU64::new(0) }
    }

    /// Of `costs` (candidate index, cost), one of those within [`NEAR_TIE`] of the least, drawn
    /// at random; `None` only when there is no candidate. A cost that is not a number counts as
    /// infinite (picked only when every cost is), and only the first [`MAX_CANDIDATES`]
    /// candidates are weighed.
    pub(crate) fn pick(&self, costs: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
        let mut kept = [(0usize, 0f64); MAX_CANDIDATES];
        let mut len = 0;
        let mut least = f64::INFINITY;
        for (i, cost) in costs.take(MAX_CANDIDATES) {
            let cost = if cost.is_nan() { f64::INFINITY } else { cost };
            kept[len] = (i, cost);
            len += 1;
            least = least.min(cost);
        }
        let kept = &kept[..len];
        let bound = if least > 0.0 && least.is_finite() { least * (1.0 + NEAR_TIE) } else { least };
        let near = kept.iter().filter(|(_, c)| *c <= bound).count();
        if near <= 1 {
            return kept.iter().find(|(_, c)| *c <= bound).map(|(i, _)| *i);
        }
        let draw = splitmix64(self.seed ^ self.draws.fetch_add(1, Ordering::Relaxed).wrapping_mul(GOLDEN));
        let nth = (draw % near as u64) as usize;
        kept.iter().filter(|(_, c)| *c <= bound).nth(nth).map(|(i, _)| *i)
    }
}

/// A seed of its own for a policy that was not given one: drawn from rand's thread-local
/// generator (seeded by the operating system), so that it differs between processes and between
/// the balancers of one process.
///
/// Balancers that draw from one seed draw the same numbers in the same order: where they see
/// the same costs (at start-up, with nothing learnt and nothing in flight, or idle between
/// bursts) they break the ties alike and send their requests to the same replica, in step. A
/// library balancer in every client process of a service, or several gateway replicas of one
/// configuration, would all do so if their seed were a constant. A fixed seed is still what
/// reproducible runs want: [`PolicyHandle::of`](crate::PolicyHandle::of) and
/// [`PolicyKind::build`](crate::PolicyKind::build) take one.
pub fn fresh_seed() -> u64 {
    rand::random()
}

/// 2^64 / φ, SplitMix64's increment.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a well-mixed 64-bit value from any input.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Two distinct indices below `len`, uniformly (Floyd's sampling), or `None` when `len < 2`.
pub(crate) fn distinct_pair(rng: &mut impl rand::Rng, len: usize) -> Option<(usize, usize)> {
    if len < 2 {
        return None;
    }
    let a = rng.random_range(0..len);
    let mut b = rng.random_range(0..len - 1);
    if b >= a {
        b += 1;
    }
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pairs_are_distinct_and_cover_every_index() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
        let mut seen = [0u32; 5];
        for _ in 0..10_000 {
            let (a, b) = distinct_pair(&mut rng, 5).unwrap();
            assert_ne!(a, b);
            seen[a] += 1;
            seen[b] += 1;
        }
        assert!(seen.iter().all(|&n| n > 3500 && n < 4500), "{seen:?}");
        assert_eq!(distinct_pair(&mut rng, 1), None);
    }

    #[test]
    fn near_ties_are_drawn_evenly_and_a_clear_best_always_wins() {
        let ties = NearTie::new(3);
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            // 0, 1 and 3 within 0.5 % of the least; 2 is 1 % above it.
            let pick = ties.pick([(0, 100.0), (1, 100.4), (2, 101.0), (3, 100.1)].into_iter()).unwrap();
            seen[pick] += 1;
        }
        assert_eq!(seen[2], 0, "beyond the near-tie: {seen:?}");
        assert!([0, 1, 3].iter().all(|&i| (1150..1520).contains(&seen[i])), "{seen:?}");
        for _ in 0..100 {
            assert_eq!(ties.pick([(0, 100.0), (1, 50.0), (2, 80.0)].into_iter()), Some(1));
        }
        // Exact ties at zero (nothing learnt, nothing in flight) are drawn among too.
        let zeros: std::collections::BTreeSet<_> =
            (0..100).filter_map(|_| ties.pick([(5, 0.0), (6, 0.0)].into_iter())).collect();
        assert_eq!(zeros.into_iter().collect::<Vec<_>>(), [5, 6]);
        assert_eq!(ties.pick([(0, f64::NAN), (1, 5.0)].into_iter()), Some(1), "a NaN is never the least");
        assert_eq!(ties.pick([(0, f64::NAN)].into_iter()), Some(0), "but a request still goes somewhere");
        assert_eq!(ties.pick(std::iter::empty()), None);
    }

    #[test]
    fn the_same_seed_draws_the_same_and_another_seed_does_not_move_in_step() {
        let costs = || (0..8).map(|i| (i, 10.0));
        let run = |seed| {
            let ties = NearTie::new(seed);
            (0..200).map(|_| ties.pick(costs()).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        let (a, b) = (run(1), run(2));
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // Independent uniform draws over 8 agree an eighth of the time (25 of 200).
        assert!(same < 50, "{same} of 200 picks alike");
    }
}
