//! The router driven with `oneshot`: no socket, a real capture log and model store in a
//! temporary folder, and a stand-in model.

use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt;
use image::RgbImage;
use proptest::prelude::*;
use shared::bundle::Bundle;
use shared::manifest::{sha256_hex, InputSpec, Precision, TrainingInfo};
use shared::protocol::{CaptureList, ModelReply};
use shared::{BBox, CaptureReason, Detection};
use tower::ServiceExt;

use super::*;
use crate::capture::budget::Budget;
use crate::capture::{CaptureDraft, LogConfig};
use crate::detector::{DetectError, Detector};
use crate::runtime::status::{RuntimeStatus, StatusBoard};

const TOKEN: &str = "test-token-0123456789";

struct Fixed(String, f32);

impl Detector for Fixed {
    fn detect(&mut self, _frame: &RgbImage) -> Result<Detection, DetectError> {
        Ok(Detection { score: self.1, bbox: BBox::new(0.2, 0.2, 0.6, 0.6) })
    }
    fn model_version(&self) -> &str {
        &self.0
    }
    fn threshold(&self) -> f32 {
        0.5
    }
}

/// Stand-in models: the "ONNX" bytes are `score=<f>`.
fn loader() -> ModelLoader {
    Arc::new(|path: &Path| {
        let m = ModelManifest::from_json(&std::fs::read(path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let text =
            std::fs::read_to_string(path.with_file_name(&m.file)).map_err(|e| e.to_string())?;
        let score =
            text.strip_prefix("score=").and_then(|s| s.parse().ok()).ok_or("not a model")?;
        Ok(Box::new(Fixed(m.version, score)) as Box<dyn Detector>)
    })
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

fn bundle(model: &str, n: u64) -> Vec<u8> {
    let m = ModelManifest {
        version: format!("v{n}"),
        version_number: n,
        file: "face.onnx".into(),
        sha256: sha256_hex(model.as_bytes()),
        precision: Precision::Fp32,
        input: InputSpec::default(),
        threshold: 0.5,
        training: TrainingInfo::default(),
        metrics: Default::default(),
        created: "2026-12-03T00:00:00Z".into(),
    };
    Bundle::sign(m.to_json(), model.as_bytes().to_vec(), &key()).unwrap().to_bytes()
}

fn jpeg(v: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(RgbImage::from_pixel(32, 24, image::Rgb([v, v, v])))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    app: Router,
    handles: RuntimeHandles,
}

/// A device with `captures` stored captures and an empty model store.
fn fixture(captures: usize) -> Fixture {
    fixture_allowing(captures, 5)
}

/// A fixture whose API allows `max_auth_failures` failed tokens a minute per address.
fn fixture_allowing(captures: usize, max_auth_failures: u32) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let config = LogConfig {
        dir: tmp.path().join("data"),
        fsync_interval: Duration::ZERO,
        budget: Budget { max_bytes: 1 << 30, max_count: 10_000 },
        min_free_bytes: 0,
    };
    let (mut log, _) = CaptureLog::open(config).unwrap();
    for i in 0..captures {
        let draft = CaptureDraft {
            time_ms: 1_764_700_000_000 + i as i64,
            reason: CaptureReason::Uncertain,
            detection: Detection { score: 0.5, bbox: BBox::new(0.1, 0.1, 0.4, 0.4) },
            model_version: "v0".into(),
            width: 32,
            height: 24,
        };
        log.append(draft, &jpeg(i as u8 * 10)).unwrap();
    }
    let handles = RuntimeHandles {
        log: Arc::new(Mutex::new(log)),
        status: StatusBoard::new(RuntimeStatus::starting("v0", "test frames")),
        force_capture: Arc::new(AtomicBool::new(false)),
        next_detector: Arc::new(Mutex::new(None)),
        shutdown: Arc::new(AtomicBool::new(false)),
    };
    let store = ModelStore::open(
        &tmp.path().join("models"),
        loader(),
        vec![key().verifying_key()],
        SelfTestConfig::default(),
    )
    .unwrap();
    let config = ApiConfig { max_auth_failures, ..ApiConfig::default() };
    let state =
        ApiState::new(handles.clone(), store, Token::new(TOKEN), &config, "cam-1", tmp.path())
            .unwrap();
    Fixture { app: router(state, &config), handles, _tmp: tmp }
}

fn request(method: Method, uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from(body))
        .unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Vec<u8>, header::HeaderMap) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body, headers)
}

fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<shared::protocol::ApiError>(body).unwrap().error
}

#[tokio::test]
async fn every_v1_route_needs_the_token_and_says_nothing_without_it() {
    // Six routes, six failures: more than the usual fixture's limit, which would turn the
    // last answers into 429s.
    let f = fixture_allowing(1, 10);
    for (method, uri) in [
        (Method::GET, "/v1/status"),
        (Method::GET, "/v1/captures"),
        (Method::GET, "/v1/captures/1/image"),
        (Method::POST, "/v1/captures/ack"),
        (Method::PUT, "/v1/model"),
        (Method::POST, "/v1/model/rollback"),
    ] {
        let req = Request::builder().method(method.clone()).uri(uri).body(Body::empty()).unwrap();
        let (status, body, _) = send(&f.app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(error_text(&body), "unauthorized");
    }
    let (status, body, _) =
        send(&f.app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("fdet_auth_failures_total 6"), "{text}");
    assert!(text.contains("fdet_inference_seconds_bucket{le=\"+Inf\"}"), "{text}");
}

#[tokio::test]
async fn failed_tokens_are_rate_limited() {
    let f = fixture(0);
    let wrong = || {
        Request::get("/v1/status")
            .header(header::AUTHORIZATION, "Bearer guess")
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..5 {
        assert_eq!(send(&f.app, wrong()).await.0, StatusCode::UNAUTHORIZED);
    }
    let (status, _, headers) = send(&f.app, wrong()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key(header::RETRY_AFTER));
    // Blocked even with the right token until the window passes.
    let (status, _, _) = send(&f.app, request(Method::GET, "/v1/status", vec![])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn captures_as_json_and_postcard_then_image_and_ack() {
    let f = fixture(5);
    let (status, body, _) =
        send(&f.app, request(Method::GET, "/v1/captures?after=2&limit=2", vec![])).await;
    assert_eq!(status, StatusCode::OK);
    let list: CaptureList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.captures.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(list.last_seq, Some(5));

    let mut req = request(Method::GET, "/v1/captures?after=0", vec![]);
    req.headers_mut().insert(header::ACCEPT, POSTCARD.parse().unwrap());
    let (status, body, headers) = send(&f.app, req).await;
    assert_eq!(status, StatusCode::OK);
    let records = shared::protocol::decode_record_stream(&body).unwrap();
    assert_eq!(records.len(), 5);
    assert_eq!(headers[shared::protocol::LAST_SEQ_HEADER], "5");

    let (status, image, _) =
        send(&f.app, request(Method::GET, "/v1/captures/3/image", vec![])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_hex(&image), records[2].image_sha256);
    let (status, body, _) =
        send(&f.app, request(Method::GET, "/v1/captures/99/image", vec![])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_text(&body).contains("99"));

    let mut ack = request(Method::POST, "/v1/captures/ack", br#"{"seq":4}"#.to_vec());
    ack.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    let (status, body, _) = send(&f.app, ack).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(f.handles.log.lock().unwrap().usage().acked_seq, 4);
    let (_, body, _) = send(&f.app, request(Method::GET, "/v1/status", vec![])).await;
    let status: shared::protocol::DeviceStatus = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status.device_id.as_str(), status.acked_seq, status.last_seq),
        ("cam-1", 4, Some(5))
    );
    assert!(status.last_sync_ms.is_some());
}

const POSTCARD: &str = shared::protocol::POSTCARD_STREAM;

#[tokio::test]
async fn bad_requests_get_one_sentence() {
    let f = fixture(1);
    for (method, uri, body) in [
        (Method::GET, "/v1/captures?after=minus", vec![]),
        (Method::GET, "/v1/captures/abc/image", vec![]),
        (Method::POST, "/v1/captures/ack", b"{\"seq\":-1}".to_vec()),
        (Method::POST, "/v1/captures/ack", vec![b'x'; 20_000]),
    ] {
        let (status, body, _) = send(&f.app, request(method.clone(), uri, body)).await;
        assert!(status.is_client_error(), "{method} {uri}: {status}");
        assert!(!error_text(&body).is_empty());
    }
    let (status, _, _) = send(&f.app, request(Method::GET, "/v2/nothing", vec![])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn push_refuse_and_rollback_swap_the_running_model() {
    let f = fixture(3);
    let (status, body, _) =
        send(&f.app, request(Method::PUT, "/v1/model", bundle("score=0.7", 2))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let reply: ModelReply = serde_json::from_slice(&body).unwrap();
    assert_eq!((reply.version.as_str(), reply.replaced), ("v2", None));
    let queued =
        f.handles.next_detector.lock().unwrap().take().expect("a model queued for the loop");
    assert_eq!(queued.model_version(), "v2");

    let (status, body, _) =
        send(&f.app, request(Method::PUT, "/v1/model", bundle("score=0.7", 2))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_text(&body).contains("not newer"), "{}", error_text(&body));
    let (status, body, _) =
        send(&f.app, request(Method::PUT, "/v1/model", bundle("score=0.1", 3))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_text(&body).contains("self-test"), "{}", error_text(&body));
    let (status, _, _) = send(&f.app, request(Method::PUT, "/v1/model", b"junk".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(f.handles.next_detector.lock().unwrap().is_none(), "a refusal queued nothing");

    send(&f.app, request(Method::PUT, "/v1/model", bundle("score=0.8", 4))).await;
    let (status, body, _) = send(&f.app, request(Method::POST, "/v1/model/rollback", vec![])).await;
    assert_eq!(status, StatusCode::OK);
    let reply: ModelReply = serde_json::from_slice(&body).unwrap();
    assert_eq!((reply.version.as_str(), reply.replaced.as_deref()), ("v2", Some("v4")));
    let (status, _, _) = send(&f.app, request(Method::POST, "/v1/model/rollback", vec![])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, body, _) = send(&f.app, request(Method::GET, "/metrics", vec![])).await;
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("fdet_model_info{version=\"v2\""), "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the query, path and body, the API answers with a status below 500.
    #[test]
    fn request_parsing_never_fails_the_server(
        path in "[a-z0-9/{}%?&=.-]{0,40}",
        query in "[a-z0-9&=%+-]{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..300),
        route in 0usize..5,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let f = fixture(2);
        let (method, base) = [
            (Method::GET, "/v1/captures"),
            (Method::GET, "/v1/captures/"),
            (Method::POST, "/v1/captures/ack"),
            (Method::PUT, "/v1/model"),
            (Method::GET, "/v1/status"),
        ][route].clone();
        let uri = format!("{base}{}?{query}", path.replace('/', ""));
        let Ok(req) = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::from(body))
        else {
            return Ok(());
        };
        let (status, _, _) = runtime.block_on(send(&f.app, req));
        prop_assert!(status.as_u16() < 500, "{uri}: {status}");
    }
}

#[test]
fn tls_files_are_checked_before_anything_starts() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures/tls");
    let (cert, key) = (fixtures.join("device.pem"), fixtures.join("device.key"));
    load_tls(&cert, &key).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("key.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let err = format!("{:#}", load_tls(&cert, &garbage).unwrap_err());
    assert!(err.contains("api.tls_key") && err.contains("key.pem"), "{err}");
    let err = format!("{:#}", load_tls(&dir.path().join("gone.pem"), &key).unwrap_err());
    assert!(err.contains("gone.pem"), "{err}");
}
