//! The `burst` scenario's plots: per workload, each autoscaler's ready replicas over time (above)
//! and the p99 TTFT of the requests arriving in each 10 s (below, log scale, SLO marked).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::PlotError;
use crate::report::plot::{FONT, percentile_bins, register_font};

/// One autoscaler's lines.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    name: String,
    /// (s, desired, ready), one per pool change.
    replicas: Vec<(f64, u32, u32)>,
    /// (s, p99 TTFT ms) per 10 s of arrivals.
    p99: Vec<(f64, f64)>,
}

impl Series {
    /// From a run's pool changes and its requests (arrival s, TTFT s or failed).
    pub(crate) fn new(name: &str, replicas: Vec<(f64, u32, u32)>, requests: &[(f64, Option<f64>)]) -> Self {
        // A failed request counts as a TTFT of a minute, so the tail shows it.
        let points: Vec<(f64, f64)> = requests.iter().map(|&(at, t)| (at, t.unwrap_or(60.0) * 1e3)).collect();
        let p99 = percentile_bins(&points, 10.0).iter().map(|b| (b.mid(), b.p99)).collect();
        Self { name: name.to_string(), replicas, p99 }
    }
}

/// `burst.png` and `azure` give `burst-azure.png` beside it.
pub(crate) fn plot_path(path: &Path, workload: &str) -> PathBuf {
    let stem = path.file_stem().map_or_else(|| "burst".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}-{workload}.png"))
}

pub(crate) fn burst_plot(
    path: &Path,
    workload: &str,
    duration: f64,
    series: &[Series],
    slo_s: f64,
) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let err = |e: DrawingAreaErrorKind<_>| PlotError::new(&file, e);
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(450);
    let colours = [BLUE, RED, GREEN, MAGENTA, BLACK, CYAN];
    let most =
        series.iter().flat_map(|s| s.replicas.iter().map(|&(_, d, r)| d.max(r))).max().unwrap_or(1) + 1;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{workload}: ready replicas over time"), (FONT, 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..duration, 0u32..most)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("ready replicas")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    for (k, s) in series.iter().enumerate() {
        let style = ShapeStyle::from(&colours[k % colours.len()]).stroke_width(2);
        // A step line: each value holds until the next change.
        let mut points = Vec::new();
        let mut last = None;
        for &(t, _, ready) in &s.replicas {
            if let Some(prev) = last {
                points.push((t.min(duration), prev));
            }
            points.push((t.min(duration), ready));
            last = Some(ready);
        }
        if let Some(prev) = last {
            points.push((duration, prev));
        }
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let highest = series.iter().flat_map(|s| s.p99.iter().map(|&(_, v)| v)).fold(slo_s * 2e3, f64::max);
    let lowest =
        series.iter().flat_map(|s| s.p99.iter().map(|&(_, v)| v)).fold(slo_s * 1e3, f64::min).max(1.0);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(format!("{workload}: p99 TTFT per 10 s of arrivals (dashed: the SLO)"), (FONT, 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..duration, (lowest / 1.5..highest * 1.5).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("p99 TTFT (ms)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    let slo_ms = slo_s * 1e3;
    let grey = ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(1);
    chart.draw_series(DashedLineSeries::new([(0.0, slo_ms), (duration, slo_ms)], 8, 6, grey)).map_err(err)?;
    for (k, s) in series.iter().enumerate() {
        let style = ShapeStyle::from(&colours[k % colours.len()]).stroke_width(2);
        chart.draw_series(LineSeries::new(s.p99.iter().copied(), style)).map_err(err)?;
    }
    root.present().map_err(err)
}
