//! Uniform random choice.

use std::sync::{Mutex, PoisonError};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::{Endpoints, Policy, RequestInfo};

/// A uniformly random endpoint, from a seeded generator (so the lab is reproducible).
#[derive(Debug)]
pub struct Random {
    rng: Mutex<Xoshiro256PlusPlus>,
}

impl Random {
    /// Random choice with draws from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self { rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)) }
    }
}

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, _request: &RequestInfo<'_>, endpoints: &Endpoints<'_>) -> Option<usize> {
        let endpoints = endpoints.eligible();
        Some(self.rng.lock().unwrap_or_else(PoisonError::into_inner).random_range(0..endpoints.len()))
    }
}
