//! Fleet benchmark on loopback: captures per second pulled by `host sync` from 10
//! `edge run` devices (the mean image size is printed), and the time `host push` takes to bring a
//! 4 MB model to all 10 (sign, send, verify, load, self-test, swap). Prints a table.
//!
//! `cargo bench -p host --bench fleet` (builds `edge` first: `cargo build -p edge`).
//! `FLEET_BENCH_CAPTURES` sets captures per device (default 200; 10 under `cargo test`).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

#[path = "../tests/fleet_support/mod.rs"]
mod fleet_support;

use std::time::Instant;

use fleet_support::*;

const DEVICES: usize = 10;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` passes nothing and gets a
    // quick pass that proves the bench still runs.
    let quick = !std::env::args().any(|a| a == "--bench");
    let per_device: u64 = std::env::var("FLEET_BENCH_CAPTURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10 } else { 200 });
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("host-data");
    let key = init_keys(&data);
    // Every device gets frames of its own, one per capture, so that no two captures share
    // an image: the host stores images by content, and repeated frames would be written
    // once and make the store look cheaper than a real fleet's. 640x480 noisy frames
    // re-encode on the device to about 50 KB, a VGA camera frame's size.
    let frame_count = usize::try_from(per_device).unwrap();
    let frames: Vec<_> = (0..DEVICES)
        .map(|i| {
            let dir = root.join(format!("frames-{i:02}"));
            write_noisy_frames(&dir, frame_count, (640, 480), 0.5, 12, i as u32 + 1)
        })
        .collect();
    let v1 = write_model(&root.join("models"), "face-v1", 1, &stand_in_onnx(4.0 / 3.0, 0.0, 0));
    let mut devices: Vec<EdgeDevice> = (0..DEVICES)
        .map(|i| {
            let setup = DeviceSetup {
                name: format!("cam-{i:02}"),
                frames: frames[i].clone(),
                model: v1.clone(),
                trusted_key: key.clone(),
                per_minute: per_device as u32,
                fps: 100,
                // Played once: the devices then only serve, as they would on their own
                // machines, instead of decoding frames on the cores the host syncs with.
                repeat: false,
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
    // Wait for every device to reach its last frame (detection idle).
    for d in &devices {
        d.wait_camera("finished");
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
