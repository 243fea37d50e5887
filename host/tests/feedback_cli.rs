//! `host feedback import | export | report` as a user runs them, each test with its own
//! data folder (`--data` or `FDET_HOST_DATA`).

#![allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const HOST: &str = env!("CARGO_BIN_EXE_host");
const SEED_FEEDBACK: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/seed/feedback/feedback_data.json");

fn host(data: &Path, args: &[&str]) -> Output {
    let out = Command::new(HOST).arg("--data").arg(data).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "host {args:?} failed: {stderr}");
    out
}

#[test]
fn import_report_and_export_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let first = host(&data, &["feedback", "import", SEED_FEEDBACK]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("80 added, 0 already"));
    let again = host(&data, &["feedback", "import", SEED_FEEDBACK]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 added, 80 already"));
    // The reviewers' rating scale beside the feedback file is kept for the review page.
    let seed_criteria = Path::new(SEED_FEEDBACK).with_file_name("criteria.txt");
    let kept = std::fs::read(data.join("criteria.txt")).unwrap();
    assert_eq!(kept, std::fs::read(seed_criteria).unwrap());

    let chart = dir.path().join("chart.svg");
    let json = host(&data, &["feedback", "report", "--json", "--chart", chart.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["count"], 80);
    assert_eq!(report["iou_bins"]["excellent"], 12);
    assert_eq!(report["failure_patterns"]["false_negative"]["count"], 28);
    assert!(std::fs::read_to_string(&chart).unwrap().contains("Rating over time"));

    let out = dir.path().join("export.json");
    host(&data, &["feedback", "export", "--out", out.to_str().unwrap()]);
    let exported: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let original: Value = serde_json::from_slice(&std::fs::read(SEED_FEEDBACK).unwrap()).unwrap();
    assert_eq!(exported, original);
}

#[test]
fn the_environment_chooses_the_data_folder_and_bad_records_fail_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-env");
    let file = dir.path().join("feedback_data.json");
    let mut records: Vec<Value> =
        serde_json::from_slice(&std::fs::read(SEED_FEEDBACK).unwrap()).unwrap();
    records.truncate(2);
    records[1]["rating"] = 9.5.into();
    std::fs::write(&file, serde_json::to_vec(&records).unwrap()).unwrap();
    let images = Path::new(SEED_FEEDBACK).parent().unwrap().join("../rlhf/data");

    let out = Command::new(HOST)
        .env("FDET_HOST_DATA", &data)
        .args(["feedback", "import"])
        .arg(&file)
        .arg("--images")
        .arg(&images)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a rejected record must change the exit code");
    assert!(stdout.contains("rejected record 1") && stdout.contains("rating 9.5"), "{stdout}");
    assert!(stdout.contains("1 added"), "{stdout}");
    assert!(data.join("feedback.sqlite").is_file());
}

#[test]
fn reading_from_a_folder_without_a_store_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("host-dtaa");

    let out = Command::new(HOST).arg("--data").arg(&typo).args(["feedback", "report"]).output();

    let out = out.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("host-dtaa: no feedback store here"), "{stderr}");
    assert!(!typo.exists(), "the mistyped folder was created");
}
