//! The stretch of a trace an autoscaled cluster replays: one whose load swings, sped up so that
//! its peak offers a chosen rate and the replay lasts the run.
//!
//! A trace's rate changes slowly (the bundled Azure conversation trace runs between about 3.6
//! and 9 requests a second over 30 s windows in its hour), so a replay of the whole of it in a
//! minute would only show its mean. Instead the cluster replays a stretch of `span` trace seconds
//! at `time_scale = duration / span`, and picks, among the stretches of that span, the one whose
//! load falls the most: the stretch is cut into [`STRETCH_BINS`] bins, and its swing is the
//! largest ratio of a bin's rate to a *later* bin's (a fall: the pool, which starts at its
//! minimum, grows on the first requests anyway, so a fall after a peak is what makes it shrink
//! too). The span follows from the speed-up, which follows from the stretch's peak (its busiest
//! bin offers `peak_rps`), so the two are found together: for spans 5 % apart, from the run's
//! length to the whole trace, the stretch that falls most is found, and of those whose peak
//! offers `peak_rps` within 10 % the one that falls most is replayed. Only whole bins count (a
//! trace's last, partial bin would look like a fall).

use std::time::Duration;

use switchyard_sim::trace::TraceRecord;

/// Bins a stretch is cut into to measure its swing (5 s each in a 60 s run).
pub const STRETCH_BINS: usize = 12;

/// A stretch of a trace and the speed-up it is replayed at.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stretch {
    /// Where it starts, in seconds after the trace's first arrival.
    pub start_s: f64,
    /// Its length in trace seconds.
    pub span_s: f64,
    /// The factor applied to its arrival times (`duration / span`).
    pub time_scale: f64,
    /// The recorded rate of its busiest bin, requests per second.
    pub peak_rate: f64,
    /// The recorded rate of the bin its largest fall starts from, requests per second.
    pub fall_from_rate: f64,
    /// The recorded rate of the quietest bin after that one, requests per second.
    pub low_rate: f64,
}

impl Stretch {
    /// Its swing: its largest fall, a bin's rate over the quietest later bin's.
    pub fn swing(&self) -> f64 {
        self.fall_from_rate / self.low_rate.max(f64::MIN_POSITIVE)
    }

    /// Its records, shifted to start at 0.
    pub fn records(&self, records: &[TraceRecord]) -> Vec<TraceRecord> {
        let Some(first) = records.first() else { return Vec::new() };
        let (start, end) = (self.start_s, self.start_s + self.span_s);
        records
            .iter()
            .filter_map(|r| {
                let t = (r.at - first.at).as_secs_f64();
                (t >= start && t < end)
                    .then(|| TraceRecord { at: Duration::from_secs_f64(t - start), ..r.clone() })
            })
            .collect()
    }
}

/// The stretch of `records` whose load falls the most, replayed over `duration` seconds with its
/// busiest bin at `peak_rps` (or at `time_scale`, when given); `None` for a trace too short or
/// too sparse to cut into bins.
pub fn swinging_stretch(
    records: &[TraceRecord],
    duration: f64,
    peak_rps: f64,
    time_scale: Option<f64>,
) -> Option<Stretch> {
    let first = records.first()?.at;
    let times: Vec<f64> = records.iter().map(|r| (r.at - first).as_secs_f64()).collect();
    let total = *times.last()?;
    if !(total > 0.0 && duration > 0.0 && peak_rps > 0.0) {
        return None;
    }
    if let Some(scale) = time_scale {
        return best_at_scale(&times, total, duration, scale);
    }
    // Spans from the run's length up to the whole trace, 5 % apart: the
    // stretches whose peak offers `peak_rps` within 10 %, and of them the one that falls most
    // (the one whose peak comes nearest if none does).
    let mut candidates = Vec::new();
    let mut span = duration.min(total);
    while span <= total * (1.0 + 1e-9) {
        if let Some(stretch) = best_at_scale(&times, total, duration, duration / span) {
            candidates.push(stretch);
        }
        span *= 1.05;
    }
    let off = |s: &Stretch| (s.peak_rate / s.time_scale / peak_rps - 1.0).abs();
    let near = candidates.iter().filter(|s| off(s) <= 0.1).max_by(|a, b| a.swing().total_cmp(&b.swing()));
    near.or_else(|| candidates.iter().min_by(|a, b| off(a).total_cmp(&off(b)))).copied()
}

/// The stretch of `duration / scale` trace seconds with the largest fall.
fn best_at_scale(times: &[f64], total: f64, duration: f64, scale: f64) -> Option<Stretch> {
    let span = (duration / scale).min(total);
    let width = span / STRETCH_BINS as f64;
    if !(width.is_finite() && width > 0.0) {
        return None;
    }
    // Whole bins only: a last, partial one would look like a fall.
    let bins = (total / width) as usize;
    let mut counts = vec![0u64; bins];
    for t in times {
        if let Some(count) = counts.get_mut((t / width) as usize) {
            *count += 1;
        }
    }
    let rates: Vec<f64> = counts.iter().map(|&c| c as f64 / width).collect();
    let mut best: Option<Stretch> = None;
    for start in 0..=rates.len().saturating_sub(STRETCH_BINS) {
        let Some(bins) = rates.get(start..start + STRETCH_BINS) else { break };
        // The largest fall: a bin's rate over the quietest later bin's.
        let (mut peak, mut fall) = (0.0f64, (0.0f64, 0.0f64, 0.0f64));
        for (i, &r) in bins.iter().enumerate() {
            peak = peak.max(r);
            let later = bins[i + 1..].iter().copied().fold(f64::INFINITY, f64::min);
            if later.is_finite() && r / later.max(1.0 / width) > fall.0 {
                fall = (r / later.max(1.0 / width), r, later);
            }
        }
        let candidate = Stretch {
            start_s: start as f64 * width,
            span_s: span,
            time_scale: duration / span,
            peak_rate: peak,
            fall_from_rate: fall.1,
            low_rate: fall.2.max(1.0 / width),
        };
        if fall.1 > 0.0 && best.is_none_or(|b| candidate.swing() > b.swing()) {
            best = Some(candidate);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: &[f64]) -> Vec<TraceRecord> {
        seconds
            .iter()
            .map(|&s| TraceRecord {
                at: Duration::from_secs_f64(s),
                prompt_tokens: 1,
                output_tokens: 1,
                prefix: Default::default(),
            })
            .collect()
    }

    #[test]
    fn the_stretch_with_the_largest_fall_is_chosen_and_sped_up_to_the_peak() {
        // 120 s at 1 request/s, then 12 s at 10/s, then 12 s at 2/s, then 120 s at 1/s again.
        let mut times: Vec<f64> = (0..120).map(f64::from).collect();
        times.extend((0..120).map(|i| 120.0 + f64::from(i) * 0.1));
        times.extend((0..24).map(|i| 132.0 + f64::from(i) * 0.5));
        times.extend((0..120).map(|i| 144.0 + f64::from(i)));
        let records = at(&times);
        let stretch = swinging_stretch(&records, 24.0, 50.0, Some(1.0)).unwrap();
        assert_eq!(stretch.span_s, 24.0);
        // A stretch that holds the burst and a quiet bin after it.
        assert!(stretch.start_s < 132.0 && stretch.start_s + 24.0 > 132.0, "{stretch:?}");
        assert!((stretch.peak_rate - 10.0).abs() < 1e-9, "{stretch:?}");
        assert!(stretch.swing() >= 5.0 - 1e-9, "{stretch:?}");
        // Found with the speed-up: the peak offers 50 requests/s.
        let sped = swinging_stretch(&records, 24.0, 50.0, None).unwrap();
        assert!((sped.peak_rate / sped.time_scale - 50.0).abs() < 5.0, "{sped:?}");
        assert!((sped.span_s * sped.time_scale - 24.0).abs() < 1e-9);
        let replayed = sped.records(&records);
        assert!(replayed.first().is_some_and(|r| r.at.as_secs_f64() < sped.span_s / 12.0));
        assert!(replayed.iter().all(|r| r.at.as_secs_f64() < sped.span_s));
    }

    #[test]
    fn a_trace_too_short_has_no_stretch() {
        assert_eq!(swinging_stretch(&at(&[]), 60.0, 50.0, None), None);
        assert_eq!(swinging_stretch(&at(&[3.0]), 60.0, 50.0, None), None);
    }

    #[test]
    fn the_bundled_trace_has_a_stretch_that_falls_by_half() {
        let records = crate::traces::azure_conv().unwrap();
        let stretch = swinging_stretch(&records, 60.0, 64.0, None).unwrap();
        assert!(stretch.swing() > 1.5, "{stretch:?}");
        assert!((stretch.peak_rate / stretch.time_scale / 64.0 - 1.0).abs() <= 0.1, "{stretch:?}");
        assert!(stretch.start_s + stretch.span_s <= 3502.0, "{stretch:?}");
    }
}
