//! The `overload` scenario's plot: each configuration's limit over time (virtual in the lab, wall
//! clock in the bench), with the load steps marked.

use std::path::Path;

use plotters::prelude::*;

use crate::report::PlotError;
use crate::report::plot::{FONT, register_font};

/// Draws one line per configuration (`(name, [(seconds, limit)])`), on a log scale, over
/// `steps.len()` load steps of `step_seconds` each, labelled with their load; `clock` names the
/// time axis's clock (`virtual`, `wall-clock`).
pub(crate) fn limit_plot(
    path: &Path,
    series: &[(String, Vec<(f64, u32)>)],
    step_seconds: f64,
    steps: &[f64],
    clock: &str,
) -> Result<(), PlotError> {
    register_font()?;
    let file = path.display().to_string();
    let err = |e: DrawingAreaErrorKind<_>| PlotError::new(&file, e);
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let span = step_seconds * steps.len() as f64;
    let top = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, l)| f64::from(l))).fold(1.0, f64::max);
    let top = 10f64.powf((top * 1.5).log10().ceil());
    let mut chart = ChartBuilder::on(&root)
        .caption("pool-wide concurrency limit over time (load steps marked above the axis)", (FONT, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..span, (1f64..top).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("{clock} time (s)"))
        .y_desc("limit (requests in flight)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(err)?;
    for (i, load) in steps.iter().enumerate() {
        let x = i as f64 * step_seconds;
        let grey = ShapeStyle::from(&BLACK.mix(0.3)).stroke_width(1);
        chart.draw_series(LineSeries::new([(x, 1.0), (x, top)], grey)).map_err(err)?;
        chart
            .draw_series([Text::new(format!("{load}×"), (x + step_seconds * 0.4, top / 1.6), (FONT, 16))])
            .map_err(err)?;
    }
    let colours = [
        BLUE,
        RED,
        GREEN,
        MAGENTA,
        CYAN,
        BLACK,
        RGBColor(255, 140, 0),
        RGBColor(128, 0, 128),
        RGBColor(139, 69, 19),
        RGBColor(0, 128, 128),
    ];
    for (k, (name, points)) in series.iter().enumerate() {
        let style = ShapeStyle::from(&colours[k % colours.len()]).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().map(|&(t, l)| (t, f64::from(l.max(1)))), style))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
