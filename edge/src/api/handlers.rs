//! The route handlers. Each takes the shared [`ApiState`] and returns `Result<_, ApiError>`.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use shared::protocol::{
    Ack, CaptureList, DeviceStatus, ModelReply, LAST_SEQ_HEADER, POSTCARD_STREAM,
};

use super::metrics::{self, Timed};
use super::{ApiError, ApiState};
use crate::model_store::{Swap, REFERENCE_FRAMES};

/// Most records one `GET /v1/captures` returns, whatever `limit` asks.
pub const MAX_PAGE: usize = 1000;

/// `GET /v1/status`.
pub async fn status(State(state): State<ApiState>) -> Json<DeviceStatus> {
    Json(state.device_status())
}

/// `GET /metrics` (no token: it carries no capture or model content).
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let status = state.device_status();
    let runtime = state.handles.status.snapshot();
    let text = metrics::render(&status, runtime.frames, runtime.captures_kept, &state.metrics);
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// Query of `GET /v1/captures`.
#[derive(Debug, Deserialize)]
pub struct CaptureQuery {
    /// Records with a greater sequence number are returned.
    #[serde(default)]
    after: u64,
    /// At most this many (capped at [`MAX_PAGE`]).
    limit: Option<usize>,
}

/// `GET /v1/captures?after=N&limit=K`: JSON, or a postcard stream when the client
/// accepts [`POSTCARD_STREAM`].
pub async fn captures(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<CaptureQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::BadRequest(format!("query must be after=N&limit=K (numbers): {}", e.body_text()))
    })?;
    let limit = q.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let (records, last_seq) = {
        let log = state.lock_log();
        (log.after(q.after, limit), log.usage().last_seq)
    };
    tracing::debug!(after = q.after, limit, sent = records.len(), "captures listed");
    let wants_postcard = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(POSTCARD_STREAM));
    if !wants_postcard {
        return Ok(Json(CaptureList { captures: records, last_seq }).into_response());
    }
    let body = shared::protocol::encode_record_stream(&records);
    let mut response = ([(header::CONTENT_TYPE, POSTCARD_STREAM)], body).into_response();
    if let Some(last) = last_seq.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        response.headers_mut().insert(LAST_SEQ_HEADER, last);
    }
    Ok(response)
}

/// `GET /v1/captures/{seq}/image`: the JPEG, read outside the log's lock.
pub async fn image(
    State(state): State<ApiState>,
    seq: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(seq) =
        seq.map_err(|_| ApiError::BadRequest("capture sequence must be a number".into()))?;
    let missing = || ApiError::NotFound(format!("no capture {seq} on this device"));
    let path = state.lock_log().image_path(seq).ok_or_else(missing)?;
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        // Evicted between the lookup and the read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(ApiError::Internal(format!("{}: {e}", path.display()))),
    };
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], Body::from(bytes)).into_response())
}

/// `POST /v1/captures/ack` with [`Ack`]: the host holds everything up to `seq`.
pub async fn ack(
    State(state): State<ApiState>,
    body: Result<Json<Ack>, JsonRejection>,
) -> Result<Json<Ack>, ApiError> {
    let Json(ack) = body.map_err(|e| {
        ApiError::BadRequest(format!("body must be JSON {{\"seq\": N}}: {}", e.body_text()))
    })?;
    let acked = state
        .lock_log()
        .ack(ack.seq, now_ms())
        .map_err(|e| ApiError::Internal(format!("acknowledging {}: {e}", ack.seq)))?;
    state.handles.status.update(|s| s.acked_seq = acked);
    tracing::info!(asked = ack.seq, acked, "host acknowledged captures");
    Ok(Json(Ack { seq: acked }))
}

/// `PUT /v1/model`: a signed bundle. Checked, tried, then adopted or refused.
pub async fn put_model(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Json<ModelReply>, ApiError> {
    let task_state = state.clone();
    let result = tokio::task::spawn_blocking(move || install(&task_state, &body))
        .await
        .map_err(|e| ApiError::Internal(format!("model install task: {e}")))?;
    match result {
        Ok(reply) => {
            state.metrics.models_accepted.fetch_add(1, Ordering::Relaxed);
            Ok(Json(reply))
        }
        Err(e) => {
            state.metrics.models_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reason = %e, "pushed model refused");
            Err(e)
        }
    }
}

/// `POST /v1/model/rollback`: back to the previous model.
pub async fn rollback(State(state): State<ApiState>) -> Result<Json<ModelReply>, ApiError> {
    let task_state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = task_state.models.try_lock().map_err(|_| ApiError::Busy)?;
        let swap = store.rollback()?;
        drop(store);
        Ok(Json(task_state.adopt(swap)))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("rollback task: {e}")))?
}

fn install(state: &ApiState, body: &[u8]) -> Result<ModelReply, ApiError> {
    let mut store = state.models.try_lock().map_err(|_| ApiError::Busy)?;
    let mut reference = store.reference_frames();
    let fresh = if reference.is_empty() { recent_capture_images(state) } else { Vec::new() };
    if reference.is_empty() {
        reference = fresh
            .iter()
            .filter_map(|jpeg| shared::frame::decode_image(jpeg, "capture").ok())
            .collect();
    }
    let swap = store.install(body, &reference)?;
    if !fresh.is_empty() {
        // Kept only once a model passed with them, so a refusal changes nothing on disk.
        if let Err(e) = store.keep_reference_frames(&fresh) {
            tracing::warn!(error = %e, "could not keep the reference frames");
        }
    }
    drop(store);
    Ok(state.adopt(swap))
}

/// JPEGs of the newest captures, the frames a first self-test runs on.
fn recent_capture_images(state: &ApiState) -> Vec<Vec<u8>> {
    let paths: Vec<_> = {
        let log = state.lock_log();
        let usage = log.usage();
        let from = usage.last_seq.unwrap_or(0).saturating_sub(4 * REFERENCE_FRAMES as u64);
        let records = log.after(from, 4 * REFERENCE_FRAMES);
        records.iter().rev().take(REFERENCE_FRAMES).filter_map(|r| log.image_path(r.seq)).collect()
    };
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

impl ApiState {
    /// Hands a swapped-in model to the frame loop and answers with what is active now.
    fn adopt(&self, swap: Swap) -> ModelReply {
        let m = &swap.active.manifest;
        let replaced = swap.replaced.as_ref().map(|r| r.manifest.version.clone());
        tracing::info!(
            version = %m.version,
            number = m.version_number,
            ?replaced,
            "model swapped in"
        );
        let timed = Timed::new(swap.detector, self.metrics.inference.clone());
        self.handles.swap_detector(Box::new(timed));
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        ModelReply {
            version: m.version.clone(),
            version_number: m.version_number,
            sha256: m.sha256.clone(),
            replaced,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
