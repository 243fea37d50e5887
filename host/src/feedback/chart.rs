//! The report as a picture: four panels in one SVG file.
//!
//! SVG only: plotters' PNG backend renders text through system fonts (font-kit), which
//! the build machines do not have, while SVG leaves the text to whoever opens the file.

use std::path::Path;

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{self, Report, IOU_EXCELLENT, IOU_FAIR, IOU_GOOD};
use crate::store::time::parse_iso;
use crate::store::FeedbackRow;

const FONT: &str = "sans-serif";
const MODEL: RGBColor = RGBColor(31, 119, 180);
const MISSED: RGBColor = RGBColor(214, 39, 40);
/// Reviews averaged for the trend line.
const TREND_WINDOW: usize = 10;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws the rating histogram, IoU histogram, confidence vs IoU scatter and rating over
/// time into `path` (must end in `.svg`).
pub fn write(path: &Path, rows: &[FeedbackRow], report: &Report) -> Result<()> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        bail!(
            "{}: charts are written as SVG only; give a file name ending in .svg",
            path.display()
        );
    }
    let root = SVGBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Feedback on {} captures: mean rating {}, mean IoU {}, precision {}, recall {}",
        report.count,
        fmt(report.average_rating),
        fmt(report.average_iou),
        fmt(report.precision),
        fmt(report.recall)
    );
    let root = root.titled(&title, (FONT, 24))?;
    let panels = root.split_evenly((2, 2));
    ratings(&panels[0], rows)?;
    ious(&panels[1], rows)?;
    scatter(&panels[2], rows)?;
    over_time(&panels[3], rows)?;
    root.present()?;
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.2}"))
}

fn ratings(area: &Area<'_>, rows: &[FeedbackRow]) -> Result<()> {
    let mut counts = [0u32; 6];
    for r in rows {
        counts[usize::from(r.rating.min(5))] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0) + 1;
    let mut chart = ChartBuilder::on(area)
        .caption("Rating histogram", (FONT, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d((0u32..5u32).into_segmented(), 0u32..top)?;
    chart.configure_mesh().disable_x_mesh().x_desc("rating").y_desc("captures").draw()?;
    let bars = counts.iter().enumerate().map(|(i, &n)| (i as u32, n));
    chart.draw_series(Histogram::vertical(&chart).style(MODEL.filled()).margin(8).data(bars))?;
    Ok(())
}

fn ious(area: &Area<'_>, rows: &[FeedbackRow]) -> Result<()> {
    const BINS: usize = 20;
    let mut counts = [0u32; BINS];
    for v in rows.iter().filter_map(report::iou) {
        counts[((v * BINS as f64) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0) + 1;
    let mut chart = ChartBuilder::on(area)
        .caption("IoU model box vs reviewer box", (FONT, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..1.0, 0u32..top)?;
    chart.configure_mesh().disable_x_mesh().x_desc("IoU").y_desc("captures").draw()?;
    let bar = |(i, &n): (usize, &u32)| {
        let lo = i as f64 / BINS as f64;
        Rectangle::new([(lo, 0), (lo + 1.0 / BINS as f64, n)], bin_colour(lo).filled())
    };
    chart.draw_series(counts.iter().enumerate().map(bar))?;
    Ok(())
}

/// Poor red, fair orange, good olive, excellent green: the report's bins.
fn bin_colour(iou: f64) -> RGBColor {
    if iou >= IOU_EXCELLENT {
        RGBColor(44, 160, 44)
    } else if iou >= IOU_GOOD {
        RGBColor(188, 189, 34)
    } else if iou >= IOU_FAIR {
        RGBColor(255, 127, 14)
    } else {
        MISSED
    }
}

fn scatter(area: &Area<'_>, rows: &[FeedbackRow]) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption("Model confidence vs IoU", (FONT, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..1.0, -0.05..1.0)?;
    chart.configure_mesh().x_desc("model score").y_desc("IoU (missed faces at -0.03)").draw()?;
    let boxed = rows.iter().filter_map(|r| Some((f64::from(r.model_score), report::iou(r)?)));
    chart
        .draw_series(boxed.map(|p| Circle::new(p, 5, MODEL.filled())))?
        .label("model and reviewer drew a box")
        .legend(|(x, y)| Circle::new((x, y), 5, MODEL.filled()));
    let missed = rows.iter().filter(|r| !r.model_face && r.correction.is_some());
    chart
        .draw_series(missed.map(|r| Cross::new((f64::from(r.model_score), -0.03), 5, MISSED)))?
        .label("model missed the face")
        .legend(|(x, y)| Cross::new((x, y), 5, MISSED));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    Ok(())
}

fn over_time(area: &Area<'_>, rows: &[FeedbackRow]) -> Result<()> {
    let times: Vec<(f64, f64)> =
        rows.iter().filter_map(|r| Some((parse_iso(&r.time)?, f64::from(r.rating)))).collect();
    let start = times.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
    let points: Vec<(f64, f64)> = times.iter().map(|&(t, r)| ((t - start) / 3600.0, r)).collect();
    let end = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption("Rating over time", (FONT, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..end * 1.02, -0.2..5.2)?;
    chart.configure_mesh().x_desc("hours since the first review").y_desc("rating").draw()?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 4, MODEL.mix(0.5).filled())))?
        .label("review")
        .legend(|(x, y)| Circle::new((x, y), 4, MODEL.filled()));
    chart
        .draw_series(LineSeries::new(moving_average(&points), MISSED.stroke_width(2)))?
        .label(format!("mean of the last {TREND_WINDOW}"))
        .legend(|(x, y)| PathElement::new([(x - 10, y), (x + 10, y)], MISSED.stroke_width(2)));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    Ok(())
}

/// The mean rating over the last [`TREND_WINDOW`] reviews at each review (points in time
/// order, as the store returns them).
fn moving_average(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let window = &points[i.saturating_sub(TREND_WINDOW - 1)..=i];
            (points[i].0, window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;

    #[test]
    fn moving_average_uses_the_last_reviews_only() {
        let pts: Vec<(f64, f64)> = (0..12).map(|i| (f64::from(i), f64::from(i % 2 * 4))).collect();
        let avg = moving_average(&pts);
        assert_eq!(avg[0], (0.0, 0.0));
        assert_eq!(avg[1], (1.0, 2.0));
        // Reviews 2..=11: five 0s and five 4s.
        assert_eq!(avg[11], (11.0, 2.0));
    }

    #[test]
    fn only_svg_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let report = report::compute(&[]);
        let err = write(&dir.path().join("c.png"), &[], &report).unwrap_err();
        assert!(err.to_string().contains("SVG only"), "{err}");
        let svg = dir.path().join("c.svg");
        write(&svg, &[], &report).unwrap();
        let text = std::fs::read_to_string(svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("Rating histogram"));
    }
}
