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

/// Media type of the binary form of `GET /v1/captures`: a stream of records, each a
/// little-endian `u32` length followed by that many bytes of `postcard`.
pub const POSTCARD_STREAM: &str = "application/x-fdet-postcard-stream";

/// Response header of `GET /v1/captures` carrying [`CaptureList::last_seq`] in the
/// binary form (absent when the device holds no capture).
pub const LAST_SEQ_HEADER: &str = "x-fdet-last-seq";

/// Largest record accepted in a postcard stream; real ones are about 150 bytes.
pub const MAX_STREAM_RECORD: usize = 64 * 1024;

/// Why a postcard record stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream ends inside a record.
    #[error("capture stream truncated after {0} complete records")]
    Truncated(usize),
    /// A record's length prefix is over [`MAX_STREAM_RECORD`].
    #[error("capture stream record {index} claims {len} bytes, over the limit")]
    TooLarge {
        /// Index of the record in the stream.
        index: usize,
        /// The claimed length.
        len: u32,
    },
    /// A record's bytes are not a capture record.
    #[error("capture stream record {index} does not decode: {reason}")]
    Decode {
        /// Index of the record in the stream.
        index: usize,
        /// The decoder's message.
        reason: String,
    },
}

/// Encodes records as a postcard stream ([`POSTCARD_STREAM`]).
pub fn encode_record_stream(records: &[CaptureRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 160);
    for record in records {
        // A record holds only strings and numbers; postcard cannot fail on it.
        let bytes = postcard::to_stdvec(record).unwrap_or_default();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decodes a postcard stream from untrusted bytes; errors, never panics.
pub fn decode_record_stream(mut bytes: &[u8]) -> Result<Vec<CaptureRecord>, StreamError> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let index = records.len();
        let (len, rest) = match bytes.split_first_chunk::<4>() {
            Some((len, rest)) => (u32::from_le_bytes(*len), rest),
            None => return Err(StreamError::Truncated(index)),
        };
        if len as usize > MAX_STREAM_RECORD {
            return Err(StreamError::TooLarge { index, len });
        }
        if rest.len() < len as usize {
            return Err(StreamError::Truncated(index));
        }
        let (body, rest) = rest.split_at(len as usize);
        let record = postcard::from_bytes(body)
            .map_err(|e| StreamError::Decode { index, reason: e.to_string() })?;
        records.push(record);
        bytes = rest;
    }
    Ok(records)
}

/// `GET /v1/status`: what a device is doing, for `host fleet status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device's name (its config, else its host name).
    pub device_id: String,
    /// Version string of the active model.
    pub model_version: String,
    /// Version number of the active model (0 when it has no manifest).
    #[serde(default)]
    pub model_version_number: u64,
    /// SHA-256 of the active model file, when known.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// Seconds since `edge run` started.
    pub uptime_s: u64,
    /// Frames per second over the last status period.
    pub fps: f32,
    /// Mean inference time, ms.
    pub inference_ms: f32,
    /// Captures stored on the device.
    pub captures_stored: u64,
    /// Bytes the captures use.
    pub capture_bytes: u64,
    /// Highest capture sequence number, if any.
    pub last_seq: Option<u64>,
    /// Highest sequence number the host acknowledged.
    pub acked_seq: u64,
    /// Free bytes on the capture file system, when known.
    #[serde(default)]
    pub free_disk_bytes: Option<u64>,
    /// When the host last acknowledged captures, ms since the Unix epoch.
    #[serde(default)]
    pub last_sync_ms: Option<i64>,
    /// Camera state (`starting`, `running`, `lost`, `finished`).
    pub camera: String,
    /// Capture state (`active`, `paused_low_space`, `disk_full`, `failing`).
    #[serde(default)]
    pub capture: String,
}

/// The body of `PUT /v1/model` and `POST /v1/model/rollback` on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReply {
    /// Version string of the model now active.
    pub version: String,
    /// Its version number.
    pub version_number: u64,
    /// SHA-256 of its ONNX file.
    pub sha256: String,
    /// Version string of the model it replaced, if any.
    pub replaced: Option<String>,
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::{BBox, CaptureReason, Detection};
    use proptest::prelude::*;

    fn record(seq: u64) -> CaptureRecord {
        CaptureRecord {
            seq,
            time_ms: 1_764_700_000_000 + seq as i64,
            reason: CaptureReason::Uncertain,
            detection: Detection { score: 0.5, bbox: BBox::new(0.1, 0.2, 0.3, 0.4) },
            model_version: "v1".into(),
            image: format!("{seq:09}.jpg"),
            image_sha256: "00".repeat(32),
            width: 640,
            height: 480,
        }
    }

    #[test]
    fn stream_round_trip_and_truncation() {
        let records: Vec<_> = (1..=3).map(record).collect();
        let bytes = encode_record_stream(&records);
        assert_eq!(decode_record_stream(&bytes).unwrap(), records);
        assert!(decode_record_stream(&[]).unwrap().is_empty());
        let cut = decode_record_stream(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(cut, StreamError::Truncated(2)), "{cut}");
        let huge = decode_record_stream(&u32::MAX.to_le_bytes()).unwrap_err();
        assert!(matches!(huge, StreamError::TooLarge { index: 0, .. }), "{huge}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_record_stream(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_streams(
            at in any::<prop::sample::Index>(),
            mask in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode_record_stream(&[record(1), record(2)]);
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = decode_record_stream(&bytes);
        }
    }
}
