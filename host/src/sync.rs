//! `host sync`: pull new captures from every device into the feedback store.
//!
//! Per device: ask the store for the highest sequence number it holds, list the records
//! after it a page at a time, fetch their images (several at once, kept in order), store
//! each record with its image (content-addressed, idempotent on device and sequence),
//! and only then acknowledge the page to the device. Records are stored strictly in
//! sequence order and a page stops at its first failure, so the highest stored number is
//! always the end of an unbroken run: a sync cut anywhere (device unplugged, connection
//! reset, host killed) resumes from there without a gap, and storing is idempotent, so
//! nothing is duplicated either. Devices are pulled concurrently, a bounded number at a
//! time.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shared::CaptureRecord;
use tokio::sync::Semaphore;

use crate::fleet::{CallError, Device, DeviceClient, FleetArg};
use crate::store::{Store, StoreError};

/// `host sync` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// Only these devices (repeatable); default: every device of the fleet.
    #[arg(long = "device", value_name = "NAME")]
    pub devices: Vec<String>,
    #[command(flatten)]
    pub fleet: FleetArg,
    /// Devices pulled at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Records asked for per request.
    #[arg(long, default_value_t = 200)]
    pub page: usize,
    /// Images fetched at the same time from one device.
    #[arg(long, default_value_t = 8)]
    pub parallel_images: usize,
}

/// Why one device's sync stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The device could not be reached or refused a call.
    #[error("device {device}: {source}")]
    Call {
        /// The device.
        device: String,
        /// The failed call.
        source: CallError,
    },
    /// The feedback store refused a capture (disk, database, image hash).
    #[error("device {device}: storing seq {seq}: {source}")]
    Store {
        /// The device.
        device: String,
        /// The capture.
        seq: u64,
        /// The store's error.
        source: StoreError,
    },
    /// The device numbers its captures below what the host already holds from it.
    #[error(
        "device {device}: its captures end at seq {device_has} but the host holds up to \
         {host_has}; its capture log was wiped or the fleet entry names another device \
         (nothing acknowledged; give it a new name in the fleet file to start afresh)"
    )]
    Diverged {
        /// The device.
        device: String,
        /// The highest sequence number the device has ever handed out.
        device_has: u64,
        /// The highest sequence number the host stored for this name.
        host_has: u64,
    },
    /// The storing task died.
    #[error("device {device}: storing task failed: {source}")]
    Task {
        /// The device.
        device: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What one device's sync did.
#[derive(Debug)]
pub struct DeviceSync {
    /// The device.
    pub device: String,
    /// Captures stored by this run.
    pub stored: u64,
    /// Captures listed but gone before their image was fetched (evicted on the device).
    pub vanished: u64,
    /// Highest sequence number held for the device after the run.
    pub last_seq: Option<u64>,
    /// How long it took.
    pub took: Duration,
    /// Why it stopped early, if it did.
    pub error: Option<SyncError>,
}

/// Settings of a sync run.
#[derive(Debug, Clone, Copy)]
pub struct SyncOptions {
    /// Devices at once.
    pub concurrency: usize,
    /// Records per page.
    pub page: usize,
    /// Images at once per device.
    pub parallel_images: usize,
}

/// Runs `host sync`.
pub fn run(args: SyncArgs, data: &Path) -> Result<()> {
    let fleet = args.fleet.load(data)?;
    let devices = fleet.select(&args.devices)?;
    let store = Store::open(data)
        .with_context(|| format!("opening the feedback store in {}", data.display()))?;
    let options = SyncOptions {
        concurrency: args.concurrency.max(1),
        page: args.page.clamp(1, 1000),
        parallel_images: args.parallel_images.max(1),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let results =
        runtime.block_on(sync_all(&devices, Arc::new(Mutex::new(store)), options, true))?;
    print_summary(&results);
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} devices did not sync completely (see their result above); \
             what was stored is kept, and `host sync` resumes after it",
            results.len()
        );
    }
    Ok(())
}

/// Pulls every device in `devices`, `options.concurrency` at a time.
pub async fn sync_all(
    devices: &[Device],
    store: Arc<Mutex<Store>>,
    options: SyncOptions,
    progress: bool,
) -> Result<Vec<DeviceSync>> {
    let bars = if progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, device) in devices.iter().enumerate() {
        let client = DeviceClient::new(device, Duration::from_secs(60))?;
        let bar = bars.add(device_bar(&device.name));
        let (store, permits) = (store.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, sync_device(&client, &store, options, &bar).await)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.push(done.context("device sync task")?);
    }
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

fn device_bar(name: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:<16} {bar:30} {pos}/{len} {per_sec} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(0).with_style(style).with_prefix(name.to_string())
}

/// Pulls one device until it has nothing newer, or until the first failure.
pub async fn sync_device(
    client: &DeviceClient,
    store: &Arc<Mutex<Store>>,
    options: SyncOptions,
    bar: &ProgressBar,
) -> DeviceSync {
    let start = Instant::now();
    let device = client.device.name.clone();
    let mut run = DeviceSync {
        device: device.clone(),
        stored: 0,
        vanished: 0,
        last_seq: None,
        took: Duration::ZERO,
        error: None,
    };
    if let Err(e) = pull(client, store, options, bar, &mut run).await {
        bar.abandon_with_message(format!("stopped: {e}"));
        tracing::warn!(%device, error = %e, "sync stopped early");
        run.error = Some(e);
    } else {
        bar.finish_with_message("done");
    }
    run.took = start.elapsed();
    run
}

async fn pull(
    client: &DeviceClient,
    store: &Arc<Mutex<Store>>,
    options: SyncOptions,
    bar: &ProgressBar,
    run: &mut DeviceSync,
) -> Result<(), SyncError> {
    let device = run.device.clone();
    let call = |source| SyncError::Call { device: device.clone(), source };
    let mut after = blocking_last_seq(store, &device).await?.unwrap_or(0);
    run.last_seq = (after > 0).then_some(after);
    let start = after;
    if after > 0 {
        // Acknowledging blindly would let a wiped device (or a fleet entry now naming
        // another one) evict captures the host never saw.
        let status = client.status().await.map_err(call)?;
        let device_has = status.last_seq.unwrap_or(0).max(status.acked_seq);
        if device_has < after {
            return Err(SyncError::Diverged {
                device: device.clone(),
                device_has,
                host_has: after,
            });
        }
        // A run killed between storing and acknowledging left the device unacknowledged.
        client.ack(after).await.map_err(call)?;
    }
    loop {
        let (records, last_on_device) = client.captures(after, options.page).await.map_err(call)?;
        bar.set_length(last_on_device.unwrap_or(after).saturating_sub(start));
        let Some(last_listed) = records.last().map(|r| r.seq) else {
            return Ok(());
        };
        let fetched = fetch_images(client, &records, options.parallel_images).await;
        let (stored_upto, failure) = store_in_order(store, &device, fetched, run).await?;
        if let Some(seq) = stored_upto {
            client.ack(seq).await.map_err(call)?;
            after = seq;
            run.last_seq = Some(seq);
            bar.set_position(seq - start);
        }
        if let Some(e) = failure {
            return Err(call(e));
        }
        // Everything listed is stored, or vanished, which the next page skips past.
        after = after.max(last_listed);
    }
}

/// The image of each record, in order; `None` for a record whose image is gone.
type Fetched = Vec<(CaptureRecord, Result<Option<Vec<u8>>, CallError>)>;

async fn fetch_images(
    client: &DeviceClient,
    records: &[CaptureRecord],
    parallel: usize,
) -> Fetched {
    stream::iter(records.iter().cloned())
        .map(|record| async move {
            let image = match client.image(record.seq).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(CallError::Refused { status, .. })
                    if status == reqwest::StatusCode::NOT_FOUND =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            };
            (record, image)
        })
        .buffered(parallel)
        .collect()
        .await
}

/// Stores fetched captures in sequence order, stopping at the first fetch failure.
/// Returns the highest sequence stored (or skipped as vanished) and that failure.
async fn store_in_order(
    store: &Arc<Mutex<Store>>,
    device: &str,
    fetched: Fetched,
    run: &mut DeviceSync,
) -> Result<(Option<u64>, Option<CallError>), SyncError> {
    let mut ready = Vec::new();
    let mut failure = None;
    for (record, image) in fetched {
        match image {
            Ok(image) => ready.push((record, image)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let (store, owned_device) = (store.clone(), device.to_string());
    let outcome = tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        let committed = store.in_transaction(|store| {
            let mut done = (None, 0u64, 0u64);
            for (record, image) in &ready {
                if let Some(image) = image {
                    store.add_capture(&owned_device, record, image).map_err(|source| {
                        SyncError::Store { device: owned_device.clone(), seq: record.seq, source }
                    })?;
                    done.1 += 1;
                } else {
                    tracing::debug!(
                        device = %owned_device,
                        seq = record.seq,
                        "capture evicted before its image was fetched"
                    );
                    done.2 += 1;
                }
                done.0 = Some(record.seq);
            }
            Ok::<_, SyncError>(done)
        });
        let last = ready.last().map_or(0, |(r, _)| r.seq);
        committed.map_err(|source| SyncError::Store {
            device: owned_device.clone(),
            seq: last,
            source,
        })?
    })
    .await
    .map_err(|source| SyncError::Task { device: device.to_string(), source })??;
    run.stored += outcome.1;
    run.vanished += outcome.2;
    Ok((outcome.0, failure))
}

async fn blocking_last_seq(
    store: &Arc<Mutex<Store>>,
    device: &str,
) -> Result<Option<u64>, SyncError> {
    let (store, owned) = (store.clone(), device.to_string());
    tokio::task::spawn_blocking(move || {
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        store.last_seq(&owned).map_err(|source| SyncError::Store {
            device: owned.clone(),
            seq: 0,
            source,
        })
    })
    .await
    .map_err(|source| SyncError::Task { device: device.to_string(), source })?
}

/// The per-device table is the command's output.
#[allow(clippy::print_stdout)]
fn print_summary(results: &[DeviceSync]) {
    println!(
        "{:<16} {:>8} {:>9} {:>10} {:>8}  result",
        "device", "stored", "vanished", "last seq", "seconds"
    );
    for r in results {
        let result = r.error.as_ref().map_or_else(|| "ok".to_string(), |e| e.to_string());
        let last = r.last_seq.map_or("-".to_string(), |s| s.to_string());
        println!(
            "{:<16} {:>8} {:>9} {:>10} {:>8.1}  {result}",
            r.device,
            r.stored,
            r.vanished,
            last,
            r.took.as_secs_f64()
        );
    }
}
