//! The review page in a real browser: headless Chromium driven over the Chrome DevTools
//! protocol (a plain WebSocket), against `host review` on a loopback port with a fresh
//! data folder holding three imported captures.
//!
//! It draws a box with the mouse, rates with the keyboard, saves with Enter, and checks
//! the row in the database. A screenshot of the page is left at
//! `target/review-screenshot.png`.
//!
//! Needs Debian's `chromium` (scripts/setup.sh installs it) or `CHROMIUM=/path/to/chrome`.

#![allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/seed");
const HOST: &str = env!("CARGO_BIN_EXE_host");

/// Kills a child process when the test ends, however it ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!(
        "headless Chromium not found (tried chromium, chromium-browser, google-chrome on \
         PATH): run scripts/setup.sh, which installs Debian's chromium, or set CHROMIUM"
    );
}

/// A data folder with three of the old project's records imported.
fn data_folder(root: &Path) -> PathBuf {
    let all: Vec<Value> = serde_json::from_slice(
        &std::fs::read(format!("{SEED}/feedback/feedback_data.json")).unwrap(),
    )
    .unwrap();
    let pick: Vec<Value> = all
        .into_iter()
        .filter(|r| {
            ["/4.jpg", "/9.jpg", "/22.jpg"]
                .iter()
                .any(|n| r["image_path"].as_str().unwrap().ends_with(n))
        })
        .collect();
    assert_eq!(pick.len(), 3);
    let file = root.join("three.json");
    std::fs::write(&file, serde_json::to_vec(&pick).unwrap()).unwrap();
    let data = root.join("data");
    let status = Command::new(HOST)
        .arg("--data")
        .arg(&data)
        .args(["feedback", "import"])
        .arg(&file)
        .arg("--images")
        .arg(format!("{SEED}/rlhf/data"))
        .status()
        .unwrap();
    assert!(status.success());
    data
}

/// Starts `host review` on a free loopback port; returns it and the page address.
fn start_server(data: &Path) -> (Reaper, String) {
    let mut child = Command::new(HOST)
        .arg("--data")
        .arg(data)
        .args(["review", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("review page: ").unwrap_or_else(|| panic!("{line}"));
    (Reaper(child), url.to_owned())
}

/// Starts headless Chromium and connects to its browser endpoint.
fn start_browser(profile: &Path) -> (Reaper, WebSocket<MaybeTlsStream<TcpStream>>) {
    let child = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            "--window-size=1280,860",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reaper = Reaper(child);
    // Chromium writes the port it picked and the browser's path here once it listens.
    let port_file = profile.join("DevToolsActivePort");
    let started = Instant::now();
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&port_file) {
            if t.lines().count() >= 2 {
                break t;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "Chromium did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut lines = text.lines();
    let (port, path) = (lines.next().unwrap(), lines.next().unwrap());
    let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}{path}")).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    (reaper, ws)
}

/// A minimal DevTools client: one call at a time, events skipped.
struct Cdp {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::Text(msg.to_string().into())).unwrap();
        loop {
            let Message::Text(text) = self.ws.read().unwrap() else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            if reply["id"] == json!(self.next) {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression).unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// The value of `expression`, or the exception it threw.
    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Polls until `expression` is true; exceptions count as "not yet" (the page may still
    /// be loading).
    fn wait_for(&mut self, expression: &str) {
        let started = Instant::now();
        while self.try_eval(expression) != Ok(json!(true)) {
            assert!(started.elapsed() < Duration::from_secs(30), "timed out on {expression}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn mouse(&mut self, kind: &str, x: f64, y: f64) {
        let buttons = if kind == "mouseReleased" { 0 } else { 1 };
        self.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": buttons,
                    "clickCount": 1 }),
        );
    }

    fn key(&mut self, key: &str, code: &str, keycode: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({ "type": kind, "key": key, "code": code,
                                "windowsVirtualKeyCode": keycode });
            if kind == "keyDown" {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }
}

#[test]
fn draw_rate_and_save_in_chromium() {
    let browser = chromium();
    let tmp = tempfile::tempdir().unwrap();
    let data = data_folder(tmp.path());
    let (mut server, url) = start_server(&data);
    let (_chrome, ws) = start_browser(&tmp.path().join("profile"));
    assert!(browser.exists());
    let mut cdp = Cdp { ws, next: 0, session: None };

    let target = cdp.call("Target.createTarget", json!({ "url": url }));
    let attached = cdp
        .call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }));
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    cdp.call("Page.enable", json!({}));

    // Imported records come reviewed; show them all (lowest score first: 22.jpg, 0.061).
    cdp.wait_for("document.getElementById('f-reviewed').options.length === 3");
    cdp.eval(
        "(() => { const s = document.getElementById('f-reviewed'); s.value = ''; \
         s.dispatchEvent(new Event('change')); return true; })()",
    );
    cdp.wait_for("window.review.items.length === 3 && window.review.ready");
    let capture_id = cdp.eval("window.review.items[0].capture.id").as_i64().unwrap();
    let source = cdp.eval("window.review.items[0].capture.source");
    assert!(source.as_str().unwrap().ends_with("/22.jpg"), "{source}");

    // The image is scaled into the window and the overlay matches it.
    let rect = cdp.eval(
        "(() => { const c = document.getElementById('overlay').getBoundingClientRect(); \
         const p = document.getElementById('photo'); \
         return [c.left, c.top, c.width, c.height, p.naturalWidth, innerWidth]; })()",
    );
    let r: Vec<f64> = rect.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let (left, top, width, height) = (r[0], r[1], r[2], r[3]);
    assert!(width > 100.0 && left + width <= r[5], "overlay {r:?}");

    // Drag a new box from outside the stored one (22.jpg's reviewer box is top centre).
    let (fx1, fy1, fx2, fy2) = (0.10, 0.50, 0.45, 0.90);
    let at = |fx: f64, fy: f64| (left + fx * width, top + fy * height);
    let (x1, y1) = at(fx1, fy1);
    let (x2, y2) = at(fx2, fy2);
    cdp.mouse("mouseMoved", x1, y1);
    cdp.mouse("mousePressed", x1, y1);
    for i in 1..=10 {
        let t = f64::from(i) / 10.0;
        cdp.mouse("mouseMoved", x1 + (x2 - x1) * t, y1 + (y2 - y1) * t);
    }
    cdp.mouse("mouseReleased", x2, y2);
    cdp.key("4", "Digit4", 52, "4");
    cdp.wait_for("window.review.draft.rating === 4");

    screenshot(&mut cdp, "review-screenshot.png");

    cdp.key("Enter", "Enter", 13, "\r");
    cdp.wait_for("window.review.lastSaved !== null");
    let status = cdp.eval("document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().starts_with("Saved capture"), "{status}");
    assert_eq!(cdp.eval("window.review.index"), json!(1));
    // The next capture (9.jpg) has a model box: the page shows both colours.
    cdp.wait_for("window.review.ready");
    screenshot(&mut cdp, "review-screenshot-next.png");

    // Stop the server the way an operator would; it must shut down cleanly.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(server.0.wait().unwrap().success());

    let db = rusqlite::Connection::open(data.join("feedback.sqlite")).unwrap();
    let (n, no_face, rating, b): (i64, bool, i64, [f64; 4]) = db
        .query_row(
            "SELECT (SELECT count(*) FROM feedback), no_face, rating, x1, y1, x2, y2
             FROM feedback WHERE capture_id = ?1 ORDER BY id DESC LIMIT 1",
            [capture_id],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    [row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?],
                ))
            },
        )
        .unwrap();
    assert_eq!((n, no_face, rating), (4, false, 4));
    // Normalised to the image, whatever size it was shown at: within two screen pixels.
    let tol = 2.0 / width.min(height);
    for (got, want) in b.iter().zip([fx1, fy1, fx2, fy2]) {
        assert!((got - want).abs() < tol, "box {b:?} vs {:?}", [fx1, fy1, fx2, fy2]);
    }
}

/// Saves the page as `target/NAME`.
fn screenshot(cdp: &mut Cdp, name: &str) {
    let shot = cdp.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"));
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target_dir).unwrap();
    std::fs::write(target_dir.join(name), &png).unwrap();
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n =
            chunk.iter().fold(0u32, |acc, &d| (acc << 6) | u32::from(d)) << (6 * (4 - chunk.len()));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}
