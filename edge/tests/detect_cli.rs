//! `edge detect` as a user runs it: a folder with good, rotated and broken images, and a
//! stand-in model made in code.

mod common;

use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

fn encode(img: RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Vec::new();
    DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut buf), format).expect("encode");
    buf
}

/// A JPEG of `w` x `h` pixels whose EXIF says "rotate 90 degrees clockwise to view"
/// (orientation 6), so a viewer shows it `h` x `w`.
fn rotated_jpeg(w: u32, h: u32) -> Vec<u8> {
    let jpeg = encode(RgbImage::from_pixel(w, h, Rgb([200, 200, 200])), ImageFormat::Jpeg);
    // TIFF header (little-endian), one IFD entry: Orientation (0x0112), SHORT, 1, value 6.
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend([1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend([0xFF, 0xE1]);
    out.extend(len.to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

fn run_detect(model: &Path, paths: &[&Path]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("detect")
        .arg("--model")
        .arg(model)
        .args(paths)
        .env("RUST_LOG", "warn")
        .output()
        .expect("edge runs");
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let stderr = String::from_utf8(out.stderr).expect("utf8");
    (out.status.success(), stdout, stderr)
}

#[test]
fn prints_a_line_per_image_and_goes_on_past_broken_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("stand-in.onnx");
    std::fs::write(&model, common::stand_in_detector(true)).expect("write model");
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).expect("mkdir");
    let bright = encode(RgbImage::from_pixel(640, 480, Rgb([250, 250, 250])), ImageFormat::Png);
    std::fs::write(photos.join("a_bright.png"), bright).expect("write");
    let dark = encode(RgbImage::from_pixel(300, 200, Rgb([5, 5, 5])), ImageFormat::Jpeg);
    std::fs::write(photos.join("b_dark.jpg"), &dark).expect("write");
    std::fs::write(photos.join("c_corrupt.jpg"), b"\xff\xd8\xff\xe0 definitely not a jpeg")
        .expect("write");
    std::fs::write(photos.join("d_cut.jpg"), &dark[..dark.len() / 4]).expect("write");
    std::fs::write(photos.join("e_rotated.jpg"), rotated_jpeg(60, 20)).expect("write");
    std::fs::write(photos.join("notes.txt"), b"not an image, not looked at").expect("write");

    let (ok, stdout, stderr) = run_detect(&model, &[&photos]);
    assert!(!ok, "broken files must make the exit status non-zero");
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let names: Vec<&str> = lines.iter().map(|l| l["image"].as_str().expect("image")).collect();
    assert_eq!(lines.len(), 3, "{stdout}\n{stderr}");
    assert!(names[0].ends_with("a_bright.png") && names[1].ends_with("b_dark.jpg"), "{names:?}");

    // The stand-in scores bright frames high: a face above the threshold, none below.
    assert_eq!((lines[0]["width"].as_u64(), lines[0]["height"].as_u64()), (Some(640), Some(480)));
    assert!(lines[0]["score"].as_f64().expect("score") > 0.9);
    let face = &lines[0]["faces"][0];
    assert_eq!(face["bbox"].as_array().expect("bbox").len(), 4);
    assert!(lines[1]["score"].as_f64().expect("score") < 0.1);
    assert_eq!(lines[1]["faces"].as_array().expect("faces").len(), 0);
    // EXIF orientation applied: the 60x20 file is reported as the 20x60 image it shows.
    assert_eq!((lines[2]["width"].as_u64(), lines[2]["height"].as_u64()), (Some(20), Some(60)));

    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("edge detect:")).collect();
    assert!(errors.iter().any(|l| l.contains("c_corrupt.jpg")), "{stderr}");
    assert!(errors.iter().any(|l| l.contains("d_cut.jpg")), "{stderr}");
    assert!(stderr.contains("2 of 5"), "{stderr}");
}

#[test]
fn a_threshold_of_one_reports_no_faces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, common::stand_in_detector(true)).expect("write model");
    let img = dir.path().join("x.png");
    std::fs::write(
        &img,
        encode(RgbImage::from_pixel(8, 8, Rgb([250, 250, 250])), ImageFormat::Png),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["detect", "--threshold", "1.0", "--model"])
        .arg(&model)
        .arg(&img)
        .output()
        .expect("edge runs");
    assert!(out.status.success());
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(line["faces"].as_array().expect("faces").len(), 0);
}

#[test]
fn a_corrupt_model_fails_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("broken-model.onnx");
    let bytes = common::stand_in_detector(true);
    std::fs::write(&model, &bytes[..bytes.len() / 3]).expect("write model");
    let (ok, _, stderr) = run_detect(&model, &[dir.path()]);
    assert!(!ok);
    assert!(stderr.contains("broken-model.onnx"), "{stderr}");
}

#[test]
fn a_folder_without_images_is_an_error_not_silence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, common::stand_in_detector(true)).expect("write model");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    std::fs::write(empty.join("notes.txt"), "no images here").expect("write");

    let (ok, stdout, stderr) = run_detect(&model, &[&empty]);

    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("empty: no JPEG or PNG files"), "{stderr}");
}
