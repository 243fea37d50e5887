//! `edge`: the field-camera binary. Reads frames, detects faces, keeps the frames the
//! model is unsure of, and serves them to the host.

mod detector;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match cli.command {
        Command::Version => {
            tracing::info!(version = env!("CARGO_PKG_VERSION"), "edge");
            Ok(())
        }
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
