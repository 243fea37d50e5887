//! Faults during sync and swap, on loopback: a proxy that cuts connections after N bytes,
//! the host killed mid-sync, a device killed mid-swap. After each: nothing lost, nothing
//! stored twice, and the device runs a model that loads.

#![allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.

mod fleet_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_support::*;

fn one_device(root: &Path, per_minute: u32, frame_side: u32) -> (EdgeDevice, String) {
    let data = root.join("host-data");
    let out = host(&data, &["keys", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let frames = write_frames(&root.join("frames"), 16, frame_side, frame_side * 3 / 4, 0.5);
    let model = write_model(&root.join("models"), "face-v1", 1, &stand_in_onnx(4.0 / 3.0, 0.0, 0));
    let setup = DeviceSetup {
        name: "cam".into(),
        frames,
        model,
        trusted_key: key.clone(),
        per_minute,
        fps: 200,
        repeat: true,
    };
    let mut device = EdgeDevice::start(&root.join("devices"), &setup);
    device.wait_ready();
    (device, key)
}

/// Forwards connections to `upstream`, cutting the `i`-th after `cuts[i]` bytes sent back
/// to the client; connections past the end of `cuts` go through whole, so that a sync
/// that keeps retrying finishes while the device keeps capturing.
fn cutting_proxy(upstream: u16, cuts: Vec<usize>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut_count = Arc::new(AtomicUsize::new(0));
    let counter = cut_count.clone();
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let budget = cuts.get(i).copied().unwrap_or(usize::MAX);
            let counter = counter.clone();
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pump(c2, s2, usize::MAX));
            std::thread::spawn(move || {
                if pump(server, client, budget) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (port, cut_count)
}

/// Copies `from` to `to` until EOF or `budget` bytes; true when it cut the connection.
fn pump(mut from: TcpStream, mut to: TcpStream, budget: usize) -> bool {
    let mut sent = 0;
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let allowed = n.min(budget - sent);
        if to.write_all(&buf[..allowed]).is_err() {
            break;
        }
        sent += allowed;
        if sent >= budget {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return true;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    false
}

#[test]
fn connections_cut_mid_stream_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("host-data");
    let (device, _) = one_device(tmp.path(), 60, 240);
    device.wait_captures(60);
    let budgets = [150, 900, 5_000, 20_000, 70_000, 160_000];
    let (proxy, cuts) = cutting_proxy(device.port, budgets.repeat(3));
    let fleet = tmp.path().join("fleet.toml");
    write_fleet(&fleet, &[(&device, proxy)]);

    let mut failures = 0;
    for attempt in 0..60 {
        let out = host(&data, &["sync", "--fleet", fleet.to_str().unwrap(), "--page", "7"]);
        assert_no_gap_no_duplicate(&data, &device);
        if out.status.success() {
            break;
        }
        failures += 1;
        assert!(attempt < 59, "sync never got through the proxy:\n{}", text(&out));
    }
    assert!(failures > 0 && cuts.load(Ordering::SeqCst) > 0, "the proxy never cut a connection");
    let stored = assert_no_gap_no_duplicate(&data, &device);
    assert!(stored >= 60, "{stored} stored");
}

#[test]
fn host_killed_mid_sync_resumes_without_gap_or_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("host-data");
    let (device, _) = one_device(tmp.path(), 400, 480);
    device.wait_captures(300);
    let fleet = tmp.path().join("fleet.toml");
    write_fleet(&fleet, &[(&device, device.port)]);

    let mut progress = Vec::new();
    for i in 0..8u64 {
        let mut child = Command::new(host_bin())
            .args(["--data", data.to_str().unwrap(), "sync", "--fleet", fleet.to_str().unwrap()])
            .args(["--page", "10", "--parallel-images", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + i * 60));
        child.kill().unwrap();
        child.wait().unwrap();
        progress.push(assert_no_gap_no_duplicate(&data, &device));
    }
    let out = host(&data, &["sync", "--fleet", fleet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stored = assert_no_gap_no_duplicate(&data, &device);
    assert!(stored >= 300, "{stored} stored; after each kill: {progress:?}");
    // The kills landed mid-sync: some runs had stored part of the captures.
    assert!(progress.iter().any(|n| *n > 0 && *n < stored), "{progress:?}");
}

#[test]
fn device_killed_mid_swap_always_comes_back_with_a_loadable_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("host-data");
    let (mut device, _) = one_device(tmp.path(), 20, 160);
    device.wait_captures(8);
    let key = shared::bundle::signing_key_from_hex(
        &std::fs::read_to_string(data.join("keys/signing.key")).unwrap(),
    )
    .unwrap();

    let mut active = 1u64;
    let mut seen = std::collections::BTreeSet::new();
    // At least 10 kills, and on until some landed on each side of the swap: on a loaded
    // machine the swap takes longer, so later kills wait longer (up to 2.4 s).
    for i in 0..40u64 {
        if i >= 10 && seen.len() == 2 {
            break;
        }
        let number = active + 1;
        // 4 MB models, so that writing and syncing them takes a while to land a kill in.
        let onnx = stand_in_onnx(4.0 / 3.0, 0.01 * number as f32, 4 << 20);
        let manifest =
            write_model(&tmp.path().join("models"), &format!("face-v{number}"), number, &onnx);
        let json = std::fs::read(&manifest).unwrap();
        let bundle = shared::bundle::Bundle::sign(json, onnx, &key).unwrap().to_bytes();
        let port = device.port;
        let pusher = std::thread::spawn(move || http(port, "PUT", "/v1/model", &bundle));
        std::thread::sleep(Duration::from_millis(30 + (i * 97) % 400 + (i / 10) * 650));
        device.kill9();
        let _ = pusher.join().unwrap();

        device.spawn();
        device.wait_ready();
        let now = device.status()["model_version_number"].as_u64().unwrap();
        assert!(
            now == active || now == number,
            "after kill {i}: version {now}, expected {active} or {number}"
        );
        seen.insert(now == number);
        active = now;
    }
    // Some kills landed before the swap and some after it.
    assert_eq!(seen.len(), 2, "every kill landed on the same side of the swap");
    assert!(device.stop(), "{}", device.log());
}

#[test]
fn a_wiped_device_is_refused_not_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("host-data");
    let (mut device, _) = one_device(tmp.path(), 600, 120);
    device.wait_captures(40);
    let fleet = tmp.path().join("fleet.toml");
    write_fleet(&fleet, &[(&device, device.port)]);
    let out = host(&data, &["sync", "--fleet", fleet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let host_has = *stored_seqs(&data, &device.name).last().unwrap();

    // Same name and address, fresh capture log: its numbers start again from 1.
    assert!(device.stop());
    std::fs::remove_dir_all(device.dir.join("data")).unwrap();
    device.spawn();
    device.wait_ready();
    device.wait_captures(3);
    let out = host(&data, &["sync", "--fleet", fleet.to_str().unwrap()]);
    assert!(!out.status.success(), "a diverged device must fail the sync");
    assert!(text(&out).contains("wiped"), "{}", text(&out));
    let status = device.status();
    assert_eq!(status["acked_seq"], 0, "nothing may be acknowledged: {status}");
    assert_eq!(*stored_seqs(&data, &device.name).last().unwrap(), host_has);
}
