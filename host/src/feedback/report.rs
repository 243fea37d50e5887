//! `host feedback report`: what the feedback says about the model.
//!
//! Computed over the latest feedback on each reviewed capture. The model "said face" when
//! its decision (`has_face`, or score >= threshold for pulled captures) was yes; the
//! reviewer "said face" when they drew a box. IoU compares the two boxes and exists only
//! when both said face.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::store::{CaptureId, FeedbackRow, Store};

/// IoU at or above this is "excellent".
pub const IOU_EXCELLENT: f64 = 0.4;
/// IoU at or above this (and below excellent) is "good".
pub const IOU_GOOD: f64 = 0.3;
/// IoU at or above this (and below good) is "fair"; below it, "poor".
pub const IOU_FAIR: f64 = 0.2;
/// A score within this distance of 0.5 means the model hesitated ("low confidence").
pub const HESITANT_BAND: f64 = 0.2;
/// A score at or above this (or at or below `1 - this`) is a confident answer.
pub const CONFIDENT: f64 = 0.8;
/// A rating at or below this means the reviewer judged the detection wrong.
pub const WRONG_RATING: u8 = 2;

/// Arguments of `host feedback report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also draw the charts (rating and IoU histograms, confidence vs IoU, rating over
    /// time) into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
}

/// The report's figures; `None` where there is nothing to average or divide by.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Reviewed captures.
    pub count: usize,
    /// Mean rating, 0-5.
    pub average_rating: Option<f64>,
    /// Mean model score.
    pub average_confidence: Option<f64>,
    /// Mean IoU of model box vs human box, where both exist.
    pub average_iou: Option<f64>,
    /// How those IoUs fall into bins.
    pub iou_bins: IouBins,
    /// Model said face, reviewer drew a box.
    pub true_positives: usize,
    /// Model said face, reviewer said no face.
    pub false_positives: usize,
    /// Both said no face.
    pub true_negatives: usize,
    /// Model said no face, reviewer drew a box.
    pub false_negatives: usize,
    /// TP / (TP + FP).
    pub precision: Option<f64>,
    /// TP / (TP + FN).
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall.
    pub f1: Option<f64>,
    /// Captures that fail in a recognisable way.
    pub failure_patterns: FailurePatterns,
    /// Mean rating per review day, oldest first.
    pub rating_trend: Vec<TrendPoint>,
}

/// IoU bin counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IouBins {
    /// IoU >= 0.4.
    pub excellent: usize,
    /// 0.3 <= IoU < 0.4.
    pub good: usize,
    /// 0.2 <= IoU < 0.3.
    pub fair: usize,
    /// IoU < 0.2.
    pub poor: usize,
}

/// Failure patterns, each with the captures that show it (a capture can show several).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FailurePatterns {
    /// Score within [`HESITANT_BAND`] of 0.5.
    pub low_confidence: Pattern,
    /// Confident answer (score >= [`CONFIDENT`] or <= 1 - it) rated <= [`WRONG_RATING`].
    pub confident_but_wrong: Pattern,
    /// Both said face but IoU < 0.2.
    pub poor_box: Pattern,
    /// Model said face, reviewer said no face.
    pub false_positive: Pattern,
    /// Model said no face, reviewer drew a box.
    pub false_negative: Pattern,
}

/// One failure pattern.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pattern {
    /// How many captures.
    pub count: usize,
    /// Which.
    pub captures: Vec<CaptureId>,
}

impl Pattern {
    fn add(&mut self, id: CaptureId) {
        self.count += 1;
        self.captures.push(id);
    }
}

/// The mean rating of one day's reviews.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Reviews that day.
    pub count: usize,
    /// Their mean rating.
    pub average_rating: f64,
}

/// The model-vs-human comparison for one row.
pub fn iou(row: &FeedbackRow) -> Option<f64> {
    match (row.model_face, row.model_box, row.correction) {
        (true, Some(m), Some(h)) => Some(f64::from(m.iou(h))),
        _ => None,
    }
}

/// Computes the report over `rows`.
pub fn compute(rows: &[FeedbackRow]) -> Report {
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let ratings: Vec<f64> = rows.iter().map(|r| f64::from(r.rating)).collect();
    let scores: Vec<f64> = rows.iter().map(|r| f64::from(r.model_score)).collect();
    let ious: Vec<f64> = rows.iter().filter_map(iou).collect();

    let mut bins = IouBins::default();
    for &v in &ious {
        match v {
            v if v >= IOU_EXCELLENT => bins.excellent += 1,
            v if v >= IOU_GOOD => bins.good += 1,
            v if v >= IOU_FAIR => bins.fair += 1,
            _ => bins.poor += 1,
        }
    }
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    for r in rows {
        match (r.model_face, r.correction.is_some()) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let ratio = |a: usize, b: usize| (a + b > 0).then(|| a as f64 / (a + b) as f64);
    let (precision, recall) = (ratio(tp, fp), ratio(tp, fn_));
    let f1 = match (precision, recall) {
        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
        _ => None,
    };
    Report {
        count: rows.len(),
        average_rating: mean(&ratings),
        average_confidence: mean(&scores),
        average_iou: mean(&ious),
        iou_bins: bins,
        true_positives: tp,
        false_positives: fp,
        true_negatives: tn,
        false_negatives: fn_,
        precision,
        recall,
        f1,
        failure_patterns: patterns(rows),
        rating_trend: trend(rows),
    }
}

fn patterns(rows: &[FeedbackRow]) -> FailurePatterns {
    let mut p = FailurePatterns::default();
    for r in rows {
        let score = f64::from(r.model_score);
        if (score - 0.5).abs() < HESITANT_BAND {
            p.low_confidence.add(r.capture_id);
        }
        let confident = score >= CONFIDENT || score <= 1.0 - CONFIDENT;
        if confident && r.rating <= WRONG_RATING {
            p.confident_but_wrong.add(r.capture_id);
        }
        if iou(r).is_some_and(|v| v < IOU_FAIR) {
            p.poor_box.add(r.capture_id);
        }
        match (r.model_face, r.correction.is_some()) {
            (true, false) => p.false_positive.add(r.capture_id),
            (false, true) => p.false_negative.add(r.capture_id),
            _ => {}
        }
    }
    p
}

fn trend(rows: &[FeedbackRow]) -> Vec<TrendPoint> {
    let mut days: BTreeMap<&str, (usize, u32)> = BTreeMap::new();
    for r in rows {
        let day = r.time.get(..10).unwrap_or(&r.time);
        let e = days.entry(day).or_default();
        e.0 += 1;
        e.1 += u32::from(r.rating);
    }
    let point = |(day, (n, sum)): (&str, (usize, u32))| TrendPoint {
        day: day.to_owned(),
        count: n,
        average_rating: f64::from(sum) / n as f64,
    };
    days.into_iter().map(point).collect()
}

/// Runs the command.
#[allow(clippy::print_stdout)] // The report is the command's output.
pub fn run(args: &ReportArgs, store: &Store) -> Result<()> {
    let rows = store.training_feedback().context("reading feedback from the store")?;
    let report = compute(&rows);
    if let Some(path) = &args.chart {
        super::chart::write(path, &rows, &report)?;
        tracing::info!(path = %path.display(), "chart written");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialising the report")?);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

/// The report as text, one figure a line.
pub fn text(r: &Report) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
    let b = &r.iou_bins;
    let p = &r.failure_patterns;
    let mut s = format!(
        "reviewed captures   {}\naverage rating      {}\naverage confidence  {}\n\
         average IoU         {} (over {} captures where model and reviewer both drew a box)\n\
         IoU bins            excellent (>= 0.4) {}, good (0.3-0.4) {}, fair (0.2-0.3) {}, \
         poor (< 0.2) {}\n\
         detection           TP {}  FP {}  TN {}  FN {}\n\
         precision           {}\nrecall              {}\nF1                  {}\n\
         failure patterns    low confidence {}, confident but wrong {}, poor box {}, \
         false positive {}, false negative {}\nrating trend\n",
        r.count,
        f(r.average_rating),
        f(r.average_confidence),
        f(r.average_iou),
        b.excellent + b.good + b.fair + b.poor,
        b.excellent,
        b.good,
        b.fair,
        b.poor,
        r.true_positives,
        r.false_positives,
        r.true_negatives,
        r.false_negatives,
        f(r.precision),
        f(r.recall),
        f(r.f1),
        p.low_confidence.count,
        p.confident_but_wrong.count,
        p.poor_box.count,
        p.false_positive.count,
        p.false_negative.count,
    );
    for t in &r.rating_trend {
        s.push_str(&format!(
            "  {}  {:>4} reviews  mean rating {:.2}\n",
            t.day, t.count, t.average_rating
        ));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests;
