//! A weighted consistent-hash ring with virtual nodes, and its allocation-free lookup.
//!
//! Each endpoint with weight `w` owns `w × points_per_weight` points on a 64-bit ring
//! (`points_per_weight` is 160 by default, ketama's figure: with 160 points an endpoint's share
//! of the ring is within about ±8 % of its weight's share). A key goes to the first point at or
//! after its hash, wrapping around. Adding or removing an endpoint moves only the keys of the
//! arcs its points cover, about `1/N` of them.
//!
//! A point's position depends on nothing but the endpoint's id and the point's number (a
//! [`stable_hash`] of the id, mixed with the number by the SplitMix64 finaliser), so two
//! processes that know the same endpoints build the same ring, in whatever order discovery
//! listed them.
//!
//! # Lookup
//!
//! The points are sorted; a table of `2^b` buckets (about one per point) holds, for each value of
//! a hash's top `b` bits, the first point at or above it. A lookup reads its bucket's range and
//! searches the two or three points in it: O(1) expected, O(log N) at worst, and no allocation.

use switchyard_core::stable_hash;

/// Points per unit of weight by default.
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 160;

/// The most points a ring holds; beyond it every endpoint's count is scaled down alike.
pub const MAX_POINTS: usize = 1 << 22;

/// A consistent-hash ring over a set of endpoints.
///
/// ```
/// use switchyard_hash::Ring;
///
/// let ring = Ring::new([("a", 1), ("b", 1), ("c", 2)], 160);
/// let owner = ring.owner(0xdead_beef).unwrap();
/// assert!(owner < 3);
/// // The same endpoints listed in another order: the same owner, by id.
/// let other = Ring::new([("c", 2), ("a", 1), ("b", 1)], 160);
/// let ids = ["a", "b", "c"];
/// let other_ids = ["c", "a", "b"];
/// assert_eq!(ids[owner], other_ids[other.owner(0xdead_beef).unwrap()]);
/// ```
#[derive(Debug, Clone)]
pub struct Ring {
    /// Point positions, ascending.
    hashes: Vec<u64>,
    /// The owner of each point, as an index into the list the ring was built from.
    owners: Vec<u32>,
    /// `buckets[b]` is the first point whose hash has top bits `>= b`; one more entry at the end.
    buckets: Vec<u32>,
    /// `64 - b`: a hash's bucket is `hash >> shift`.
    shift: u32,
    endpoints: usize,
}

impl Ring {
    /// A ring over `endpoints` (id, weight), in this order: owners are indices into it. An
    /// endpoint of weight 0 gets no point.
    pub fn new<'a>(endpoints: impl IntoIterator<Item = (&'a str, u32)>, points_per_weight: u32) -> Self {
        let endpoints: Vec<(&str, u32)> = endpoints.into_iter().collect();
        let wanted: u64 =
            endpoints.iter().map(|(_, w)| u64::from(*w) * u64::from(points_per_weight.max(1))).sum();
        // Scale down alike when the weights ask for more than MAX_POINTS.
        let scale = if wanted > MAX_POINTS as u64 { MAX_POINTS as f64 / wanted as f64 } else { 1.0 };
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(wanted.min(MAX_POINTS as u64) as usize);
        for (index, (id, weight)) in endpoints.iter().enumerate() {
            let count = (f64::from(*weight) * f64::from(points_per_weight.max(1)) * scale).round() as u64;
            let count = if *weight > 0 { count.max(1) } else { 0 };
            let base = stable_hash(id.as_bytes());
            for point in 0..count {
                points.push((point_hash(base, point), index as u32));
            }
        }
        // Ties (two points at one position, about never) go to the smaller id, whatever the order.
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| endpoints[a.1 as usize].0.cmp(endpoints[b.1 as usize].0))
        });
        let hashes: Vec<u64> = points.iter().map(|p| p.0).collect();
        let owners: Vec<u32> = points.iter().map(|p| p.1).collect();
        let bits = (usize::BITS - hashes.len().max(1).leading_zeros()).clamp(1, 22);
        let shift = 64 - bits;
        let mut buckets = Vec::with_capacity((1usize << bits) + 1);
        let mut next = 0usize;
        for bucket in 0..(1u64 << bits) {
            while next < hashes.len() && (hashes[next] >> shift) < bucket {
                next += 1;
            }
            buckets.push(next as u32);
        }
        buckets.push(hashes.len() as u32);
        Self { hashes, owners, buckets, shift, endpoints: endpoints.len() }
    }

    /// How many points the ring holds.
    pub fn points(&self) -> usize {
        self.hashes.len()
    }

    /// How many endpoints it was built over (weight-0 ones included).
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// The position (point index) of the first point at or after `hash`, wrapping; `None` when
    /// the ring has no point.
    pub fn successor(&self, hash: u64) -> Option<usize> {
        if self.hashes.is_empty() {
            return None;
        }
        let bucket = (hash >> self.shift) as usize;
        let lo = self.buckets[bucket] as usize;
        let hi = self.buckets[bucket + 1] as usize;
        let pos = lo + self.hashes[lo..hi].partition_point(|&h| h < hash);
        Some(if pos == self.hashes.len() { 0 } else { pos })
    }

    /// The endpoint (index into the build list) owning `hash`.
    pub fn owner(&self, hash: u64) -> Option<usize> {
        self.successor(hash).map(|p| self.owners[p] as usize)
    }

    /// The owners of the points from `hash` clockwise, once around the ring (an endpoint appears
    /// once per point it owns). Allocation-free.
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.successor(hash).unwrap_or(0);
        let n = self.owners.len();
        (0..n).map(move |i| self.owners[(start + i) % n] as usize)
    }
}

/// The position of point `point` of the endpoint whose id hashes to `base`.
fn point_hash(base: u64, point: u64) -> u64 {
    let mut z = base ^ point.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:9001")).collect()
    }

    #[test]
    fn successor_agrees_with_a_plain_binary_search() {
        let names = ids(37);
        let ring = Ring::new(names.iter().map(|s| (s.as_str(), 1 + (s.len() as u32 % 3))), 50);
        for i in 0..20_000u64 {
            let h = point_hash(7, i);
            let want = ring.hashes.partition_point(|&p| p < h) % ring.points();
            assert_eq!(ring.successor(h), Some(want));
        }
        assert_eq!(
            ring.successor(u64::MAX),
            Some(if ring.hashes[ring.points() - 1] == u64::MAX { ring.points() - 1 } else { 0 })
        );
        assert_eq!(ring.successor(0), Some(0));
    }

    #[test]
    fn an_empty_or_weightless_ring_has_no_owner() {
        assert_eq!(Ring::new([], 160).owner(1), None);
        let ring = Ring::new([("a", 0), ("b", 0)], 160);
        assert_eq!((ring.points(), ring.owner(1)), (0, None));
        assert_eq!(ring.walk(5).count(), 0);
    }

    #[test]
    fn weights_past_the_point_limit_are_scaled_alike() {
        let ring = Ring::new([("a", u32::MAX), ("b", u32::MAX / 2)], 160);
        assert!(ring.points() <= MAX_POINTS + 2);
        let a = ring.owners.iter().filter(|&&o| o == 0).count() as f64;
        let b = ring.owners.iter().filter(|&&o| o == 1).count() as f64;
        assert!((a / b - 2.0).abs() < 0.01, "{a} {b}");
    }
}
