//! The review server's one error type: a status and a short message for the client.
//!
//! Details of internal failures are logged once here and never sent to the browser.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or its values are out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the server accepts.
    #[error("request body is larger than the {0} byte limit")]
    TooLarge(usize),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The token is missing or wrong.
    #[error("missing or wrong token: open the page with ?token=... as printed by `host review`")]
    Unauthorized,
    /// Something failed on the server; the detail is in the log.
    #[error("internal error, see the host's log")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownCapture(_) => ApiError::NotFound(e.to_string()),
            StoreError::Box(_) | StoreError::Rating(_) => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "review request failed");
        } else {
            tracing::debug!(error = %self, "review request refused");
        }
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}
