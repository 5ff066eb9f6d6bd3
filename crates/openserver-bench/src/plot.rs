//! `--plot FILE.png`: latency percentiles and throughput over the run (plotters, bitmap).

use crate::load::LoadReport;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// TrueType fonts tried for the labels, in order; Debian's fonts-dejavu-core provides the
/// first.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font as plotters' "sans-serif" (once per process).
fn register_font() -> Result<()> {
    static FONT: OnceLock<bool> = OnceLock::new();
    let ok = *FONT.get_or_init(|| {
        FONTS.iter().any(|path| {
            std::fs::read(path).is_ok_and(|bytes| {
                // plotters keeps fonts for the life of the process; this runs once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "no TrueType font for the plot's labels (apt-get install fonts-dejavu-core)"
        ))
    }
}

/// Draws latency percentiles (log scale) above throughput, one point per sample interval.
pub(crate) fn draw(report: &LoadReport, path: &Path, title: &str) -> Result<()> {
    register_font()?;
    let dt = report.interval_secs.max(1e-3);
    let points: Vec<(f64, crate::stats::Summary)> = report
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| ((i + 1) as f64 * dt, s.latency.summary()))
        .collect();
    let t_max = points.last().map_or(1.0, |p| p.0).max(dt);
    let lat_max = points.iter().map(|p| p.1.max_us).fold(1.0f64, f64::max) * 1.5;
    let lat_min = points
        .iter()
        .filter(|p| p.1.count > 0)
        .map(|p| p.1.p50_us)
        .fold(f64::MAX, f64::min)
        .clamp(0.1, lat_max / 2.0)
        / 1.5;
    let rate_max = points
        .iter()
        .map(|p| p.1.count as f64 / dt)
        .fold(1.0f64, f64::max)
        * 1.15;

    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (upper, lower) = root.split_vertically(330);

    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (lat_min..lat_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("latency (us)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 12))
        .draw()?;
    type Pick = fn(&crate::stats::Summary) -> f64;
    let series: [(&str, RGBColor, Pick); 4] = [
        ("p50", BLUE, |s| s.p50_us),
        ("p99", GREEN, |s| s.p99_us),
        ("p99.9", RGBColor(230, 140, 0), |s| s.p999_us),
        ("max", RED, |s| s.max_us),
    ];
    for (name, color, pick) in series {
        let line = points
            .iter()
            .filter(|p| p.1.count > 0)
            .map(|p| (p.0, pick(&p.1).max(lat_min)));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;

    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("messages/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 12))
        .draw()?;
    chart.draw_series(LineSeries::new(
        points.iter().map(|p| (p.0, p.1.count as f64 / dt)),
        BLUE.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}
