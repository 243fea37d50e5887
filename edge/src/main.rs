//! `edge`: the field-camera binary. Reads frames, detects faces, keeps the frames the
//! model is unsure of, and serves them to the host.

mod api;
mod bench;
mod capture;
mod captures_cmd;
mod config;
mod detect;
mod detector;
mod frame_source;
mod gpio;
mod model_store;
mod onnx_model;
mod runtime;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The edge side of the face-detector feedback loop.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the tract version this binary was built with.
    Version,
    /// Detect faces in image files or folders; one JSON line per image on stdout.
    Detect(detect::DetectArgs),
    /// Time tract fp32/int8 and onnxruntime on the same model files, and the pipeline.
    Bench(bench::BenchArgs),
    /// Run the camera loop: detect every frame, keep the uncertain ones (see deploy/).
    Run(runtime::RunArgs),
    /// List the capture log, or check it with `edge captures verify`.
    Captures(captures_cmd::CapturesArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match cli.command {
        Command::Version => {
            tracing::info!(version = env!("CARGO_PKG_VERSION"), "edge");
            Ok(())
        }
        Command::Detect(args) => detect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Run(args) => runtime::run(args),
        Command::Captures(args) => captures_cmd::run(args),
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
