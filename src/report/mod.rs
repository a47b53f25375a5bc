//! What the load generator, the lab and the benchmarks report: percentile summaries, plain-text
//! tables, JSON files and PNG plots.

mod percentiles;
pub mod plot;
mod table;

pub use percentiles::Percentiles;
pub use plot::PlotError;
pub use table::Table;

use std::path::Path;

/// Writes `value` as pretty JSON to `path` (creating its folder), ending with a newline.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}
