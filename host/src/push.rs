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
    /// The model's manifest (`models/<name>.onnx.json` from `host export`); the ONNX file
    /// it names sits beside it.
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
    let outcomes = runtime.block_on(push_all(&devices, bundle.to_bytes()))?;
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

/// Sends `bundle` to every device at once; returns each outcome and how long it took.
pub async fn push_all(
    devices: &[Device],
    bundle: Vec<u8>,
) -> Result<Vec<(String, Outcome, Duration)>> {
    let bundle = Arc::new(bundle);
    on_all(devices, move |client| {
        let bundle = bundle.clone();
        async move { client.put_model(bundle.as_ref().clone()).await }
    })
    .await
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
