//! The speed an endpoint shows for each gRPC method, kept to tell a slowdown from the mix of
//! methods sent there.
//!
//! The balancer learns one time per unit of work per endpoint, over every request (see
//! [`EndpointState::unit_time_nanos`](crate::EndpointState::unit_time_nanos)): what the costs
//! compare. Methods differ in what their first byte measures. A unary `ModelInfer` answers once
//! its whole generation is done; a `ModelStreamInfer` stream sends its first token after its
//! prefill. Read against a speed that averages both, a replica slowed 20 times showed only 10 ×
//! on a stream's first token and 40 × on a unary answer, and a stream's first byte from the
//! slowed replica cleared the floor a unary call had set (`switchyard bench faults`, fault
//! `slow`). Each method's own speed is the reference a first byte is read against: its ratio to
//! that reference, applied to the speed over every method, is what the slow rule and the stall's
//! floor see.
//!
//! A request names its method by
//! [`RequestExtensions::method_path`](crate::RequestExtensions::method_path). Requests that
//! name none, and every request to an endpoint that has been sent one method only (the lab's
//! simulated requests all go to `/`), are read against the speed over every method, as before.

use std::time::Duration;

use tokio::time::Instant;

/// How many methods an endpoint keeps a speed for; past it, the one sampled longest ago makes
/// room. A model-serving service has a few methods that carry work.
const METHODS: usize = 4;

/// The key of a request that names no method.
pub(crate) const NO_METHOD: u64 = 0;

/// The key of the method at `path`: a hash of the path, never [`NO_METHOD`].
pub(crate) fn method_key(path: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(path).max(1)
}

/// One method's time per unit of work on one endpoint: an EWMA, as the speed over every method.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    nanos: f64,
    at: Instant,
    samples: u32,
}

/// Samples a method's speed takes before a first byte is read against it: one slow answer
/// is not the method's usual speed.
pub(crate) const MIN_SAMPLES: u32 = 4;

/// The time per unit of work of each method sent to one endpoint.
#[derive(Debug, Default)]
pub(crate) struct MethodSpeeds {
    entries: [Option<Entry>; METHODS],
    /// Whether two methods or more have been sent to the endpoint (kept when the speeds are
    /// forgotten).
    mixed: bool,
}

impl MethodSpeeds {
    /// The time per unit learnt for the method `key`, once it has [`MIN_SAMPLES`] samples.
    pub(crate) fn get(&self, key: u64) -> Option<f64> {
        self.entries.iter().flatten().find(|e| e.key == key && e.samples >= MIN_SAMPLES).map(|e| e.nanos)
    }

    /// How many methods have a speed (learnt or learning).
    pub(crate) fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// Whether two methods or more have been sent to the endpoint since it was added: its first
    /// bytes are read against their methods' speeds.
    pub(crate) fn mixed(&self) -> bool {
        self.mixed
    }

    /// Blends `sample` into the method's time per unit, with time constant `tau`; a method seen
    /// for the first time takes the place of the one sampled longest ago when every place is
    /// taken.
    pub(crate) fn record(&mut self, key: u64, sample: f64, now: Instant, tau: Duration) {
        if let Some(entry) = self.entries.iter_mut().flatten().find(|e| e.key == key) {
            let w = crate::endpoint::weight_since(entry.at, now, tau);
            entry.nanos = entry.nanos * w + sample * (1.0 - w);
            entry.at = now;
            entry.samples = entry.samples.saturating_add(1);
            return;
        }
        let fresh = Entry { key, nanos: sample, at: now, samples: 1 };
        let place = match self.entries.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.entries.iter().enumerate().min_by_key(|(_, e)| e.map(|e| e.at)).map_or(0, |(i, _)| i)
            }
        };
        self.entries[place] = Some(fresh);
        self.mixed |= self.len() >= 2;
    }

    /// Forgets every method's speed (the work is counted in other units from now on).
    pub(crate) fn clear(&mut self) {
        self.entries = [None; METHODS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_path_and_never_mean_no_method() {
        let unary = method_key("/inference.GRPCInferenceService/ModelInfer");
        let stream = method_key("/inference.GRPCInferenceService/ModelStreamInfer");
        assert_ne!(unary, stream);
        assert_ne!(unary, NO_METHOD);
        assert_eq!(unary, method_key("/inference.GRPCInferenceService/ModelInfer"));
    }

    #[tokio::test(start_paused = true)]
    async fn each_method_learns_its_own_speed() {
        let tau = Duration::from_secs(30);
        let mut speeds = MethodSpeeds::default();
        let t0 = Instant::now();
        for i in 0..MIN_SAMPLES {
            assert_eq!(speeds.get(1), None, "not read before {MIN_SAMPLES} samples");
            speeds.record(1, 100.0, t0, tau);
            speeds.record(2, 10.0, t0, tau);
            assert_eq!((speeds.len(), speeds.mixed()), (2, true), "{i}");
        }
        assert_eq!(speeds.get(1), Some(100.0));
        assert_eq!(speeds.get(2), Some(10.0));
        assert_eq!(speeds.get(3), None);
        // One time constant later, a sample weighs 1 - 1/e.
        speeds.record(2, 20.0, t0 + tau, tau);
        let blended = speeds.get(2).unwrap();
        assert!(
            (blended - (10.0 / std::f64::consts::E + 20.0 * (1.0 - 1.0 / std::f64::consts::E))).abs() < 1e-9
        );
        assert_eq!(speeds.get(1), Some(100.0), "another method's speed is left alone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_method_replaces_the_one_sampled_longest_ago() {
        let tau = Duration::from_secs(30);
        let mut speeds = MethodSpeeds::default();
        let t0 = Instant::now();
        for key in 1..=METHODS as u64 {
            for _ in 0..MIN_SAMPLES {
                speeds.record(key, key as f64, t0 + Duration::from_secs(key), tau);
            }
        }
        // Method 1 sampled again: method 2 is now the oldest.
        speeds.record(1, 1.0, t0 + Duration::from_secs(10), tau);
        for _ in 0..MIN_SAMPLES {
            speeds.record(99, 9.0, t0 + Duration::from_secs(11), tau);
        }
        assert_eq!(speeds.get(99), Some(9.0));
        assert_eq!(speeds.get(2), None);
        assert!(speeds.get(1).is_some() && speeds.get(3).is_some() && speeds.get(4).is_some());
        speeds.clear();
        assert_eq!(speeds.get(1), None);
        assert!(speeds.mixed(), "still an endpoint of several methods");
    }
}
