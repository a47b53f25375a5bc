//! What every PNG plot needs: the bundled font, and percentiles of samples binned over time.
//!
//! plotters draws text with `ab_glyph` from a font registered at run time, not from the system's
//! fonts (there may be none): DejaVu Sans is embedded in the binary (`assets/fonts/`, with its
//! licence) and registered as the `sans-serif` family by [`register_font`].

use std::sync::OnceLock;

use plotters::style::FontStyle;

use super::Percentiles;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/LICENSE-DejaVu.txt`).
const DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The font family every plot uses; [`register_font`] provides it.
pub const FONT: &str = "sans-serif";

/// A plot could not be drawn or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot draw {file}: {reason}")]
pub struct PlotError {
    /// The image being drawn.
    pub file: String,
    /// Why.
    pub reason: String,
}

impl PlotError {
    /// An error drawing `file`.
    pub fn new(file: impl Into<String>, reason: impl ToString) -> Self {
        Self { file: file.into(), reason: reason.to_string() }
    }
}

/// Registers the bundled font as [`FONT`]; call before drawing. Registers once per process, later
/// calls return the first outcome.
pub fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), PlotError>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS)
                .map_err(|_| PlotError::new("any plot", "the bundled font DejaVuSans.ttf does not parse"))
        })
        .clone()
}

/// The samples whose time falls in `[start, end)`, summarised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeBin {
    /// Start of the bin, in the samples' time unit.
    pub start: f64,
    /// End of the bin (exclusive).
    pub end: f64,
    /// Samples in the bin.
    pub count: usize,
    /// Median of the values.
    pub p50: f64,
    /// 99th percentile of the values (nearest rank, as in [`Percentiles`]).
    pub p99: f64,
}

impl TimeBin {
    /// The middle of the bin, where a line through the bins puts its point.
    pub fn mid(&self) -> f64 {
        (self.start + self.end) / 2.0
    }
}

/// A bin width that splits `span` into about `bins` bins: a whole number, at least 1.
pub fn bin_width(span: f64, bins: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    (span / bins.max(1) as f64).ceil().max(1.0)
}

/// Median and p99 of the values of `points` (`(time, value)`), in consecutive bins of `width`
/// starting at time 0. Bins without samples are left out; points with a negative or non-finite
/// time or value are ignored.
pub fn percentile_bins(points: &[(f64, f64)], width: f64) -> Vec<TimeBin> {
    let width = if width.is_finite() && width > 0.0 { width } else { 1.0 };
    let mut bins: std::collections::BTreeMap<u64, Vec<f64>> = std::collections::BTreeMap::new();
    for &(t, v) in points {
        if t.is_finite() && t >= 0.0 && v.is_finite() {
            bins.entry((t / width).floor() as u64).or_default().push(v);
        }
    }
    bins.into_iter()
        .map(|(i, mut values)| {
            let count = values.len();
            let p = Percentiles::of(&mut values);
            let start = i as f64 * width;
            TimeBin { start, end: start + width, count, p50: p.p50, p99: p.p99 }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_font_registers() {
        assert_eq!(register_font(), Ok(()));
        assert_eq!(register_font(), Ok(()));
    }

    #[test]
    fn bins_split_by_time_and_skip_empty_ones() {
        let mut points: Vec<(f64, f64)> = (1..=100).map(|v| (0.5, f64::from(v))).collect();
        points.push((2.1, 7.0));
        points.push((-1.0, 1.0));
        points.push((f64::NAN, 1.0));
        let bins = percentile_bins(&points, 1.0);
        assert_eq!(bins.len(), 2);
        assert_eq!((bins[0].start, bins[0].end, bins[0].count), (0.0, 1.0, 100));
        assert_eq!((bins[0].p50, bins[0].p99), (50.0, 99.0));
        assert_eq!((bins[1].start, bins[1].count, bins[1].p50, bins[1].p99), (2.0, 1, 7.0, 7.0));
        assert_eq!(bins[1].mid(), 2.5);
    }

    #[test]
    fn bin_width_is_whole_and_positive() {
        assert_eq!(bin_width(60.0, 30), 2.0);
        assert_eq!(bin_width(61.0, 30), 3.0);
        assert_eq!(bin_width(3.0, 30), 1.0);
        assert_eq!(bin_width(0.0, 30), 1.0);
        assert_eq!(bin_width(f64::NAN, 30), 1.0);
    }
}
