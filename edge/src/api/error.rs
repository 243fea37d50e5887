//! The one error type of the HTTP API: a status and a short sentence for the client;
//! details go to the device log, once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::model_store::ModelStoreError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or the wrong one. The response says nothing more.
    #[error("unauthorized")]
    Unauthorized,
    /// Too many failed logins from this address; try again after the wait.
    #[error("too many failed authentications; retry in {retry_after_s} s")]
    TooManyFailures {
        /// Seconds until the window closes.
        retry_after_s: u64,
    },
    /// The request is malformed (query, body, path).
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist (any more).
    #[error("{0}")]
    NotFound(String),
    /// A pushed model, or a rollback, was refused; the reason is for the technician.
    #[error("{reason}")]
    Refused {
        /// 400, 403, 409 or 422 depending on the refusal.
        status: StatusCode,
        /// Why.
        reason: String,
    },
    /// Another model install is running.
    #[error("another model install is in progress; retry when it has finished")]
    Busy,
    /// The device failed (disk, lock, task); the detail is in the device log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Refused { status, .. } => *status,
            ApiError::Busy => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The sentence sent to the client.
    fn client_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error; see the device log".into(),
            other => other.to_string(),
        }
    }
}

impl From<ModelStoreError> for ApiError {
    fn from(e: ModelStoreError) -> Self {
        use shared::bundle::BundleError as B;
        let status = match &e {
            ModelStoreError::Io { .. } | ModelStoreError::Corrupt { .. } => {
                return ApiError::Internal(e.to_string())
            }
            ModelStoreError::Bundle(B::UntrustedKey(_) | B::BadSignature | B::BadKey) => {
                StatusCode::FORBIDDEN
            }
            ModelStoreError::NotNewer { .. } | ModelStoreError::NoPrevious => StatusCode::CONFLICT,
            ModelStoreError::Load { .. } | ModelStoreError::SelfTest { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ModelStoreError::Bundle(_) | ModelStoreError::FileName(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::Refused { status, reason: e.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let body = shared::protocol::ApiError { error: self.client_message() };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::TooManyFailures { retry_after_s } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
