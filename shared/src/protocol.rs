//! The HTTP protocol between the host and edge devices, versioned under `/v1`.
//!
//! Only the message bodies live here; the routes are served by `edge` and called by
//! `host`. Every route except `/metrics` needs `Authorization: Bearer <token>`.

use serde::{Deserialize, Serialize};

use crate::CaptureRecord;

/// Path prefix of the current protocol version.
pub const API_PREFIX: &str = "/v1";

/// `POST /v1/captures/ack`: the host has durably stored every capture up to `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest sequence number stored on the host.
    pub seq: u64,
}

/// `GET /v1/captures?after=N&limit=K` as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureList {
    /// Records with `seq > after`, in sequence order.
    pub captures: Vec<CaptureRecord>,
    /// Highest sequence number the device holds, so the host knows if more remain.
    pub last_seq: Option<u64>,
}

/// The body of every error response: one sentence saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong with the request, and what would fix it.
    pub error: String,
}
