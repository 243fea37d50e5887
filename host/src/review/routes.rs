//! The review server's routes: the page, its assets, and a small JSON API.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /assets/{review.css,review.js}` | its style and script |
//! | `GET /api/meta` | devices, model versions, the rating scale |
//! | `GET /api/queue?device=&model_version=&reviewed=&rating=&limit=` | captures, low score first |
//! | `GET /api/captures/{id}` | one capture and its latest feedback |
//! | `GET /api/captures/{id}/image` | its image |
//! | `POST /api/captures/{id}/feedback` | save a verdict (JSON, see [`SaveRequest`]) |

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::BBox;
use tower_http::timeout::TimeoutLayer;

use super::error::ApiError;
use crate::store::{CaptureId, Correction, QueueFilter, QueueItem, Store};

/// The largest request body accepted; a verdict is a few hundred bytes.
pub const BODY_LIMIT: usize = 16 * 1024;
/// The longest comment accepted, in characters.
pub const COMMENT_LIMIT: usize = 4000;
/// How long a request may take before the server answers 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("assets/index.html");
const REVIEW_CSS: &str = include_str!("assets/review.css");
const REVIEW_JS: &str = include_str!("assets/review.js");

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The feedback store; queries are short, and run on the blocking pool.
    pub store: Mutex<Store>,
    /// When set, API calls must carry it (`Authorization: Bearer` or `?token=`).
    pub token: Option<String>,
    /// The rating scale shown next to the buttons, best first.
    pub scale: Vec<String>,
}

/// Builds the router; no socket involved, so tests drive it with `oneshot`.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/meta", get(meta))
        .route("/queue", get(queue))
        .route("/captures/{id}", get(capture))
        .route("/captures/{id}/image", get(image))
        .route("/captures/{id}/feedback", post(save))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/assets/review.css", get(|| async { asset("text/css", REVIEW_CSS) }))
        .route("/assets/review.js", get(|| async { asset("text/javascript", REVIEW_JS) }))
        .nest("/api", api)
        .fallback(|| async { ApiError::NotFound("no such page".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.token else {
        return Ok(next.run(request).await);
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Image requests carry the token in the query (an <img> cannot set headers); the page
    // percent-encodes it, so it is decoded before the comparison.
    let query = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(
        request.uri(),
    );
    let in_query = query.ok().and_then(|q| q.0.get("token").cloned());
    let given = bearer.map(str::to_owned).or(in_query).unwrap_or_default();
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so response time says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0 && a.len() == b.len()
}

/// Runs `f` on the store on the blocking pool.
async fn with_store<T, F>(state: &Arc<AppState>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Store) -> Result<T, ApiError> + Send + 'static,
{
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut store =
            state.store.lock().map_err(|_| ApiError::Internal("store lock poisoned".into()))?;
        f(&mut store)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
}

fn parse_id(text: &str) -> Result<CaptureId, ApiError> {
    text.parse()
        .map(CaptureId)
        .map_err(|_| ApiError::BadRequest(format!("capture id {text:?} is not a number")))
}

#[derive(Serialize)]
struct Meta {
    devices: Vec<String>,
    model_versions: Vec<String>,
    scale: Vec<String>,
}

async fn meta(State(state): State<Arc<AppState>>) -> Result<Json<Meta>, ApiError> {
    let scale = state.scale.clone();
    let (devices, model_versions) = with_store(&state, |s| Ok(s.facets()?)).await?;
    Ok(Json(Meta { devices, model_versions, scale }))
}

async fn queue(
    State(state): State<Arc<AppState>>,
    filter: Result<Query<QueueFilter>, QueryRejection>,
) -> Result<Json<Vec<QueueItem>>, ApiError> {
    let Query(filter) =
        filter.map_err(|e| ApiError::BadRequest(format!("queue filter: {}", e.body_text())))?;
    if filter.rating.is_some_and(|r| r > 5) {
        return Err(ApiError::BadRequest("rating filter must be 0-5".into()));
    }
    Ok(Json(with_store(&state, move |s| Ok(s.queue(&filter)?)).await?))
}

async fn capture(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<QueueItem>, ApiError> {
    let id = parse_id(&id)?;
    let item = with_store(&state, move |s| {
        let capture = s.capture(id)?;
        let feedback = s.latest_feedback(id)?;
        Ok(QueueItem { capture, feedback })
    })
    .await?;
    Ok(Json(item))
}

async fn image(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (path, bytes) = with_store(&state, move |s| {
        let path = s.capture(id)?.image_path;
        let bytes = std::fs::read(&path)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        Ok((path, bytes))
    })
    .await?;
    let png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let kind = if png { "image/png" } else { "image/jpeg" };
    // Content-addressed: the bytes behind an id never change.
    let cache = "private, max-age=86400, immutable";
    Ok(([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, cache)], bytes).into_response())
}

/// The body of `POST /api/captures/{id}/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveRequest {
    /// The corrected box `[x1, y1, x2, y2]`, normalised to the image; `null` with `no_face`.
    pub face: Option<[f32; 4]>,
    /// The reviewer says there is no face in the frame.
    pub no_face: bool,
    /// 0-5.
    pub rating: i64,
    /// Free text.
    #[serde(default)]
    pub comment: String,
    /// Who reviewed.
    #[serde(default)]
    pub reviewer: String,
}

#[derive(Serialize)]
struct Saved {
    feedback_id: i64,
}

async fn save(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Saved>), ApiError> {
    let id = parse_id(&id)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(BODY_LIMIT)
        } else {
            ApiError::BadRequest(format!("reading the body: {}", e.body_text()))
        }
    })?;
    let req: SaveRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not a valid verdict: {e}")))?;
    let correction = correction(req)?;
    let feedback_id = with_store(&state, move |s| Ok(s.save_feedback(id, &correction)?)).await?;
    Ok((StatusCode::CREATED, Json(Saved { feedback_id })))
}

/// Checks a request and turns it into what the store saves.
fn correction(req: SaveRequest) -> Result<Correction, ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let face = match (req.no_face, req.face) {
        (true, Some(_)) => return bad("a box was sent with no_face; send one or the other".into()),
        (false, None) => return bad("draw the face box or mark the frame as no face".into()),
        (true, None) => None,
        (false, Some(b)) => {
            Some(BBox::from(b).validate().map_err(|e| ApiError::BadRequest(format!("face: {e}")))?)
        }
    };
    let Ok(rating) = u8::try_from(req.rating) else {
        return bad(format!("rating {} is outside the 0-5 scale", req.rating));
    };
    if rating > 5 {
        return bad(format!("rating {rating} is outside the 0-5 scale"));
    }
    if req.comment.chars().count() > COMMENT_LIMIT {
        return bad(format!("comment is longer than {COMMENT_LIMIT} characters"));
    }
    let reviewer = req.reviewer.trim().chars().take(100).collect();
    Ok(Correction { face, rating, comment: req.comment, reviewer })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests;
