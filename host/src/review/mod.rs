//! `host review`: a local web page to go through captures, correct the model's box, rate
//! the detection and comment, with the keyboard.
//!
//! Plain HTML, CSS and one script, embedded in the binary: nothing to build with npm.
//! Bound to loopback unless `--token` is given, since anyone who reaches the port can
//! read the images and write feedback.

mod error;
pub mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use routes::{router, AppState};

/// The rating scale reviewers use (the thresholds of the old project's `criteria.txt`).
pub const DEFAULT_SCALE: [&str; 6] = [
    "5: perfect detection, the box holds the whole face",
    "4: good detection, small box problems (more than 2/3 of the face)",
    "3: correct detection, visible box problems (more than 1/3 of the face)",
    "2: correct detection, poor box (less than 1/3 of the face)",
    "1: poor detection and box (less than 1/3 of the face, under 50% detection)",
    "0: completely wrong (under 25% detection, wrong box)",
];

/// Arguments of `host review`.
#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// Address to listen on; port 0 picks a free one. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "ADDR:PORT")]
    pub bind: SocketAddr,
    /// Secret the page and API calls must carry (`?token=` or `Authorization: Bearer`).
    #[arg(long, env = "FDET_REVIEW_TOKEN", value_name = "T")]
    pub token: Option<String>,
    /// Show this rating scale file (one line per rating, like criteria.txt). Default: the
    /// `criteria.txt` that `host feedback import` kept in the data folder, else a built-in
    /// scale with the same thresholds.
    #[arg(long, value_name = "FILE")]
    pub criteria: Option<PathBuf>,
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ReviewArgs, data_dir: &Path) -> Result<()> {
    if !args.bind.ip().is_loopback() && args.token.is_none() {
        bail!(
            "refusing to serve the review page on {} without --token: anyone on the network \
             could read the images and write feedback; pass --token SECRET or bind 127.0.0.1",
            args.bind
        );
    }
    if args.token.as_deref().is_some_and(|t| t.len() < 8) {
        bail!("--token is shorter than 8 characters; use a longer secret");
    }
    let kept = crate::feedback::criteria_path(data_dir);
    let scale = match &args.criteria {
        Some(path) => read_scale(path)?,
        None if kept.exists() => read_scale(&kept)?,
        None => DEFAULT_SCALE.iter().map(|s| (*s).to_owned()).collect(),
    };
    let store = crate::feedback::open_store(data_dir)?;
    let state = Arc::new(AppState { store: Mutex::new(store), token: args.token, scale });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args.bind, state))
}

/// The lines of a criteria file that name a rating (`5: ...`), best first.
fn read_scale(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the rating scale {}", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()) && l.contains(':'))
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        bail!("{}: no lines of the form `5: ...`; give a criteria.txt-like file", path.display());
    }
    Ok(lines)
}

#[allow(clippy::print_stdout)] // The address line is the command's output (tests read it).
async fn serve(bind: SocketAddr, state: Arc<AppState>) -> Result<()> {
    let token = state.token.clone();
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}; is another review server running there?"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    println!("review page: http://{addr}/{query}");
    tracing::info!(%addr, "review server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the review page")?;
    tracing::info!("review server stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; in-flight requests then finish.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C; stop the server with SIGTERM");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down the review server");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use super::*;

    const CRITERIA: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/seed/feedback/criteria.txt");

    #[test]
    fn a_public_bind_needs_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let args = |token: Option<&str>| ReviewArgs {
            bind: "0.0.0.0:0".parse().unwrap(),
            token: token.map(str::to_owned),
            criteria: None,
        };
        let err = run(args(None), dir.path()).unwrap_err().to_string();
        assert!(err.contains("without --token"), "{err}");
        let err = run(args(Some("short")), dir.path()).unwrap_err().to_string();
        assert!(err.contains("shorter than 8"), "{err}");
    }

    #[test]
    fn the_reviewers_criteria_file_gives_six_ratings() {
        let scale = read_scale(Path::new(CRITERIA)).unwrap();
        assert_eq!(scale.len(), 6);
        assert!(scale[0].starts_with("5:") && scale[5].starts_with("0:"), "{scale:?}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "Rate it\n").unwrap();
        assert!(read_scale(&empty).unwrap_err().to_string().contains("no lines"));
    }
}
