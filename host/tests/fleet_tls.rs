//! The device API over TLS: an `edge run` device serving a self-signed certificate, a host
//! that trusts it (fleet file `tls = { ca_cert = ... }`) syncing from it, and a host that
//! does not trust it getting nothing. The certificate is a committed fixture
//! (`fixtures/tls/make_device_cert.sh` made it).

#![allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.

mod fleet_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_support::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// A fleet file naming `device` at an https URL, trusting `ca_cert` if given.
fn write_tls_fleet(path: &Path, device: &EdgeDevice, ca_cert: Option<&Path>) {
    let mut text = format!(
        "[[device]]\nname = {:?}\nurl = \"https://127.0.0.1:{}\"\ntoken_file = {:?}\n",
        device.name,
        device.port,
        device.dir.join("token").display().to_string()
    );
    if let Some(ca) = ca_cert {
        text += &format!("tls = {{ ca_cert = {:?} }}\n", ca.display().to_string());
    }
    std::fs::write(path, text).unwrap();
}

/// `host fleet status` for the one device of `fleet`: its table row.
fn status_row(data: &Path, fleet: &Path) -> String {
    let out = host(data, &["fleet", "status", "--fleet", fleet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().nth(1).unwrap_or_default().to_string()
}

#[test]
fn a_host_syncs_over_tls_only_when_it_trusts_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("host-data");
    let key = init_keys(&data);
    let frames = write_frames(&root.join("frames"), 8, 160, 120, 0.5);
    let model = write_model(&root.join("models"), "face-v1", 1, &stand_in_onnx(4.0 / 3.0, 0.0, 0));
    let setup = DeviceSetup {
        name: "gate-tls".into(),
        frames,
        model,
        trusted_key: key,
        per_minute: 10,
        fps: 20,
        repeat: true,
    };
    let tls_lines = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        fixture("device.pem").display().to_string(),
        fixture("device.key").display().to_string()
    );
    let device = EdgeDevice::start_with_api(&root.join("devices"), &setup, &tls_lines);
    let trusting = root.join("fleet-trusting.toml");
    write_tls_fleet(&trusting, &device, Some(&fixture("device.pem")));
    let doubting = root.join("fleet-doubting.toml");
    write_tls_fleet(&doubting, &device, None);

    // Up when the trusting host sees it with captures waiting (columns: device,
    // reachable, model version, its number, fps, waiting, ...).
    let start = Instant::now();
    let row = loop {
        let row = status_row(&data, &trusting);
        let columns: Vec<&str> = row.split_whitespace().collect();
        if columns.get(1) == Some(&"yes") && columns.get(5).is_some_and(|w| *w != "0") {
            break row;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "{row}\n{}", device.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(row.contains("face-v1"), "{row}");

    // A host that does not trust the certificate reaches nothing and pulls nothing.
    let row = status_row(&data, &doubting);
    assert!(row.contains(" no "), "{row}");
    assert!(row.to_lowercase().contains("certificate"), "{row}");
    let out = host(&data, &["sync", "--fleet", doubting.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stored_seqs(&data, "gate-tls").is_empty());

    // Plain HTTP to the TLS port gets no answer.
    let plain = http(device.port, "GET", "/v1/status", &[]);
    assert!(!matches!(plain, Ok((200, _))), "plain HTTP answered: {plain:?}");

    // The trusting host pulls the captures, numbered from 1 with no gap.
    let out = host(&data, &["sync", "--fleet", trusting.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stored = stored_seqs(&data, "gate-tls");
    assert!(!stored.is_empty());
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
}
