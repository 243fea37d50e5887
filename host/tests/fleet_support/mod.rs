//! What the fleet tests share: `edge run` devices on loopback ports with folder sources,
//! stand-in ONNX models made in code, a raw HTTP client, and the host binary.
//!
//! The edge binary is looked up beside the host binary (`target/debug/edge`);
//! `cargo test --workspace` builds it, `cargo test -p host` alone needs
//! `cargo build -p edge` first.

#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use image::{ImageFormat, Rgb, RgbImage};
use prost::Message;
use shared::manifest::{sha256_hex, InputSpec, ModelManifest, Precision, TrainingInfo};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The bearer token every test device uses.
pub const TOKEN: &str = "fleet-test-token-0123456789";

/// The host binary under test.
pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_host"))
}

/// The edge binary, built beside the host one.
pub fn edge_bin() -> PathBuf {
    let path = host_bin().with_file_name("edge");
    assert!(path.is_file(), "{} is missing: run `cargo build -p edge` first", path.display());
    path
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `host --data DATA ARGS...`.
pub fn host(data: &Path, args: &[&str]) -> Output {
    let out = Command::new(host_bin())
        .arg("--data")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    out
}

/// `host keys init` in `data`; returns the public key it prints.
pub fn init_keys(data: &Path) -> String {
    let out = host(data, &["keys", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `n` JPEG frames of `w` x `h`, alternating bright and dark, with noise so that
/// no two are alike.
pub fn write_frames(dir: &Path, n: usize, w: u32, h: u32, bright_share: f32) -> PathBuf {
    write_noisy_frames(dir, n, (w, h), bright_share, 30, 0)
}

/// Writes `n` JPEG frames of `size` like [`write_frames`], with noise of +-`noise` levels
/// (it sets how large the JPEGs are) drawn from `seed`, so that two folders written with
/// different seeds share no frame.
pub fn write_noisy_frames(
    dir: &Path,
    n: usize,
    (w, h): (u32, u32),
    bright_share: f32,
    noise: u32,
    seed: u32,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 0x2545_f491_u32 ^ seed.wrapping_mul(0x9e37_79b9);
    let span = 2 * noise + 1;
    for i in 0..n {
        let bright = (i as f32 + 0.5) / n as f32 <= bright_share;
        let base: i32 = if bright { 190 } else { 40 };
        let img = RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = |s: u32| (base + (s % span) as i32 - noise as i32).clamp(0, 255) as u8;
            Rgb([v(state), v(state >> 8), v(state >> 16)])
        });
        img.save_with_format(dir.join(format!("frame-{i:03}.jpg")), ImageFormat::Jpeg).unwrap();
    }
    dir.to_path_buf()
}

fn init(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, ints: &[(&str, i64)]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: ints
            .iter()
            .map(|(n, v)| AttributeProto {
                name: n.to_string(),
                r#type: AttributeType::Int as i32,
                i: *v,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    let t = type_proto::Tensor {
        elem_type: DataType::Float as i32,
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(t)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A stand-in detector with the real interface (`input [1,3,224,224]` -> `score [1,1]`,
/// `bbox [1,4]`): score = sigmoid(`w` x the sum of the channel means + `b`), so with a
/// positive `w` bright frames are faces and dark ones are not. `pad_bytes` of unused
/// weights make the file as large as a real model.
pub fn stand_in_onnx(w: f32, b: f32, pad_bytes: usize) -> Vec<u8> {
    let mut inits = vec![
        init("ws", &[1, 3], &[w, w, w]),
        init("bs", &[1], &[b]),
        init("wb", &[4, 3], &[0.0; 12]),
        init("bb", &[4], &[-1.0, -1.0, 1.0, 1.0]),
    ];
    if pad_bytes > 0 {
        let n = pad_bytes / 4;
        let pad: Vec<f32> = (0..n).map(|i| (i % 251) as f32 * 0.01).collect();
        inits.push(init("pad", &[n as i64], &pad));
    }
    let nodes = vec![
        node("GlobalAveragePool", &["input"], "pool", &[]),
        node("Flatten", &["pool"], "flat", &[("axis", 1)]),
        node("Gemm", &["flat", "ws", "bs"], "s", &[("transB", 1)]),
        node("Sigmoid", &["s"], "score", &[]),
        node("Gemm", &["flat", "wb", "bb"], "b", &[("transB", 1)]),
        node("Sigmoid", &["b"], "bbox", &[]),
    ];
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        producer_name: "fleet-tests".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "stand-in".into(),
            initializer: inits,
            input: vec![value("input", &[1, 3, 224, 224])],
            output: vec![value("score", &[1, 1]), value("bbox", &[1, 4])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Writes `dir/<name>.onnx` and its manifest `dir/<name>.onnx.json`; returns the manifest.
pub fn write_model(dir: &Path, name: &str, number: u64, onnx: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = format!("{name}.onnx");
    std::fs::write(dir.join(&file), onnx).unwrap();
    let manifest = ModelManifest {
        version: name.to_string(),
        version_number: number,
        file,
        sha256: sha256_hex(onnx),
        precision: Precision::Fp32,
        input: InputSpec::default(),
        threshold: 0.5,
        training: TrainingInfo::default(),
        metrics: Default::default(),
        created: "2026-12-03T00:00:00Z".into(),
    };
    let path = dir.join(format!("{name}.onnx.json"));
    std::fs::write(&path, manifest.to_json()).unwrap();
    path
}

/// How a test device is set up.
#[derive(Debug, Clone)]
pub struct DeviceSetup {
    /// Its name.
    pub name: String,
    /// Folder of frames.
    pub frames: PathBuf,
    /// Manifest of the model it starts with.
    pub model: PathBuf,
    /// Public key (hex) it trusts.
    pub trusted_key: String,
    /// Captures it may keep per minute (bounds how many a test sees).
    pub per_minute: u32,
    /// Frames per second read from the folder.
    pub fps: u32,
    /// Play the folder again after its last frame.
    pub repeat: bool,
}

/// One `edge run` process serving its API on a loopback port.
pub struct EdgeDevice {
    /// Its name (also its device id).
    pub name: String,
    /// Its API port.
    pub port: u16,
    /// Its folder (config, token, data).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl EdgeDevice {
    /// Writes the device's config and token under `root/<name>` and starts it.
    pub fn start(root: &Path, setup: &DeviceSetup) -> Self {
        Self::start_with_api(root, setup, "")
    }

    /// [`EdgeDevice::start`] with `api_lines` (TOML) added to the config's `[api]` table.
    pub fn start_with_api(root: &Path, setup: &DeviceSetup, api_lines: &str) -> Self {
        let dir = root.join(&setup.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        let port = free_port();
        let config = format!(
            "[model]\npath = {model:?}\n\
             [source]\npath = {frames:?}\nfps = {fps}\nrepeat = {repeat}\n\
             [capture]\nband = [0.0, 1.0]\nconfident_sample_rate = 0.0\nmax_per_minute = {pm}\n\
             duplicate_distance = 0\nduplicate_history = 0\n\
             [storage]\ndata_dir = {data:?}\nfsync_interval_ms = 0\nmin_free_bytes = 0\n\
             [status]\ninterval_s = 3600\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = {token:?}\ndevice_id = {name:?}\n\
             trusted_keys = [{key:?}]\n{api_lines}",
            model = setup.model.display().to_string(),
            frames = setup.frames.display().to_string(),
            fps = setup.fps,
            repeat = setup.repeat,
            pm = setup.per_minute,
            data = dir.join("data").display().to_string(),
            token = dir.join("token").display().to_string(),
            name = setup.name,
            key = setup.trusted_key,
        );
        std::fs::write(dir.join("edge.toml"), config).unwrap();
        let mut device = Self { name: setup.name.clone(), port, dir, child: None };
        device.spawn();
        device
    }

    /// Starts (again) the process with the device's config and data.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("edge.log"))
            .unwrap();
        let child = Command::new(edge_bin())
            .args(["run", "--config"])
            .arg(self.dir.join("edge.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until `GET /v1/status` answers 200.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("{} exited with {status}:\n{}", self.name, self.log());
                }
            }
            if matches!(http(self.port, "GET", "/v1/status", &[]), Ok((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not answer within 60 s:\n{}", self.name, self.log());
    }

    /// The device's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("edge.log")).unwrap_or_default()
    }

    /// `GET /v1/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http(self.port, "GET", "/v1/status", &[]).unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits until the device holds at least `n` durable captures; returns its last seq.
    pub fn wait_captures(&self, n: u64) -> u64 {
        let start = Instant::now();
        loop {
            let s = self.status();
            if s["captures_stored"].as_u64().unwrap() >= n {
                return s["last_seq"].as_u64().unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{}: only {s}", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `GET /v1/status` reports the camera `state` ("running", "finished").
    pub fn wait_camera(&self, state: &str) {
        let start = Instant::now();
        loop {
            let s = self.status();
            if s["camera"] == state {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{}: {s}", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every sequence number the device holds now.
    pub fn seqs(&self) -> Vec<u64> {
        let (code, body) = http(self.port, "GET", "/v1/captures?after=0&limit=1000", &[]).unwrap();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["captures"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait: the graceful way; returns whether it exited with success.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        false
    }

    /// The device's line for a fleet file.
    pub fn fleet_entry(&self, url_port: u16) -> String {
        format!(
            "[[device]]\nname = {:?}\nurl = \"http://127.0.0.1:{url_port}\"\ntoken_file = {:?}\n",
            self.name,
            self.dir.join("token").display().to_string()
        )
    }
}

impl Drop for EdgeDevice {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A plain HTTP/1.1 request with the test token, on a fresh connection.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut body = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((code, body))
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&bytes[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&bytes[start..start + size]);
        bytes = &bytes[start + size + 2..];
    }
    out
}

/// Writes a fleet file naming `devices` (each reached on the port given beside it).
pub fn write_fleet(path: &Path, devices: &[(&EdgeDevice, u16)]) {
    let text: String = devices.iter().map(|(d, port)| d.fleet_entry(*port)).collect();
    std::fs::write(path, text).unwrap();
}

/// The sequence numbers the host's feedback store holds for `device`, in order, with
/// repeats if there were any.
pub fn stored_seqs(data: &Path, device: &str) -> Vec<u64> {
    let db = rusqlite::Connection::open(data.join("feedback.sqlite")).unwrap();
    // A host killed while creating the store leaves the file without its tables: nothing
    // stored yet.
    let tables: i64 = db
        .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'captures'", [], |r| r.get(0))
        .unwrap();
    if tables == 0 {
        return Vec::new();
    }
    let mut q = db.prepare("SELECT seq FROM captures WHERE device = ?1 ORDER BY seq").unwrap();
    q.query_map([device], |r| r.get::<_, i64>(0)).unwrap().map(|s| s.unwrap() as u64).collect()
}

/// Checks that the host holds, for `device`, exactly the device's captures up to the
/// highest one it stored: none twice, none skipped.
pub fn assert_no_gap_no_duplicate(data: &Path, device: &EdgeDevice) -> usize {
    let stored = stored_seqs(data, &device.name);
    let mut unique = stored.clone();
    unique.dedup();
    assert_eq!(unique.len(), stored.len(), "{}: duplicates in {stored:?}", device.name);
    let last = stored.last().copied().unwrap_or(0);
    let on_device: Vec<u64> = device.seqs().into_iter().filter(|s| *s <= last).collect();
    assert_eq!(stored, on_device, "{}: host and device disagree", device.name);
    stored.len()
}
