//! The robot page in a real browser: headless Chromium (Debian's `chromium`,
//! installed by scripts/setup.sh) loads `/robot` from the real host, a mouse
//! click lands on linus's "blink" button, and the page shows the eyes light
//! up while the blink runs, from the pins' real state.

mod common;
use common::*;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol session with one page.
struct Page {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Page {
    fn call_in(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send to chromium");
        loop {
            let reply = self.ws.read().expect("read from chromium");
            let Message::Text(text) = reply else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("CDP JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call_in(Some(&session), method, params)
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, what: &str, expr: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expr);
            if v != Value::Null && v != json!(false) {
                return v;
            }
            assert!(Instant::now() < deadline, "page never showed {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A real mouse click at the centre of the element `id`.
    fn click(&mut self, id: &str) {
        let rect = self.eval(&format!(
            "(() => {{ const r = document.getElementById({id:?}).getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (rect[0].as_f64().expect("x"), rect[1].as_f64().expect("y"));
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }
}

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return name.to_string();
        }
    }
    panic!("no chromium here (scripts/setup.sh installs Debian's `chromium`)");
}

fn start_browser() -> (Browser, Page) {
    let profile = tempfile::tempdir().expect("profile dir");
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            "--window-size=1100,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    // Chromium writes its DevTools port and browser path here once listening.
    let port_file = profile.path().join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (port, path) = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                break (port.to_string(), path.to_string());
            }
        }
        assert!(Instant::now() < deadline, "chromium did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let browser = Browser {
        child,
        _profile: profile,
    };
    let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}{path}")).expect("CDP");
    let mut page = Page {
        ws,
        session: String::new(),
        next_id: 0,
    };
    let target = page.call_in(None, "Target.createTarget", json!({ "url": "about:blank" }));
    let attached = page.call_in(
        None,
        "Target.attachToTarget",
        json!({ "targetId": target["targetId"], "flatten": true }),
    );
    page.session = attached["sessionId"].as_str().expect("session").to_string();
    page.call("Page.enable", json!({}));
    page.call("Runtime.enable", json!({}));
    (browser, page)
}

#[test]
fn clicking_blink_on_the_robot_page_lights_the_eyes() {
    wasm("robot");
    let g = Gantry::start(&workspace().join("spin.toml"), &[]);
    let (_browser, mut page) = start_browser();
    page.call("Page.navigate", json!({ "url": g.url("/robot") }));

    // The page is up and showing the real (resting) pin state.
    page.wait_for(
        "linus's eyes",
        "document.getElementById('linus-left-eye')?.dataset.state === 'off'",
        Duration::from_secs(15),
    );
    assert_eq!(page.eval("document.title"), json!("Gantry robots"));
    assert_eq!(
        page.eval("document.getElementById('linus-left-eye').classList.contains('on')"),
        json!(false)
    );

    page.click("linus-blink");
    // While the blink request runs, the page sees the eyes on...
    page.wait_for(
        "an eye lit",
        "document.getElementById('linus-left-eye').classList.contains('on')",
        Duration::from_secs(5),
    );
    save_screenshot(&mut page, &workspace().join("target/robot-page.png"));
    // ...and off again once it is over; torvald never blinked.
    page.wait_for(
        "the blink done",
        "document.querySelector('#linus .status').textContent === 'done' && \
         document.getElementById('linus-left-eye').dataset.state === 'off'",
        Duration::from_secs(10),
    );
    assert_eq!(
        page.eval("document.getElementById('torvald-left-eye').dataset.state"),
        json!("off")
    );
    // The host saw a real click's request.
    let metrics = common_metrics(&g);
    assert!(
        metrics.contains(
            "gantry_gpio_operations_total{component=\"robot\",label=\"linus-left-eye\",operation=\"set\"} 10"
        ),
        "{metrics}"
    );
}

fn common_metrics(g: &Gantry) -> String {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async { get(&g.admin_url("/metrics")).await.text() })
}

/// Keeps a picture of the page for people to look at (target/robot-page.png).
fn save_screenshot(page: &mut Page, path: &Path) {
    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
    if let Some(data) = shot["data"].as_str().and_then(base64_decode) {
        let _ = std::fs::write(path, data);
    }
}

/// Standard base64 (what CDP sends screenshots in).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}
