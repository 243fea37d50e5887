//! `host push` and `host rollback`: sign a model and send it to devices, or send them
//! back to their previous model. Each device answers for itself; the command reports
//! accepted (new version), refused (the device's reason) or unreachable, per device, and
//! exits non-zero unless every device accepted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shared::bundle::Bundle;
use shared::protocol::ModelReply;
use shared::ModelManifest;

use crate::fleet::{CallError, Device, DeviceClient, FleetArg};
use crate::keys;

/// `host push` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// The model's manifest (`models/<name>.json` or `<name>.int8.json` from `host
    /// export`); the ONNX file it names sits beside it.
    #[arg(long, value_name = "FILE.json")]
    pub model: PathBuf,
    /// Only these devices (repeatable); default: every device of the fleet.
    #[arg(long = "device", value_name = "NAME")]
    pub devices: Vec<String>,
    /// Signing key; default: keys/signing.key in the data folder (`host keys init`).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub fleet: FleetArg,
}

/// `host rollback` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RollbackArgs {
    /// Only these devices (repeatable); default: every device of the fleet.
    #[arg(long = "device", value_name = "NAME")]
    pub devices: Vec<String>,
    #[command(flatten)]
    pub fleet: FleetArg,
}

/// What one device said.
#[derive(Debug)]
pub enum Outcome {
    /// The device runs the model now.
    Accepted(ModelReply),
    /// The device answered no, with its reason.
    Refused(String),
    /// The device could not be reached.
    Unreachable(String),
}

impl From<Result<ModelReply, CallError>> for Outcome {
    fn from(r: Result<ModelReply, CallError>) -> Self {
        match r {
            Ok(reply) => Outcome::Accepted(reply),
            Err(CallError::Refused { status, reason }) => {
                Outcome::Refused(format!("{} {reason}", status.as_u16()))
            }
            Err(e @ CallError::Protocol(_)) => Outcome::Refused(e.to_string()),
            Err(CallError::Unreachable(e)) => Outcome::Unreachable(e),
        }
    }
}

/// Reads the manifest and its model, and signs them into a bundle.
pub fn sign_bundle(manifest_path: &Path, key_path: &Path) -> Result<Bundle> {
    let manifest_json = std::fs::read(manifest_path)
        .with_context(|| format!("{}: cannot read the model manifest", manifest_path.display()))?;
    let manifest = ModelManifest::from_json(&manifest_json).with_context(|| {
        format!(
            "{}: not a model manifest (pass the .json beside the .onnx)",
            manifest_path.display()
        )
    })?;
    let onnx_path = manifest_path.with_file_name(&manifest.file);
    let onnx = std::fs::read(&onnx_path).with_context(|| {
        format!("{}: cannot read the model the manifest names", onnx_path.display())
    })?;
    let key = keys::load_signing_key(key_path)?;
    Bundle::sign(manifest_json, onnx, &key)
        .with_context(|| format!("{}: refusing to sign", manifest_path.display()))
}

/// Runs `host push`.
pub fn run(args: PushArgs, data: &Path) -> Result<()> {
    let key =
        args.key.clone().unwrap_or_else(|| keys::default_dir(data).join(keys::PRIVATE_KEY_FILE));
    let bundle = sign_bundle(&args.model, &key)?;
    let m = &bundle.manifest;
    tracing::info!(
        version = %m.version,
        number = m.version_number,
        bytes = bundle.onnx.len(),
        "model signed"
    );
    let devices = args.fleet.load(data)?.select(&args.devices)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let sha256 = bundle.manifest.sha256.clone();
    let outcomes = runtime.block_on(push_all(&devices, bundle.to_bytes(), sha256))?;
    report(&outcomes)
}

/// Runs `host rollback`.
pub fn run_rollback(args: RollbackArgs, data: &Path) -> Result<()> {
    let devices = args.fleet.load(data)?.select(&args.devices)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcomes =
        runtime.block_on(on_all(&devices, |client| async move { client.rollback().await }))?;
    report(&outcomes)
}

/// Sends `bundle` (whose ONNX file has `sha256`) to every device at once; returns each
/// outcome and how long it took.
///
/// A device installs before it answers, so an answer lost on the way (connection cut,
/// timeout) does not mean the push failed: such a device is asked for its status, and if
/// it runs the pushed model now, it counts as accepted.
pub async fn push_all(
    devices: &[Device],
    bundle: Vec<u8>,
    sha256: String,
) -> Result<Vec<(String, Outcome, Duration)>> {
    let bundle = Arc::new(bundle);
    let sha256 = Arc::new(sha256);
    on_all(devices, move |client| {
        let bundle = bundle.clone();
        let sha256 = sha256.clone();
        async move {
            match client.put_model(bundle.as_ref().clone()).await {
                Err(CallError::Unreachable(lost)) => confirm(&client, &sha256, lost).await,
                answered => answered,
            }
        }
    })
    .await
}

/// After a lost answer: accepted if the device's status shows the model `sha256`, else
/// the original `lost` error.
async fn confirm(
    client: &DeviceClient,
    sha256: &str,
    lost: String,
) -> Result<ModelReply, CallError> {
    let status = match client.status().await {
        Ok(status) if status.model_sha256.as_deref() == Some(sha256) => status,
        // A device that refuses the token answers before reading the bundle and closes
        // the connection, so the PUT looks cut; its answer to the status says why.
        Err(refused @ CallError::Refused { .. }) => return Err(refused),
        _ => return Err(CallError::Unreachable(lost)),
    };
    tracing::warn!(
        device = %client.device.name,
        version = %status.model_version,
        lost = %lost,
        "the device's answer to the push was lost, but its status shows the new model"
    );
    Ok(ModelReply {
        version: status.model_version,
        version_number: status.model_version_number,
        sha256: sha256.to_string(),
        replaced: None,
    })
}

async fn on_all<F, Fut>(devices: &[Device], call: F) -> Result<Vec<(String, Outcome, Duration)>>
where
    F: Fn(DeviceClient) -> Fut,
    Fut: std::future::Future<Output = Result<ModelReply, CallError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (i, device) in devices.iter().enumerate() {
        // A device checks and self-tests the model before answering: allow it minutes.
        let client = DeviceClient::new(device, Duration::from_secs(600))?;
        let name = device.name.clone();
        let fut = call(client);
        tasks.spawn(async move {
            let start = Instant::now();
            let outcome = Outcome::from(fut.await);
            (i, name, outcome, start.elapsed())
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.push(done.context("push task")?);
    }
    out.sort_by_key(|(i, ..)| *i);
    Ok(out.into_iter().map(|(_, name, outcome, took)| (name, outcome, took)).collect())
}

/// Prints one line per device; an error unless all accepted.
#[allow(clippy::print_stdout)] // The per-device lines are the command's output.
fn report(outcomes: &[(String, Outcome, Duration)]) -> Result<()> {
    for (device, outcome, took) in outcomes {
        let s = took.as_secs_f64();
        match outcome {
            Outcome::Accepted(r) => {
                let replaced = r.replaced.as_deref().unwrap_or("none");
                println!(
                    "{device:<16} accepted     {} (#{}, replaced {replaced}) {s:.1} s",
                    r.version, r.version_number
                );
            }
            Outcome::Refused(reason) => println!("{device:<16} refused      {reason}"),
            Outcome::Unreachable(reason) => println!("{device:<16} unreachable  {reason}"),
        }
    }
    let failed = outcomes.iter().filter(|(_, o, _)| !matches!(o, Outcome::Accepted(_))).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} devices did not take the change", outcomes.len());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use shared::protocol::DeviceStatus;

    use super::*;
    use crate::fleet::Fleet;

    /// A device on a loopback port that cuts every `PUT` before answering and reports
    /// `active_sha256` as its model on `GET /v1/status`, or, without one, refuses the
    /// token there with a 401.
    fn cutting_device(dir: &Path, active_sha256: Option<&str>) -> Device {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = DeviceStatus {
            device_id: "gate-west".into(),
            model_version: "2026-12-04-2".into(),
            model_version_number: 2,
            model_sha256: active_sha256.map(String::from),
            uptime_s: 1,
            fps: 0.0,
            inference_ms: 0.0,
            captures_stored: 0,
            capture_bytes: 0,
            last_seq: None,
            acked_seq: 0,
            free_disk_bytes: None,
            last_sync_ms: None,
            camera: "running".into(),
            capture: "active".into(),
        };
        let body = serde_json::to_vec(&status).unwrap();
        let active_sha256 = active_sha256.map(String::from);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut head = [0u8; 1024];
                let n = stream.read(&mut head).unwrap_or(0);
                let asks_status = head[..n].starts_with(b"GET /v1/status");
                if asks_status && active_sha256.is_none() {
                    let reply = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\
                                 connection: close\r\n\r\n";
                    let _ = stream.write_all(reply.as_bytes());
                } else if asks_status {
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes());
                    let _ = stream.write_all(&body);
                }
                // Anything else: dropped without a word, as a cut cable would.
            }
        });
        std::fs::write(dir.join("token"), "fleet-test-token-0123456789").unwrap();
        let fleet = dir.join("fleet.toml");
        let text = format!(
            "[[device]]\nname = \"gate-west\"\nurl = \"http://127.0.0.1:{port}\"\n\
             token_file = \"token\"\n"
        );
        std::fs::write(&fleet, text).unwrap();
        Fleet::load(&fleet).unwrap().devices.remove(0)
    }

    fn push_to(device: Device, sha256: &str) -> Outcome {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut outcomes =
            runtime.block_on(push_all(&[device], b"bundle".to_vec(), sha256.to_string())).unwrap();
        outcomes.remove(0).1
    }

    #[test]
    fn a_lost_answer_counts_as_accepted_when_the_status_shows_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let device = cutting_device(dir.path(), Some("ab12"));

        match push_to(device, "ab12") {
            Outcome::Accepted(reply) => {
                assert_eq!((reply.version_number, reply.sha256.as_str()), (2, "ab12"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lost_answer_stays_unreachable_when_the_device_runs_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let device = cutting_device(dir.path(), Some("ab12"));

        let outcome = push_to(device, "cd34");

        assert!(matches!(outcome, Outcome::Unreachable(_)), "{outcome:?}");
    }

    #[test]
    fn a_cut_push_to_a_device_that_refuses_the_token_is_refused_not_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let device = cutting_device(dir.path(), None);

        match push_to(device, "ab12") {
            Outcome::Refused(reason) => assert!(reason.starts_with("401"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
