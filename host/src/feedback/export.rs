//! `host feedback export`: every stored feedback row in the old project's JSON format.
//!
//! Imported records come back with their original `image_path`; captures pulled from a
//! device get the absolute path of the stored image. A "no face" verdict is written as
//! `"human_correction": null` (the old project had no way to say it).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{OldPrediction, OldRecord};
use crate::store::{ExportRow, Store};

/// Arguments of `host feedback export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Write here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: &ExportArgs, store: &Store) -> Result<()> {
    let records = records(store)?;
    let json = to_json(&records)?;
    match &args.out {
        Some(path) => {
            super::write_file(path, &json)?;
            tracing::info!(path = %path.display(), records = records.len(), "feedback exported");
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&json).and_then(|()| out.flush()).context("writing standard output")?;
        }
    }
    Ok(())
}

/// The stored feedback as old-format records, oldest row first.
pub fn records(store: &Store) -> Result<Vec<OldRecord>> {
    let rows = store.export_rows().context("reading feedback from the store")?;
    Ok(rows.into_iter().map(to_old).collect())
}

fn to_old(r: ExportRow) -> OldRecord {
    OldRecord {
        image_path: r.source,
        model_name: r.model_version,
        model_prediction: OldPrediction {
            has_face: r.model_face,
            confidence: r.model_score,
            bbox: r.model_box,
        },
        human_correction: r.correction,
        rating: f64::from(r.rating),
        comments: r.comment,
        timestamp: r.time,
        image_size: [r.height, r.width],
    }
}

/// Pretty JSON with the old file's four-space indent and a final newline.
pub fn to_json(records: &[OldRecord]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    records.serialize(&mut ser).context("serialising feedback")?;
    buf.push(b'\n');
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use std::path::Path;

    use super::*;
    use crate::feedback::import::import_file;

    const SEED_FEEDBACK: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/seed/feedback/feedback_data.json");

    #[test]
    fn import_then_export_gives_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        import_file(&mut store, Path::new(SEED_FEEDBACK), None).unwrap();
        let exported: serde_json::Value =
            serde_json::from_slice(&to_json(&records(&store).unwrap()).unwrap()).unwrap();
        let original: serde_json::Value =
            serde_json::from_slice(&std::fs::read(SEED_FEEDBACK).unwrap()).unwrap();
        assert_eq!(exported.as_array().unwrap().len(), 80);
        // Every field, every float bit for bit (the store keeps f64).
        assert_eq!(exported, original);

        // And the export imports back as nothing new.
        let file = dir.path().join("again.json");
        std::fs::write(&file, serde_json::to_vec(&exported).unwrap()).unwrap();
        let images = Path::new(SEED_FEEDBACK).parent().unwrap().join("../rlhf/data");
        let out = import_file(&mut store, &file, Some(&images)).unwrap();
        assert_eq!((out.counts.added, out.counts.skipped), (0, 80));
    }
}
