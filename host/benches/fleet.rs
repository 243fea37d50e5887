//! Fleet benchmark on loopback: captures per second pulled by `host sync` from 10
//! `edge run` devices (the mean image size is printed), and the time `host push` takes to bring a
//! 4 MB model to all 10 (sign, send, verify, load, self-test, swap). Prints a table.
//!
//! `cargo bench -p host --bench fleet` (builds `edge` first: `cargo build -p edge`).
//! `FLEET_BENCH_CAPTURES` sets captures per device (default 200).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

#[path = "../tests/fleet_support/mod.rs"]
mod fleet_support;

use std::time::Instant;

use fleet_support::*;

const DEVICES: usize = 10;

fn main() {
    let per_device: u64 =
        std::env::var("FLEET_BENCH_CAPTURES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("host-data");
    let out = host(&data, &["keys", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Known shortcoming: these 400x300 frames re-encode to JPEGs of under 1 KB on the
    // device (measured 0.8 KB), not the 50 KB of a real camera frame, so the figure is
    // for small images.
    let frames = write_frames(&root.join("frames"), 24, 400, 300, 0.5);
    let v1 = write_model(&root.join("models"), "face-v1", 1, &stand_in_onnx(4.0 / 3.0, 0.0, 0));
    let mut devices: Vec<EdgeDevice> = (0..DEVICES)
        .map(|i| {
            let setup = DeviceSetup {
                name: format!("cam-{i:02}"),
                frames: frames.clone(),
                model: v1.clone(),
                trusted_key: key.clone(),
                per_minute: per_device as u32,
                fps: 100,
            };
            EdgeDevice::start(&root.join("devices"), &setup)
        })
        .collect();
    for d in &mut devices {
        d.wait_ready();
    }
    for d in &devices {
        d.wait_captures(per_device);
    }
    let fleet = root.join("fleet.toml");
    write_fleet(&fleet, &devices.iter().map(|d| (d, d.port)).collect::<Vec<_>>());
    let fleet_arg = fleet.to_str().unwrap();

    let start = Instant::now();
    let out = host(&data, &["sync", "--fleet", fleet_arg, "--concurrency", "10"]);
    let sync_s = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out));
    let stored: usize = devices.iter().map(|d| assert_no_gap_no_duplicate(&data, d)).sum();
    let image_bytes = dir_bytes(&data.join("images"));

    let onnx = stand_in_onnx(4.0 / 3.0, 0.1, 4 << 20);
    let model_mb = onnx.len() as f64 / (1 << 20) as f64;
    let v2 = write_model(&root.join("models"), "face-v2", 2, &onnx);
    let start = Instant::now();
    let out = host(&data, &["push", "--fleet", fleet_arg, "--model", v2.to_str().unwrap()]);
    let push_s = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out));

    println!("| figure | value |");
    println!("|---|---|");
    println!("| devices | {DEVICES} |");
    println!("| captures pulled | {stored} |");
    println!("| mean image size | {:.1} KB |", image_bytes as f64 / stored.max(1) as f64 / 1000.0);
    println!("| host sync wall time | {sync_s:.2} s |");
    println!("| captures per second | {:.0} |", stored as f64 / sync_s);
    println!("| image throughput | {:.1} MB/s |", image_bytes as f64 / sync_s / 1e6);
    println!("| model pushed | {model_mb:.1} MiB to {DEVICES} devices |");
    println!("| host push wall time | {push_s:.2} s |");
    for d in &mut devices {
        d.stop();
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}
