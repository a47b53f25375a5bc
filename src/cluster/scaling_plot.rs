//! The autoscaled cluster's plot: offered load, replicas (desired and ready) and TTFT p99 over
//! the run, on one time axis.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::plots::{draw_err, latency_points};
use super::report::ScalePoint;
use crate::loadgen::RequestSample;
use crate::report::PlotError;
use crate::report::plot::{FONT, bin_width, percentile_bins, register_font};

/// File name of the scaling plot.
pub const SCALING_PNG: &str = "scaling.png";

/// Bins over the run for the offered load and the TTFT p99.
const TIME_BINS: usize = 30;

/// Requests sent per second in consecutive bins of `width` seconds: `(bin middle, rate)`.
pub(crate) fn offered_rate(samples: &[RequestSample], width: f64) -> Vec<(f64, f64)> {
    let Some(last) = samples.iter().map(|s| s.sent_at.as_secs_f64()).max_by(f64::total_cmp) else {
        return Vec::new();
    };
    let mut counts = vec![0u64; (last / width) as usize + 1];
    for s in samples {
        counts[(s.sent_at.as_secs_f64() / width) as usize] += 1;
    }
    counts.iter().enumerate().map(|(i, &c)| ((i as f64 + 0.5) * width, c as f64 / width)).collect()
}

/// Draws three panels over send time: requests offered a second, replicas desired and ready (a
/// step line each), and the TTFT p99 per bin (log scale).
pub(crate) fn scaling_plot(
    path: &Path,
    title: &str,
    samples: &[RequestSample],
    timeline: &[ScalePoint],
) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let err = draw_err(&file);
    let root = BitMapBackend::new(path, (1200, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(50);
    head.draw(&Text::new(title.to_string(), (20, 15), (FONT, 22).into_font())).map_err(err)?;
    let panels = body.split_evenly((3, 1));
    let (points, _) = latency_points(samples);
    let span = points.last().map_or(1.0, |p| p.sent_s).max(timeline.last().map_or(1.0, |p| p.t_s)).max(1.0);
    let width = bin_width(span, TIME_BINS);

    let offered = offered_rate(samples, width);
    let top = offered.iter().map(|&(_, r)| r).fold(1.0f64, f64::max) * 1.1;
    let mut chart = new_chart(
        &panels[0],
        &file,
        format!("offered load (requests/s, per {width:.0} s)"),
        span,
        0f64..top,
    )?;
    chart
        .configure_mesh()
        .x_desc("send time (s)")
        .y_desc("req/s")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    chart.draw_series(LineSeries::new(offered, ShapeStyle::from(&BLUE).stroke_width(2))).map_err(err)?;

    let most = timeline.iter().map(|p| p.desired.max(p.current)).max().unwrap_or(1).max(1);
    let mut chart = new_chart(&panels[1], &file, "replicas".to_string(), span, 0f64..f64::from(most) + 1.0)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("replicas")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    let desired = ShapeStyle::from(&BLACK).stroke_width(2);
    let ready = ShapeStyle::from(&GREEN.mix(0.9)).stroke_width(3);
    for (name, style, value) in [
        ("desired", desired, (|p: &ScalePoint| p.desired) as fn(&ScalePoint) -> u32),
        ("ready", ready, |p: &ScalePoint| p.ready),
    ] {
        chart
            .draw_series(LineSeries::new(steps(timeline, value), style))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let ttft: Vec<(f64, f64)> = points.iter().map(|p| (p.sent_s, p.ttft_ms)).collect();
    let bins = percentile_bins(&ttft, width);
    let (lo, hi) = super::plots::log_bounds(bins.iter().map(|b| b.p99));
    let caption = format!("time to first token p99 (ms, per {width:.0} s, by send time)");
    let mut chart = super::plots::log_ms_panel(&panels[2], &file, caption, span, lo, hi)?;
    chart
        .draw_series(LineSeries::new(
            bins.iter().map(|b| (b.mid(), b.p99.max(lo))),
            ShapeStyle::from(&RED).stroke_width(2),
        ))
        .map_err(err)?;
    root.present().map_err(err)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn new_chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    file: &str,
    caption: String,
    span: f64,
    y: std::ops::Range<f64>,
) -> Result<Chart<'a, 'b>, PlotError> {
    ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..span * 1.02, y)
        .map_err(draw_err(file))
}

/// A step line through `timeline`'s `value`: it holds each value until the next point.
fn steps(timeline: &[ScalePoint], value: fn(&ScalePoint) -> u32) -> Vec<(f64, f64)> {
    let mut line = Vec::with_capacity(timeline.len() * 2);
    for (i, p) in timeline.iter().enumerate() {
        if i > 0 {
            line.push((p.t_s, f64::from(value(&timeline[i - 1]))));
        }
        line.push((p.t_s, f64::from(value(p))));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::loadgen::Outcome;

    #[test]
    fn the_offered_load_counts_sends_per_second_of_each_bin() {
        let sample = |s: f64| RequestSample {
            sent_at: Duration::from_secs_f64(s),
            outcome: Outcome::Failed("UNAVAILABLE"),
        };
        let samples: Vec<_> = [0.1, 0.2, 0.3, 0.4, 2.5, 3.9].map(sample).into();
        assert_eq!(offered_rate(&samples, 2.0), [(1.0, 2.0), (3.0, 1.0)]);
        assert!(offered_rate(&[], 2.0).is_empty());
    }

    #[test]
    fn replicas_are_drawn_as_steps() {
        let p = |t_s, ready| ScalePoint { t_s, desired: ready, current: ready, ready };
        let line = steps(&[p(0.0, 1), p(2.0, 3), p(3.0, 2)], |p| p.ready);
        assert_eq!(line, [(0.0, 1.0), (2.0, 1.0), (2.0, 3.0), (3.0, 3.0), (3.0, 2.0)]);
    }
}
