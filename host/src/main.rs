//! `host`: pull captures from field devices, review them, fine-tune the detector from the
//! feedback, export it to ONNX and push it back.

mod accel;
mod augment;
mod average;
mod dataset;
mod evaluate;
mod model;
mod train;
mod weights;

mod export;

mod feedback;
mod fleet;
mod keys;
mod push;
mod review;
mod store;
mod sync;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The host side of the face-detector feedback loop.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// The host's data folder: feedback store, images, pulled captures.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "FDET_HOST_DATA",
        default_value = "host-data"
    )]
    data: std::path::PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the libtorch build and the device training would use.
    Device,
    /// Write a checkpoint as ONNX (fp32 and int8) with a manifest beside each file.
    Export(export::ExportArgs),
    /// Fine-tune the detector on the seed data (or run the seed's grid with --grid).
    Train(Box<train::TrainArgs>),
    /// Average checkpoints of one run, weight by weight, into one checkpoint.
    Average(average::AverageArgs),
    /// Figures of a checkpoint on the held-out seed images and the real photos.
    Evaluate(evaluate::EvaluateArgs),
    /// Import, export and summarise reviewers' feedback.
    Feedback(feedback::FeedbackArgs),
    /// Serve the review page: correct boxes and rate detections in a browser.
    Review(review::ReviewArgs),
    /// Create the ed25519 key pair that signs pushed models.
    Keys(keys::KeysArgs),
    /// Pull new captures from the fleet's devices into the feedback store.
    Sync(sync::SyncArgs),
    /// Sign a model and push it to the fleet's devices.
    Push(push::PushArgs),
    /// Send devices back to their previous model.
    Rollback(push::RollbackArgs),
    /// The fleet's devices: `host fleet status`.
    Fleet(fleet::FleetArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match cli.command {
        Command::Device => {
            let device = accel::select_device();
            tracing::info!(?device, cuda = tch::Cuda::is_available(), "libtorch loaded");
            Ok(())
        }
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(*args),
        Command::Average(args) => average::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Feedback(args) => feedback::run(args, &cli.data),
        Command::Review(args) => review::run(args, &cli.data),
        Command::Keys(args) => keys::run(args, &cli.data),
        Command::Sync(args) => sync::run(args, &cli.data),
        Command::Push(args) => push::run(args, &cli.data),
        Command::Rollback(args) => push::run_rollback(args, &cli.data),
        Command::Fleet(args) => fleet::run(args, &cli.data),
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
