//! The fleet: which devices the host talks to (`fleet.toml`), a client for one device's
//! HTTP API, and `host fleet status`.
//!
//! ```toml
//! [[device]]
//! name = "gate-north"
//! url = "http://127.0.0.1:8710"
//! token_file = "tokens/gate-north"      # relative to this file
//!
//! [[device]]
//! name = "gate-south"
//! url = "https://10.0.0.12:8710"
//! token_file = "tokens/gate-south"
//! tls = { ca_cert = "ca.pem" }          # trust this CA (e.g. a self-signed device cert)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use serde::Deserialize;
use shared::protocol::{self, Ack, DeviceStatus, ModelReply, API_PREFIX};
use shared::CaptureRecord;

/// Default fleet file name inside the host data folder.
pub const FLEET_FILE: &str = "fleet.toml";

/// Why the fleet file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The file or a token file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The fleet file.
        path: PathBuf,
        /// The parser's message with the line.
        message: String,
    },
    /// A device table is wrong (duplicate name, bad URL, empty token).
    #[error("{path}: device {device:?}: {problem}")]
    Device {
        /// The fleet file.
        path: PathBuf,
        /// The device's name.
        device: String,
        /// What is wrong.
        problem: String,
    },
    /// `--device NAME` names no device of the fleet.
    #[error("no device named {0:?} in the fleet file (see `host fleet status`)")]
    Unknown(String),
}

/// TLS settings of one device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate (CA or the device's self-signed one) to trust for this device.
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetToml {
    #[serde(default)]
    device: Vec<DeviceToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceToml {
    name: String,
    url: String,
    token_file: PathBuf,
    tls: Option<TlsSettings>,
}

/// One device of the fleet, ready to be called.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its name in the fleet file (and in the feedback store).
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8710`, without a trailing slash.
    pub url: String,
    token: String,
    ca_cert: Option<Vec<u8>>,
}

/// The devices of a fleet file.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// In file order.
    pub devices: Vec<Device>,
}

impl Fleet {
    /// Reads a fleet file; token and certificate paths are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, FleetError> {
        let read = |p: &Path| fs_read(p);
        let text = String::from_utf8_lossy(&read(path)?).into_owned();
        let parsed: FleetToml = toml::from_str(&text)
            .map_err(|e| FleetError::Parse { path: path.into(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut devices: Vec<Device> = Vec::new();
        for d in parsed.device {
            let bad = |problem: String| FleetError::Device {
                path: path.into(),
                device: d.name.clone(),
                problem,
            };
            if devices.iter().any(|o| o.name == d.name) || d.name.trim().is_empty() {
                return Err(bad("names must be unique and not empty".into()));
            }
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                return Err(bad(format!("url {:?} must start with http:// or https://", d.url)));
            }
            let token =
                String::from_utf8_lossy(&read(&base.join(&d.token_file))?).trim().to_string();
            if token.is_empty() {
                return Err(bad(format!("token file {} is empty", d.token_file.display())));
            }
            let ca_cert = match d.tls.as_ref().and_then(|t| t.ca_cert.as_ref()) {
                Some(p) => Some(read(&base.join(p))?),
                None => None,
            };
            let url = d.url.trim_end_matches('/').to_string();
            devices.push(Device { name: d.name, url, token, ca_cert });
        }
        Ok(Self { devices })
    }

    /// The devices named, in the order given; all of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<Device>, FleetError> {
        if names.is_empty() {
            return Ok(self.devices.clone());
        }
        names
            .iter()
            .map(|n| {
                self.devices
                    .iter()
                    .find(|d| &d.name == n)
                    .cloned()
                    .ok_or_else(|| FleetError::Unknown(n.clone()))
            })
            .collect()
    }
}

fn fs_read(path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::Read { path: path.into(), source })
}

/// The `--fleet` option shared by `host sync`, `host push` and `host fleet`.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArg {
    /// Fleet file; default: fleet.toml in the data folder.
    #[arg(long, value_name = "FILE", env = "FDET_FLEET", global = true)]
    pub fleet: Option<PathBuf>,
}

impl FleetArg {
    /// Loads the fleet file named, or the default one in `data`.
    pub fn load(&self, data: &Path) -> Result<Fleet> {
        let path = self.fleet.clone().unwrap_or_else(|| data.join(FLEET_FILE));
        Fleet::load(&path).with_context(|| {
            format!("loading the fleet (write {} or pass --fleet FILE)", path.display())
        })
    }
}

/// How a call to a device failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused or reset, timeout, TLS failure.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The device answered with an error status and its reason.
    #[error("{status}: {reason}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The device's sentence.
        reason: String,
    },
    /// The device answered something this host cannot read.
    #[error("bad answer: {0}")]
    Protocol(String),
}

/// A client for one device's API.
#[derive(Debug, Clone)]
pub struct DeviceClient {
    /// The device.
    pub device: Device,
    http: reqwest::Client,
}

impl DeviceClient {
    /// A client with connect and request timeouts; `request_timeout` bounds the slowest
    /// call (a model push with its self-test on the device).
    pub fn new(device: &Device, request_timeout: Duration) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(request_timeout)
            .pool_max_idle_per_host(8)
            .no_proxy();
        if let Some(pem) = &device.ca_cert {
            let cert = reqwest::Certificate::from_pem(pem).with_context(|| {
                format!("device {}: tls.ca_cert is not a PEM certificate", device.name)
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self { device: device.clone(), http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.device.url)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        let response = request
            .header(AUTHORIZATION, format!("Bearer {}", self.device.token))
            .send()
            .await
            .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            // The device says nothing more on purpose; the usual cause is on this side.
            let reason = "the device did not accept the token: the fleet file's token_file \
                          must hold what the device's api.token_file holds"
                .to_string();
            return Err(CallError::Refused { status, reason });
        }
        let body = response.bytes().await.unwrap_or_default();
        let reason = serde_json::from_slice::<protocol::ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        Err(CallError::Refused { status, reason })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
    ) -> Result<T, CallError> {
        let bytes = response.bytes().await.map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Protocol(e.to_string()))
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<DeviceStatus, CallError> {
        Self::json(self.send(self.http.get(self.url("/status"))).await?).await
    }

    /// `GET /v1/captures` as a postcard stream: records after `after`, and the device's
    /// highest sequence number.
    pub async fn captures(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<CaptureRecord>, Option<u64>), CallError> {
        let url = self.url(&format!("/captures?after={after}&limit={limit}"));
        let response =
            self.send(self.http.get(url).header(ACCEPT, protocol::POSTCARD_STREAM)).await?;
        let last_seq = response
            .headers()
            .get(protocol::LAST_SEQ_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = response.bytes().await.map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        let records = protocol::decode_record_stream(&bytes)
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        if records.windows(2).any(|w| w[0].seq >= w[1].seq)
            || records.first().is_some_and(|r| r.seq <= after)
        {
            return Err(CallError::Protocol("records out of sequence order".into()));
        }
        Ok((records, last_seq))
    }

    /// `GET /v1/captures/{seq}/image`.
    pub async fn image(&self, seq: u64) -> Result<Vec<u8>, CallError> {
        let response =
            self.send(self.http.get(self.url(&format!("/captures/{seq}/image")))).await?;
        let bytes = response.bytes().await.map_err(|e| CallError::Unreachable(error_chain(&e)))?;
        Ok(bytes.to_vec())
    }

    /// `POST /v1/captures/ack`; returns the acknowledgement now in force.
    pub async fn ack(&self, seq: u64) -> Result<u64, CallError> {
        let request = self.http.post(self.url("/captures/ack")).json(&Ack { seq });
        Ok(Self::json::<Ack>(self.send(request).await?).await?.seq)
    }

    /// `PUT /v1/model` with a bundle's bytes.
    pub async fn put_model(&self, bundle: Vec<u8>) -> Result<ModelReply, CallError> {
        let request = self.http.put(self.url("/model")).body(bundle);
        Self::json(self.send(request).await?).await
    }

    /// `POST /v1/model/rollback`.
    pub async fn rollback(&self) -> Result<ModelReply, CallError> {
        Self::json(self.send(self.http.post(self.url("/model/rollback"))).await?).await
    }
}

/// An error with its causes, one line (reqwest hides the interesting part in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `host fleet ...`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
    #[command(flatten)]
    fleet: FleetArg,
}

#[derive(Debug, clap::Subcommand)]
enum FleetCommand {
    /// A table of devices: reachable, model, fps, captures waiting, disk free, last sync.
    Status {
        /// Only these devices (repeatable); default all.
        #[arg(long = "device", value_name = "NAME")]
        devices: Vec<String>,
    },
}

/// Runs `host fleet ...`.
pub fn run(args: FleetArgs, data: &Path) -> Result<()> {
    let fleet = args.fleet.load(data)?;
    match args.command {
        FleetCommand::Status { devices } => {
            let devices = fleet.select(&devices)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let rows = runtime.block_on(statuses(&devices))?;
            print_status_table(&rows);
            Ok(())
        }
    }
}

async fn statuses(devices: &[Device]) -> Result<Vec<(String, Result<DeviceStatus, CallError>)>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, device) in devices.iter().enumerate() {
        let client = DeviceClient::new(device, Duration::from_secs(10))?;
        tasks.spawn(async move { (i, client.device.name.clone(), client.status().await) });
    }
    let mut rows = Vec::new();
    while let Some(done) = tasks.join_next().await {
        rows.push(done.context("status task")?);
    }
    rows.sort_by_key(|(i, _, _)| *i);
    Ok(rows.into_iter().map(|(_, name, status)| (name, status)).collect())
}

/// The table is the command's output, so it goes to stdout.
#[allow(clippy::print_stdout)]
fn print_status_table(rows: &[(String, Result<DeviceStatus, CallError>)]) {
    println!(
        "{:<16} {:<11} {:<20} {:>6} {:>8} {:>10} {:<20}",
        "device", "reachable", "model", "fps", "waiting", "disk free", "last sync"
    );
    for (name, status) in rows {
        match status {
            Ok(s) => println!(
                "{:<16} {:<11} {:<20} {:>6.1} {:>8} {:>10} {:<20}",
                name,
                "yes",
                format!("{} (#{})", s.model_version, s.model_version_number),
                s.fps,
                s.last_seq.unwrap_or(0).saturating_sub(s.acked_seq),
                s.free_disk_bytes.map_or("?".into(), human_bytes),
                s.last_sync_ms.map_or("never".into(), ago),
            ),
            Err(e) => println!("{name:<16} {:<11} {e}", "no"),
        }
    }
}

fn human_bytes(b: u64) -> String {
    let gib = b as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_devices_with_relative_token_files() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a.token", "secret-a\n");
        write(tmp.path(), "b.token", "secret-b");
        let path = write(
            tmp.path(),
            "fleet.toml",
            "[[device]]\nname = \"a\"\nurl = \"http://127.0.0.1:8710/\"\ntoken_file = \"a.token\"\n\
             [[device]]\nname = \"b\"\nurl = \"http://127.0.0.1:8711\"\ntoken_file = \"b.token\"\n",
        );
        let fleet = Fleet::load(&path).unwrap();
        assert_eq!(fleet.devices.len(), 2);
        assert_eq!(fleet.devices[0].url, "http://127.0.0.1:8710");
        assert_eq!(fleet.devices[0].token, "secret-a");
        assert_eq!(fleet.select(&["b".into()]).unwrap()[0].name, "b");
        assert!(matches!(fleet.select(&["c".into()]), Err(FleetError::Unknown(_))));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "t", "x");
        let dup = write(
            tmp.path(),
            "dup.toml",
            "[[device]]\nname = \"a\"\nurl = \"http://h:1\"\ntoken_file = \"t\"\n\
             [[device]]\nname = \"a\"\nurl = \"http://h:2\"\ntoken_file = \"t\"\n",
        );
        assert!(Fleet::load(&dup).unwrap_err().to_string().contains("unique"));
        let url = write(
            tmp.path(),
            "u.toml",
            "[[device]]\nname = \"a\"\nurl = \"h:1\"\ntoken_file = \"t\"\n",
        );
        assert!(Fleet::load(&url).unwrap_err().to_string().contains("http://"));
        let key = write(
            tmp.path(),
            "k.toml",
            "[[device]]\nname = \"a\"\nurl = \"http://h\"\ntoken = \"t\"\n",
        );
        assert!(matches!(Fleet::load(&key), Err(FleetError::Parse { .. })));
        let missing = write(
            tmp.path(),
            "m.toml",
            "[[device]]\nname = \"a\"\nurl = \"http://h\"\ntoken_file = \"nope\"\n",
        );
        assert!(Fleet::load(&missing).unwrap_err().to_string().contains("nope"));
    }
}
