//! Scenario `soak`'s plot: the gateway's resident memory, open file descriptors and live tasks
//! over the run, one panel each, with the worker restarts (orange) and the end of the warm-up
//! (dashed red) marked.

use std::path::Path;

use plotters::prelude::*;

use super::soak::{Sample, SoakReport};

/// A panel: its title and how a sample gives its value.
type Panel = (&'static str, fn(&Sample) -> f64);
use crate::report::PlotError;
use crate::report::plot::{FONT, register_font};

/// Draws `report`'s samples to `path` (PNG).
pub(crate) fn plot(path: &Path, report: &SoakReport) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let err = |e: DrawingAreaErrorKind<_>| PlotError::new(&file, e);
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((3, 1));
    let series: [Panel; 3] = [
        ("resident memory (MiB)", |s| s.rss_bytes / (1024.0 * 1024.0)),
        ("open file descriptors", |s| s.open_fds),
        ("tasks", |s| s.tasks),
    ];
    let span = report.duration_s.max(1.0);
    for (panel, (name, value)) in panels.iter().zip(series) {
        let points: Vec<(f64, f64)> = report.samples.iter().map(|s| (s.t_s, value(s))).collect();
        let top = points.iter().map(|&(_, v)| v).fold(1.0, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("gateway {name}"), (FONT, 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..span, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time (s); orange: a worker restarted (SIGTERM), dashed red: end of the warm-up")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(err)?;
        let restart = ShapeStyle::from(&RGBColor(255, 140, 0).mix(0.7)).stroke_width(2);
        for r in &report.restarts {
            chart
                .draw_series(LineSeries::new([(r.stopped_at_s, 0.0), (r.stopped_at_s, top)], restart))
                .map_err(err)?;
        }
        let warmup = ShapeStyle::from(&RED.mix(0.6)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                [(report.warmup_s, 0.0), (report.warmup_s, top)],
                6,
                4,
                warmup,
            ))
            .map_err(err)?;
        chart.draw_series(LineSeries::new(points, ShapeStyle::from(&BLUE).stroke_width(2))).map_err(err)?;
    }
    root.present().map_err(err)
}
