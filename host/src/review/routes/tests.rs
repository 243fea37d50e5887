use axum::body::Body;
use axum::http::Request as HttpRequest;
use shared::{CaptureReason, CaptureRecord, Detection};
use tower::ServiceExt;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    ids: Vec<CaptureId>,
}

fn fixture(token: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for (seq, score) in [(1u64, 0.8f32), (2, 0.3)] {
        let image = format!("jpeg bytes {seq}").into_bytes();
        let record = CaptureRecord {
            seq,
            time_ms: 1_764_700_000_000,
            reason: CaptureReason::Uncertain,
            detection: Detection { score, bbox: BBox::new(0.2, 0.2, 0.6, 0.7) },
            model_version: "v1".into(),
            image: format!("{seq}.jpg"),
            image_sha256: shared::manifest::sha256_hex(&image),
            width: 640,
            height: 480,
        };
        ids.push(store.add_capture("cam-1", &record, &image).unwrap());
    }
    let state = Arc::new(AppState {
        store: Mutex::new(store),
        token: token.map(str::to_owned),
        scale: vec!["5: perfect".into()],
    });
    Fixture { _dir: dir, state, ids }
}

async fn call(f: &Fixture, req: HttpRequest<Body>) -> (StatusCode, String) {
    let res = router(f.state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str) -> HttpRequest<Body> {
    HttpRequest::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: impl Into<Body>) -> HttpRequest<Body> {
    HttpRequest::post(uri).header("content-type", "application/json").body(body.into()).unwrap()
}

fn verdict(face: &str, rating: i64) -> String {
    format!(r#"{{"face": {face}, "no_face": false, "rating": {rating}, "comment": "ok"}}"#)
}

#[tokio::test]
async fn page_and_assets_are_served() {
    let f = fixture(None);
    let (status, body) = call(&f, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("/assets/review.js"));
    assert_eq!(call(&f, get("/assets/review.css")).await.0, StatusCode::OK);
    let (status, body) = call(&f, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no such page"));
}

#[tokio::test]
async fn queue_lists_lowest_score_first_and_filters() {
    let f = fixture(None);
    let (status, body) = call(&f, get("/api/queue?reviewed=false")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<i64> =
        items.as_array().unwrap().iter().map(|i| i["capture"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [f.ids[1].0, f.ids[0].0]);
    let (status, body) = call(&f, get("/api/queue?reviewed=maybe")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("queue filter"), "{body}");
    let (status, body) = call(&f, get("/api/meta")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("cam-1") && body.contains("5: perfect"), "{body}");
}

#[tokio::test]
async fn a_valid_verdict_is_stored() {
    let f = fixture(None);
    let id = f.ids[0];
    let uri = format!("/api/captures/{id}/feedback");
    let (status, body) = call(&f, post(&uri, verdict("[0.1, 0.2, 0.5, 0.9]", 4))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let no_face = r#"{"face": null, "no_face": true, "rating": 0, "reviewer": " ann "}"#;
    assert_eq!(call(&f, post(&uri, no_face)).await.0, StatusCode::CREATED);

    {
        let store = f.state.store.lock().unwrap();
        let rows = store.export_rows().unwrap();
        assert_eq!(rows.len(), 2);
        let first = rows[0].correction.unwrap();
        assert!((first[3] - 0.9).abs() < 1e-6 && rows[0].rating == 4);
        let latest = store.latest_feedback(id).unwrap().unwrap();
        assert_eq!((latest.face, latest.rating, latest.reviewer.as_str()), (None, 0, "ann"));
    }

    let (status, body) = call(&f, get(&format!("/api/captures/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"reviewer\":\"ann\""), "{body}");
    let (status, body) = call(&f, get(&format!("/api/captures/{id}/image"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "jpeg bytes 1"));
}

#[tokio::test]
async fn bad_verdicts_get_a_4xx_saying_what_is_wrong() {
    let f = fixture(None);
    let uri = format!("/api/captures/{}/feedback", f.ids[0]);
    let cases = [
        (verdict("[0.1, 0.2, 1.5, 0.9]", 3), StatusCode::BAD_REQUEST, "[0, 1]"),
        (verdict("[0.5, 0.2, 0.4, 0.9]", 3), StatusCode::BAD_REQUEST, "x2 > x1"),
        (verdict("[0.1, 0.2, 0.5, 0.9]", 9), StatusCode::BAD_REQUEST, "rating 9"),
        (verdict("[0.1, 0.2, 0.5, 0.9]", -1), StatusCode::BAD_REQUEST, "rating -1"),
        (verdict("null", 3), StatusCode::BAD_REQUEST, "draw the face box"),
        ("{not json".to_owned(), StatusCode::BAD_REQUEST, "not a valid verdict"),
        (
            r#"{"face": null, "no_face": true, "rating": 1, "x": 1}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown field `x`",
        ),
        ("x".repeat(BODY_LIMIT + 1), StatusCode::PAYLOAD_TOO_LARGE, "byte limit"),
    ];
    for (body, want, says) in cases {
        let (status, text) = call(&f, post(&uri, body)).await;
        assert_eq!(status, want, "{text}");
        assert!(text.contains(says), "{text} should say {says}");
    }
    let (status, text) =
        call(&f, post("/api/captures/999/feedback", verdict("[0.1, 0.2, 0.5, 0.9]", 3))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("capture 999 does not exist"), "{text}");
    let (status, text) = call(&f, get("/api/captures/abc")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("not a number"), "{text}");
    assert!(f.state.store.lock().unwrap().export_rows().unwrap().is_empty());
}

#[tokio::test]
async fn the_token_guards_the_api_but_not_the_page() {
    let f = fixture(Some("s3cret-token"));
    assert_eq!(call(&f, get("/")).await.0, StatusCode::OK);
    let (status, body) = call(&f, get("/api/queue")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("token"), "{body}");
    assert_eq!(call(&f, get("/api/queue?token=wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&f, get("/api/queue?token=s3cret-token")).await.0, StatusCode::OK);
    let bearer = HttpRequest::get("/api/meta")
        .header("authorization", "Bearer s3cret-token")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&f, bearer).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_percent_encoded_token_in_the_query_is_decoded() {
    let f = fixture(Some("a+b/c=d&e"));
    // What the page's encodeURIComponent makes of it.
    let ok = get("/api/queue?limit=5&token=a%2Bb%2Fc%3Dd%26e");
    assert_eq!(call(&f, ok).await.0, StatusCode::OK);
    let raw = get("/api/queue?token=a+b/c=d&e");
    assert_eq!(call(&f, raw).await.0, StatusCode::UNAUTHORIZED);
}
