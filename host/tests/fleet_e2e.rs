//! The fleet end to end on loopback: three `edge run` devices with folder sources on
//! their own ports, one host syncing them, pushing a good model, then bad ones (wrong
//! key, a file tract cannot load, a tampered bundle, an older version), then rolling
//! back. Everything listens on 127.0.0.1 only.

#![allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.

mod fleet_support;

use std::path::Path;

use fleet_support::*;

/// Three devices, 20 captures each, running model v1 from `root/models`.
fn three_devices(root: &Path, key: &str) -> Vec<EdgeDevice> {
    let frames = write_frames(&root.join("frames"), 12, 160, 120, 0.75);
    let v1 = write_model(&root.join("models"), "face-v1", 1, &stand_in_onnx(4.0 / 3.0, 0.0, 0));
    let devices: Vec<EdgeDevice> = ["gate-north", "gate-south", "loading-bay"]
        .iter()
        .map(|name| {
            let setup = DeviceSetup {
                name: name.to_string(),
                frames: frames.clone(),
                model: v1.clone(),
                trusted_key: key.to_string(),
                per_minute: 20,
                fps: 40,
                repeat: true,
            };
            EdgeDevice::start(&root.join("devices"), &setup)
        })
        .collect();
    devices
}

fn keys_init(data: &Path, dir: &Path) -> String {
    let out = host(data, &["keys", "init", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn push(data: &Path, fleet: &Path, manifest: &Path, extra: &[&str]) -> std::process::Output {
    let mut args =
        vec!["push", "--fleet", fleet.to_str().unwrap(), "--model", manifest.to_str().unwrap()];
    args.extend_from_slice(extra);
    host(data, &args)
}

/// The push report's line for each device.
fn lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

#[test]
fn sync_push_refuse_rollback_on_three_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("host-data");
    let key = keys_init(&data, &data.join("keys"));
    let mut devices = three_devices(root, &key);
    for d in &mut devices {
        d.wait_ready();
        d.wait_captures(20);
    }
    let fleet = root.join("fleet.toml");
    write_fleet(&fleet, &devices.iter().map(|d| (d, d.port)).collect::<Vec<_>>());

    // Sync: every capture lands once, and the devices learn it through the ack.
    let out = host(&data, &["sync", "--fleet", fleet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for d in &devices {
        let n = assert_no_gap_no_duplicate(&data, d);
        assert!(n >= 20, "{}: {n} captures stored", d.name);
        let s = d.status();
        assert!(s["acked_seq"].as_u64().unwrap() >= 20, "{s}");
        assert!(s["last_sync_ms"].as_i64().is_some(), "{s}");
    }
    // A second sync finds nothing new to duplicate.
    let before: Vec<usize> = devices.iter().map(|d| stored_seqs(&data, &d.name).len()).collect();
    let out = host(&data, &["sync", "--fleet", fleet.to_str().unwrap(), "--device", "gate-north"]);
    assert!(out.status.success(), "{}", text(&out));
    for (d, n) in devices.iter().zip(before) {
        assert!(stored_seqs(&data, &d.name).len() >= n);
        assert_no_gap_no_duplicate(&data, d);
    }

    let models = root.join("models");
    // A good model: same decisions on the reference frames, newer version.
    let v2 = write_model(&models, "face-v2", 2, &stand_in_onnx(4.0 / 3.0, 0.2, 0));
    let out = push(&data, &fleet, &v2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        lines(&out).iter().filter(|l| l.contains("accepted") && l.contains("face-v2")).count(),
        3
    );
    for d in &devices {
        assert_eq!(d.status()["model_version"], "face-v2");
    }

    // Signed by a key the devices do not trust.
    let stranger = root.join("stranger-keys");
    keys_init(&data, &stranger);
    let v3 = write_model(&models, "face-v3", 3, &stand_in_onnx(4.0 / 3.0, 0.1, 0));
    let key_file = stranger.join("signing.key");
    let out = push(&data, &fleet, &v3, &["--key", key_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        lines(&out)
            .iter()
            .filter(|l| l.contains("refused") && l.contains("does not trust"))
            .count(),
        3,
        "{}",
        text(&out)
    );

    // A file tract cannot load, properly signed.
    let junk = write_model(&models, "face-junk", 3, b"\x08\x07 definitely not onnx");
    let out = push(&data, &fleet, &junk, &[]);
    assert_eq!(
        lines(&out).iter().filter(|l| l.contains("refused") && l.contains("does not load")).count(),
        3,
        "{}",
        text(&out)
    );

    // A model that decides the opposite way on the reference frames.
    let flipped = write_model(&models, "face-flipped", 3, &stand_in_onnx(-4.0 / 3.0, 0.0, 0));
    let out = push(&data, &fleet, &flipped, &["--device", "gate-south"]);
    assert!(lines(&out)[0].contains("self-test"), "{}", text(&out));

    // An older version than the one running.
    let v1 = models.join("face-v1.onnx.json");
    let out = push(&data, &fleet, &v1, &["--device", "loading-bay"]);
    assert!(
        lines(&out)[0].contains("refused") && lines(&out)[0].contains("not newer"),
        "{}",
        text(&out)
    );

    // A bundle damaged on the way: the model bytes no longer match the signed hash.
    let bundle_bytes = signed_bundle_bytes(&data.join("keys/signing.key"), &v3);
    let mut damaged = bundle_bytes.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x55;
    let (code, body) = http(devices[0].port, "PUT", "/v1/model", &damaged).unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("sha256"));

    // Still v2 everywhere, and the unreachable case is reported as such.
    for d in &devices {
        assert_eq!(d.status()["model_version"], "face-v2");
    }
    devices[2].kill9();
    let out = push(&data, &fleet, &v3, &[]);
    let report = lines(&out);
    assert!(report[0].contains("accepted") && report[1].contains("accepted"), "{}", text(&out));
    assert!(report[2].contains("unreachable"), "{}", text(&out));

    // Back to v2 on the two that took v3.
    let fleet_arg = fleet.to_str().unwrap();
    let out = host(
        &data,
        &["rollback", "--fleet", fleet_arg, "--device", "gate-north", "--device", "gate-south"],
    );
    assert!(out.status.success(), "{}", text(&out));
    for d in &devices[..2] {
        let s = d.status();
        assert_eq!(
            (s["model_version"].as_str(), s["model_version_number"].as_u64()),
            (Some("face-v2"), Some(2))
        );
    }
    // The restarted third device comes back with the v2 it had adopted.
    devices[2].spawn();
    devices[2].wait_ready();
    assert_eq!(devices[2].status()["model_version"], "face-v2");

    let out = host(&data, &["fleet", "status", "--fleet", fleet_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        table.lines().filter(|l| l.contains(" yes ") && l.contains("face-v2")).count(),
        3,
        "{table}"
    );

    for d in &mut devices {
        assert!(d.stop(), "{} did not stop cleanly:\n{}", d.name, d.log());
    }
}

/// The bundle `host push` would send, made here so that the test can damage it.
fn signed_bundle_bytes(key: &Path, manifest: &Path) -> Vec<u8> {
    let key_hex = std::fs::read_to_string(key).unwrap();
    let key = shared::bundle::signing_key_from_hex(&key_hex).unwrap();
    let json = std::fs::read(manifest).unwrap();
    let m = shared::ModelManifest::from_json(&json).unwrap();
    let onnx = std::fs::read(manifest.with_file_name(&m.file)).unwrap();
    shared::bundle::Bundle::sign(json, onnx, &key).unwrap().to_bytes()
}
