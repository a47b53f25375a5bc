//! The cluster report's PNG plots: latency over the run, and each replica's share.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{ReplicaShare, format_speed};
use crate::loadgen::{Outcome, RequestSample};
use crate::report::PlotError;
use crate::report::plot::{FONT, TimeBin, bin_width, percentile_bins, register_font};

/// File name of the latency-over-time plot.
pub const LATENCY_PNG: &str = "latency.png";
/// File name of the per-replica share plot.
pub const SHARES_PNG: &str = "shares.png";
/// File name of the per-replica prefix-cache hit rate plot.
pub const HIT_RATE_PNG: &str = "hit_rate.png";

/// Pixels between a bar and the edge of its replica's slot.
const BAR_MARGIN: u32 = 30;

/// Bins the latency plot aims for over the run (their p50 and p99 are drawn as lines).
const TIME_BINS: usize = 30;

/// One successful request's point: send time in seconds, TTFT and latency in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LatencyPoint {
    pub(crate) sent_s: f64,
    pub(crate) ttft_ms: f64,
    pub(crate) latency_ms: f64,
}

/// The points of the successful samples, in send order, and the number of failed ones.
pub(crate) fn latency_points(samples: &[RequestSample]) -> (Vec<LatencyPoint>, usize) {
    let mut failed = 0;
    let mut points: Vec<LatencyPoint> = samples
        .iter()
        .filter_map(|s| match s.outcome {
            Outcome::Ok { ttft, latency, .. } => Some(LatencyPoint {
                sent_s: s.sent_at.as_secs_f64(),
                ttft_ms: ttft.as_secs_f64() * 1e3,
                latency_ms: latency.as_secs_f64() * 1e3,
            }),
            Outcome::Failed(_) => {
                failed += 1;
                None
            }
        })
        .collect();
    points.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
    (points, failed)
}

/// Turns a drawing error on `file` into a [`PlotError`].
pub(super) fn draw_err<E: std::error::Error + Send + Sync>(
    file: &str,
) -> impl Fn(DrawingAreaErrorKind<E>) -> PlotError + Copy + '_ {
    move |e| PlotError::new(file, e)
}

/// Draws TTFT (top) and end-to-end latency (bottom) of every successful request against its
/// send time, on a log scale, with each time bin's p50 and p99 as lines.
pub(crate) fn latency_plot(path: &Path, title: &str, samples: &[RequestSample]) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let (points, failed) = latency_points(samples);
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err(&file))?;
    let (head, body) = root.split_vertically(50);
    let subtitle = if failed > 0 {
        format!("{title}   ({} ok, {failed} failed, not shown)", points.len())
    } else {
        format!("{title}   ({} requests)", points.len())
    };
    head.draw(&Text::new(subtitle, (20, 15), (FONT, 22).into_font())).map_err(draw_err(&file))?;
    let panels = body.split_evenly((2, 1));
    let span = points.last().map_or(1.0, |p| p.sent_s).max(1.0);
    let width = bin_width(span, TIME_BINS);
    let ttft: Vec<(f64, f64)> = points.iter().map(|p| (p.sent_s, p.ttft_ms)).collect();
    let latency: Vec<(f64, f64)> = points.iter().map(|p| (p.sent_s, p.latency_ms)).collect();
    latency_panel(&panels[0], &file, "time to first token", &ttft, span, width)?;
    latency_panel(&panels[1], &file, "end-to-end latency", &latency, span, width)?;
    root.present().map_err(draw_err(&file))
}

fn latency_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    file: &str,
    what: &str,
    points: &[(f64, f64)],
    span: f64,
    width: f64,
) -> Result<(), PlotError> {
    let err = draw_err(file);
    // Log scale: TTFTs run from tens of milliseconds to seconds when a replica queues.
    let (lo, hi) = log_bounds(points.iter().map(|&(_, v)| v));
    let caption = format!("{what} (ms) by send time; lines: p50 and p99 per {width:.0} s");
    let mut chart = log_ms_panel(area, file, caption, span, lo, hi)?;
    let dot = BLUE.mix(0.3).filled();
    chart.draw_series(points.iter().map(|&(t, v)| Circle::new((t, v.max(lo)), 2, dot))).map_err(err)?;
    let bins: Vec<TimeBin> = percentile_bins(points, width);
    let p50 = ShapeStyle::from(&BLACK).stroke_width(2);
    let p99 = ShapeStyle::from(&RED).stroke_width(2);
    chart
        .draw_series(LineSeries::new(bins.iter().map(|b| (b.mid(), b.p50.max(lo))), p50))
        .map_err(err)?
        .label("p50")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], p50));
    chart
        .draw_series(LineSeries::new(bins.iter().map(|b| (b.mid(), b.p99.max(lo))), p99))
        .map_err(err)?
        .label("p99")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], p99));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// A chart over send time `0..span` of milliseconds on a log axis from `lo` to `hi`, labelled
/// at 1, 2 and 5 × 10^k, its mesh drawn.
pub(super) type LogChart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::combinators::LogCoord<f64>>,
>;

/// Builds a [`LogChart`] on `area` with `caption`.
pub(super) fn log_ms_panel<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    file: &str,
    caption: String,
    span: f64,
    lo: f64,
    hi: f64,
) -> Result<LogChart<'a, 'b>, PlotError> {
    let err = draw_err(file);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..span * 1.02, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("send time (s)")
        .y_desc("ms")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .y_labels(30)
        .y_label_formatter(&|v| if is_nice(*v) { format_ms(*v) } else { String::new() })
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// A log axis's bounds for `values` (milliseconds): 1, 2 or 5 × 10^k around them, 1..1000
/// when there are none.
pub(super) fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo.is_finite() && hi > 0.0 { (nice_below(lo.max(0.1)), nice_above(hi * 1.05)) } else { (1.0, 1000.0) }
}

/// The largest 1, 2 or 5 × 10^k at or below `v` (> 0).
pub(super) fn nice_below(v: f64) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0].into_iter().map(|m| m * decade).find(|&n| n <= v * (1.0 + 1e-9)).unwrap_or(decade)
}

/// The smallest 1, 2 or 5 × 10^k at or above `v` (> 0).
pub(super) fn nice_above(v: f64) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&n| n >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * decade)
}

/// Whether `v` is 1, 2 or 5 × 10^k: the log axis labels only those, so its labels do not crowd.
pub(super) fn is_nice(v: f64) -> bool {
    v > 0.0 && {
        let m = v / 10f64.powf(v.log10().floor());
        [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6)
    }
}

/// An axis label in milliseconds: `50`, `1.5k`.
pub(super) fn format_ms(v: f64) -> String {
    if v >= 1000.0 {
        let s = format!("{:.1}", v / 1000.0);
        format!("{}k", s.trim_end_matches(".0"))
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Draws each replica's share of the completed requests as a bar, labelled with its speed, with
/// the share its speed alone would give it as a red mark.
pub(crate) fn share_plot(path: &Path, title: &str, replicas: &[ReplicaShare]) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let err = draw_err(&file);
    if replicas.is_empty() {
        return Err(PlotError::new(&file, "no replicas"));
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = replicas.iter().map(|r| r.share.max(r.speed_share)).fold(0.0, f64::max);
    let top = (top * 1.2).clamp(0.05, 1.05);
    let last = u32::try_from(replicas.len() - 1).unwrap_or(u32::MAX);
    let labels: Vec<String> =
        replicas.iter().map(|r| format!("{} (speed {})", r.name, format_speed(r.speed))).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..last).into_segmented(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(replicas.len() + 1)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .y_desc("share of completed requests")
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    let bar = RGBColor(70, 120, 190);
    let plot_width = chart.plotting_area().dim_in_pixel().0;
    let bar_width = (plot_width / replicas.len() as u32).saturating_sub(2 * BAR_MARGIN);
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(bar.filled())
                .margin(BAR_MARGIN)
                .data(replicas.iter().zip(0u32..).map(|(r, i)| (i, r.share))),
        )
        .map_err(err)?
        .label("measured share")
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], bar.filled()));
    // The share by speed: a red dash across each bar, as wide as the bar.
    let mark = ShapeStyle::from(&RED).stroke_width(3);
    let half = i32::try_from(bar_width / 2).unwrap_or(40);
    chart
        .draw_series(replicas.iter().zip(0u32..).map(|(r, i)| {
            EmptyElement::at((SegmentValue::CenterOf(i), r.speed_share))
                + PathElement::new(vec![(-half, 0), (half, 0)], mark)
        }))
        .map_err(err)?
        .label("share by speed")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], mark));
    let text = (FONT, 16).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(replicas.iter().zip(0u32..).map(|(r, i)| {
            Text::new(
                format!("{:.1}% ({})", r.share * 100.0, r.completed),
                (SegmentValue::CenterOf(i), r.share + top * 0.01),
                text.clone(),
            )
        }))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Draws each replica's prefix-cache hit rate (cached prompt tokens over prompt tokens) as a bar,
/// and the whole cluster's as a last bar, `all`.
pub(crate) fn hit_rate_plot(
    path: &Path,
    title: &str,
    replicas: &[ReplicaShare],
    overall: f64,
) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let err = draw_err(&file);
    let mut bars: Vec<(String, f64, u64)> = replicas
        .iter()
        .map(|r| {
            (format!("{} (speed {})", r.name, format_speed(r.speed)), r.prefix_hit_rate, r.prompt_tokens)
        })
        .collect();
    bars.push(("all".to_string(), overall, replicas.iter().map(|r| r.prompt_tokens).sum()));
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let top = (top * 1.2).clamp(0.05, 1.05);
    let last = u32::try_from(bars.len() - 1).unwrap_or(u32::MAX);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..last).into_segmented(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() + 1)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i as usize).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .y_desc("cached prompt tokens / prompt tokens")
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    let bar = RGBColor(70, 150, 110);
    let total = RGBColor(40, 40, 40);
    chart
        .draw_series(bars.iter().zip(0u32..).map(|(b, i)| {
            let color = if i == last { total } else { bar };
            let mut rect = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), b.1)],
                color.filled(),
            );
            rect.set_margin(0, 0, BAR_MARGIN, BAR_MARGIN);
            rect
        }))
        .map_err(err)?;
    let text = (FONT, 16).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(bars.iter().zip(0u32..).map(|(b, i)| {
            Text::new(
                format!("{:.1}% of {}", b.1 * 100.0, b.2),
                (SegmentValue::CenterOf(i), b.1 + top * 0.01),
                text.clone(),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ok(at_ms: u64, ttft_ms: u64, latency_ms: u64) -> RequestSample {
        RequestSample {
            sent_at: Duration::from_millis(at_ms),
            outcome: Outcome::Ok {
                ttft: Duration::from_millis(ttft_ms),
                latency: Duration::from_millis(latency_ms),
                output_tokens: 3,
            },
        }
    }

    #[test]
    fn points_are_the_successes_in_send_order() {
        let samples = vec![
            ok(2000, 30, 400),
            RequestSample { sent_at: Duration::from_secs(1), outcome: Outcome::Failed("UNAVAILABLE") },
            ok(500, 20, 300),
        ];
        let (points, failed) = latency_points(&samples);
        assert_eq!(failed, 1);
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].sent_s, points[0].ttft_ms, points[0].latency_ms), (0.5, 20.0, 300.0));
        assert_eq!(points[1].sent_s, 2.0);
    }

    #[test]
    fn log_axis_bounds_and_labels_are_one_two_five() {
        assert_eq!((nice_below(37.0), nice_above(37.0)), (20.0, 50.0));
        assert_eq!((nice_below(8.0), nice_above(8.0)), (5.0, 10.0));
        assert_eq!((nice_below(100.0), nice_above(100.0)), (100.0, 100.0));
        assert_eq!((nice_below(1500.0), nice_above(12_000.0)), (1000.0, 20_000.0));
        assert!(is_nice(200.0) && is_nice(5000.0) && is_nice(1.0) && is_nice(0.5));
        assert!(!is_nice(300.0) && !is_nice(70.0) && !is_nice(0.0));
    }

    #[test]
    fn ms_labels_are_short() {
        assert_eq!(format_ms(50.0), "50");
        assert_eq!(format_ms(1500.0), "1.5k");
        assert_eq!(format_ms(2000.0), "2k");
        assert_eq!(format_ms(0.5), "0.5");
    }

    #[test]
    fn plots_write_png_files() {
        let dir = std::env::temp_dir().join(format!("switchyard-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let samples: Vec<RequestSample> = (0..200).map(|i| ok(i * 50, 20 + i % 7, 300 + i * 3)).collect();
        latency_plot(&dir.join(LATENCY_PNG), "test", &samples).unwrap();
        let replicas: Vec<ReplicaShare> = [(1.0, 60), (0.333, 40)]
            .iter()
            .enumerate()
            .map(|(i, &(speed, completed))| ReplicaShare {
                name: format!("worker-{i}"),
                address: String::new(),
                speed,
                completed,
                failed: 0,
                share: completed as f64 / 100.0,
                speed_share: speed / 1.333,
                prompt_tokens: completed * 100,
                cached_prompt_tokens: completed * 40,
                prefix_hit_rate: 0.4,
            })
            .collect();
        share_plot(&dir.join(SHARES_PNG), "test", &replicas).unwrap();
        hit_rate_plot(&dir.join(HIT_RATE_PNG), "test", &replicas, 0.4).unwrap();
        for name in [LATENCY_PNG, SHARES_PNG, HIT_RATE_PNG] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
