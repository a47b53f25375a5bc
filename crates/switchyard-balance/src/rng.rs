//! Random draws shared by the randomised policies.

use rand::RngExt;

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
}
