//! The device's HTTP API, served beside the frame loop by `edge run --listen ADDR`.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/status` | device, model, fps, captures, disk, last sync, camera |
//! | `GET /v1/captures?after=N&limit=K` | records after N: JSON, or a postcard stream |
//! | `GET /v1/captures/{seq}/image` | the capture's JPEG |
//! | `POST /v1/captures/ack` | `{"seq": N}`: the host holds everything up to N |
//! | `PUT /v1/model` | a signed model bundle (`shared::bundle`) |
//! | `POST /v1/model/rollback` | back to the previous model |
//! | `GET /metrics` | Prometheus text; the only route without the token |
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` (the token file's content);
//! without it the answer is 401 and nothing else. Bodies are limited (16 KiB, bundles
//! [`ApiConfig::max_bundle_bytes`]), requests time out, and an address with too many
//! failed tokens is refused for a minute.
//!
//! Plain HTTP is for a closed network only (a VPN, a LAN you control): the token and the
//! captures travel in clear. Configure `tls_cert` and `tls_key` anywhere else.

mod auth;
mod error;
mod handlers;
pub mod metrics;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use serde::{Deserialize, Serialize};
use shared::protocol::DeviceStatus;
use shared::ModelManifest;
use tower_http::timeout::TimeoutLayer;

pub use auth::{AuthLimiter, Token};
pub use error::ApiError;
use metrics::{ApiMetrics, Timed};

use crate::capture::CaptureLog;
use crate::config::EdgeConfig;
use crate::model_store::{ModelLoader, ModelStore, SelfTestConfig};
use crate::runtime::status::RuntimeHandles;

/// The `[api]` table of the edge config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to serve on, e.g. `0.0.0.0:8710`; unset: no port is opened.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token the host must send (required with `listen`).
    pub token_file: Option<PathBuf>,
    /// Name the device reports; unset: the machine's host name.
    pub device_id: Option<String>,
    /// PEM certificate chain; with `tls_key`, the API is served over TLS (rustls).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// ed25519 public keys (64 hex digits) whose signed models this device accepts.
    pub trusted_keys: Vec<String>,
    /// Files each holding one such key (what `host keys init` writes as `signing.pub`).
    pub trusted_key_files: Vec<PathBuf>,
    /// Folder of the model store; unset: `models` inside the capture data folder.
    pub models_dir: Option<PathBuf>,
    /// Largest model bundle accepted, bytes.
    pub max_bundle_bytes: usize,
    /// Seconds a request may take (model uploads: `model_timeout_s`).
    pub request_timeout_s: u64,
    /// Seconds a model upload, check and swap may take.
    pub model_timeout_s: u64,
    /// Failed tokens allowed per client address per minute before it is refused.
    pub max_auth_failures: u32,
    /// Share of reference frames a new model must decide like the active one.
    pub self_test_min_agreement: f32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            token_file: None,
            device_id: None,
            tls_cert: None,
            tls_key: None,
            trusted_keys: Vec::new(),
            trusted_key_files: Vec::new(),
            models_dir: None,
            max_bundle_bytes: 128 << 20,
            request_timeout_s: 30,
            model_timeout_s: 300,
            max_auth_failures: 10,
            self_test_min_agreement: SelfTestConfig::default().min_agreement,
        }
    }
}

/// The API flags of `edge run`; each overrides the `[api]` table.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiArgs {
    /// Serve the HTTP API on this address (e.g. 0.0.0.0:8710); no port is opened without.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token clients must send.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ApiArgs {
    /// Applies the flags to the config.
    pub fn apply(&self, config: &mut ApiConfig) {
        if let Some(listen) = self.listen {
            config.listen = Some(listen);
        }
        if let Some(token_file) = &self.token_file {
            config.token_file = Some(token_file.clone());
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    handles: RuntimeHandles,
    models: Arc<Mutex<ModelStore>>,
    active: Arc<Mutex<Option<ModelManifest>>>,
    token: Token,
    limiter: Arc<AuthLimiter>,
    metrics: Arc<ApiMetrics>,
    device_id: Arc<str>,
    data_dir: Arc<Path>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

impl ApiState {
    /// State for a device named `device_id` whose captures live in `data_dir`.
    pub fn new(
        handles: RuntimeHandles,
        models: ModelStore,
        token: Token,
        config: &ApiConfig,
        device_id: &str,
        data_dir: &Path,
    ) -> Result<Self> {
        let active = models.active().context("reading the model store")?.map(|m| m.manifest);
        Ok(Self {
            handles,
            models: Arc::new(Mutex::new(models)),
            active: Arc::new(Mutex::new(active)),
            token,
            limiter: Arc::new(AuthLimiter::new(config.max_auth_failures)),
            metrics: Arc::new(ApiMetrics::default()),
            device_id: device_id.into(),
            data_dir: data_dir.into(),
        })
    }

    fn lock_log(&self) -> MutexGuard<'_, CaptureLog> {
        // The log's own invariants hold between calls; a panic elsewhere leaves it usable.
        self.handles.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn device_status(&self) -> DeviceStatus {
        let runtime = self.handles.status.snapshot();
        let usage = self.lock_log().usage();
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner()).clone();
        DeviceStatus {
            device_id: self.device_id.to_string(),
            model_version: active
                .as_ref()
                .map_or(runtime.model_version.clone(), |m| m.version.clone()),
            model_version_number: active.as_ref().map_or(0, |m| m.version_number),
            model_sha256: active.as_ref().map(|m| m.sha256.clone()),
            uptime_s: runtime.uptime_s,
            fps: runtime.fps,
            inference_ms: runtime.inference_ms,
            captures_stored: usage.count as u64,
            capture_bytes: usage.bytes,
            last_seq: usage.last_seq,
            acked_seq: usage.acked_seq,
            free_disk_bytes: crate::capture::log::free_bytes(&self.data_dir).ok(),
            last_sync_ms: usage.last_ack_ms,
            camera: label(&runtime.camera),
            capture: label(&runtime.capture),
        }
    }
}

/// The API's routes on `state`, without a socket (tests drive it with `oneshot`).
pub fn router(state: ApiState, config: &ApiConfig) -> Router {
    let timeout = |s: u64| {
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(s))
    };
    let model_routes = Router::new()
        .route("/v1/model", put(handlers::put_model))
        .route("/v1/model/rollback", post(handlers::rollback))
        .layer(DefaultBodyLimit::max(config.max_bundle_bytes))
        .layer(timeout(config.model_timeout_s));
    let other_routes = Router::new()
        .route("/v1/status", get(handlers::status))
        .route("/v1/captures", get(handlers::captures))
        .route("/v1/captures/{seq}/image", get(handlers::image))
        .route("/v1/captures/ack", post(handlers::ack))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(timeout(config.request_timeout_s));
    let protected = model_routes
        .merge(other_routes)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route; the API is under /v1".into()) })
        .with_state(state)
}

/// Starts the API for `edge run` when `[api] listen` is set: opens the model store, puts
/// its active model in place, binds the port (failing here if it is taken), and serves
/// from a thread until `handles.shutdown` is set.
pub fn start(config: &EdgeConfig, handles: RuntimeHandles) -> Result<Option<JoinHandle<()>>> {
    let api = &config.api;
    let Some(listen) = api.listen else {
        return Ok(None);
    };
    let token_path = api.token_file.as_ref().context(
        "api.listen is set but api.token_file is not; give --token-file FILE (the bearer token)",
    )?;
    let token_text = std::fs::read_to_string(token_path)
        .with_context(|| format!("{}: cannot read the API token file", token_path.display()))?;
    if token_text.trim().len() < 16 {
        bail!("{}: the API token must be at least 16 characters", token_path.display());
    }
    // Loaded here, not in the server thread, so that a bad certificate stops `edge run`
    // at start instead of leaving a device that detects but cannot be reached.
    let tls = match (&api.tls_cert, &api.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
        (None, None) => None,
        _ => bail!("api.tls_cert and api.tls_key must be given together"),
    };
    let store = open_model_store(config)?;
    let device_id = api.device_id.clone().unwrap_or_else(host_name);
    let data_dir = config.storage.data_dir.clone();
    let state =
        ApiState::new(handles.clone(), store, Token::new(&token_text), api, &device_id, &data_dir)?;
    state.put_active_model_in_place()?;
    let app = router(state, api);
    let listener = std::net::TcpListener::bind(listen).with_context(|| {
        format!("binding the API to {listen} (port taken? use another --listen)")
    })?;
    listener.set_nonblocking(true).context("configuring the API socket")?;
    let addr = listener.local_addr().context("reading the API address")?;
    match &tls {
        Some(_) => tracing::info!(%addr, %device_id, "API listening (TLS)"),
        None => {
            tracing::warn!(%addr, %device_id, "API listening over plain HTTP: closed networks only")
        }
    }
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || serve(listener, app, tls, handles))
        .context("starting the API thread")?;
    Ok(Some(thread))
}

impl ApiState {
    /// Makes the frame loop run the store's active model (timed for `/metrics`). A store
    /// with no model yet adopts the one `edge run` was started with.
    fn put_active_model_in_place(&self) -> Result<()> {
        let store = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let Some(active) = store.active()? else {
            tracing::info!("model store is empty; it adopts the running model at the first push");
            return Ok(());
        };
        let detector = (store.loader())(&active.manifest_path()).map_err(anyhow::Error::msg)?;
        drop(store);
        tracing::info!(
            version = %active.manifest.version,
            "running the model store's active model"
        );
        self.handles.swap_detector(Box::new(Timed::new(detector, self.metrics.inference.clone())));
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(active.manifest);
        Ok(())
    }
}

/// Opens `<data>/models` (or `api.models_dir`) with the tract loader and the trusted keys,
/// adopting the configured model if the store is empty and the model has a manifest.
fn open_model_store(config: &EdgeConfig) -> Result<ModelStore> {
    let api = &config.api;
    let dir = api.models_dir.clone().unwrap_or_else(|| config.storage.data_dir.join("models"));
    let threads = config.model.threads;
    let loader: ModelLoader = Arc::new(move |path: &Path| {
        use crate::onnx_model::{ModelOptions, TractDetector};
        TractDetector::load(path, ModelOptions { threads })
            .map(|d| Box::new(d) as Box<dyn crate::detector::Detector>)
            .map_err(|e| e.to_string())
    });
    let trusted = trusted_keys(api)?;
    if trusted.is_empty() {
        tracing::warn!("api.trusted_keys is empty: every pushed model will be refused");
    }
    let self_test = SelfTestConfig { min_agreement: api.self_test_min_agreement };
    let mut store = ModelStore::open(&dir, loader, trusted, self_test)
        .with_context(|| format!("opening the model store {}", dir.display()))?;
    if store.active()?.is_none() {
        if let Some(manifest) = configured_manifest(config) {
            store.adopt(&manifest).with_context(|| {
                format!("copying the model {} into the model store", manifest.display())
            })?;
        } else {
            tracing::warn!(
                "the running model has no manifest; \
                 the first pushed model is not self-tested against it"
            );
        }
    }
    Ok(store)
}

/// The manifest of the model `edge run` was told to use, if it has one.
fn configured_manifest(config: &EdgeConfig) -> Option<PathBuf> {
    let path = match &config.model.path {
        Some(p) => p.clone(),
        None => crate::onnx_model::default_model().ok()?,
    };
    let manifest = if path.extension().is_some_and(|e| e == "json") {
        path
    } else {
        path.with_extension("json")
    };
    manifest.is_file().then_some(manifest)
}

fn trusted_keys(api: &ApiConfig) -> Result<Vec<ed25519_dalek::VerifyingKey>> {
    let mut keys = Vec::new();
    for text in &api.trusted_keys {
        keys.push(shared::bundle::public_key_from_hex(text).context("api.trusted_keys")?);
    }
    for path in &api.trusted_key_files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the trusted key file", path.display()))?;
        let key = shared::bundle::public_key_from_hex(&text)
            .with_context(|| format!("{}: api.trusted_key_files", path.display()))?;
        keys.push(key);
    }
    Ok(keys)
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edge".into())
}

/// The snake_case word serde gives a unit enum variant (camera and capture states).
fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// The certificate chain and key for serving over TLS, checked now.
fn load_tls(cert: &Path, key: &Path) -> Result<RustlsConfig> {
    // Both rustls users in this binary take ring; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to read the TLS files")?;
    runtime.block_on(RustlsConfig::from_pem_file(cert, key)).with_context(|| {
        format!(
            "api.tls_cert {} / api.tls_key {}: not a usable PEM certificate chain and key \
             (deploy/TLS.md)",
            cert.display(),
            key.display()
        )
    })
}

/// Runs the server on its own runtime until shutdown is asked for.
fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<RustlsConfig>,
    handles: RuntimeHandles,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "API runtime could not start; the API is off");
            return;
        }
    };
    let result = runtime.block_on(async move {
        let make = app.into_make_service_with_connect_info::<SocketAddr>();
        match tls {
            Some(tls) => serve_tls(listener, make, tls, handles).await,
            None => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, make)
                    .with_graceful_shutdown(shutdown_asked(handles))
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
    });
    match result {
        Ok(()) => tracing::info!("API stopped"),
        Err(e) => tracing::error!(error = %format!("{e:#}"), "API failed; the frame loop goes on"),
    }
}

async fn serve_tls(
    listener: std::net::TcpListener,
    make: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
    tls: RustlsConfig,
    handles: RuntimeHandles,
) -> Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown_asked(handles).await;
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    axum_server::from_tcp_rustls(listener, tls).handle(handle).serve(make).await?;
    Ok(())
}

/// Resolves once the frame loop's shutdown flag is set (SIGINT, SIGTERM, end of run).
async fn shutdown_asked(handles: RuntimeHandles) {
    while !handles.is_shutting_down() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
