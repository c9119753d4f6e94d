//! A W3C WebDriver session with Debian's headless chromium through its chromedriver, spoken
//! over ureq (the agent's own HTTP client), plus chromedriver's passage to the DevTools
//! protocol for what WebDriver has no command for (colour scheme, a phone's viewport). A
//! client crate (headless_chrome: 30,000 lines of generated protocol types) compiled into
//! every test binary, the VM's static ones too, cost CI minutes for a dozen commands.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The key W3C WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Driver {
    child: Child,
    base: String,
    session: String,
}

fn call(method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut r = match body {
        Some(b) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(b.to_string()),
        None if method == "DELETE" => agent.delete(url).call(),
        None => agent.get(url).call(),
    }
    .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = r.status().as_u16();
    let text = r
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{url}: {e}: {text}"))?;
    if status != 200 {
        return Err(format!("{method} {url}: HTTP {status}: {}", v["value"]));
    }
    Ok(v["value"].clone())
}

impl Driver {
    pub fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver (scripts/setup.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while call("GET", &format!("{base}/status"), None).map_or(true, |v| v["ready"] != true) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver never ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
            }
        }}});
        let session = call("POST", &format!("{base}/session"), Some(caps))
            .unwrap_or_else(|e| panic!("a chromium session: {e}"))["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        Driver {
            child,
            base,
            session,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        call(method, &url, body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Loads `url` and waits for the page to have loaded.
    pub fn open(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The value of the JavaScript expression `expr` (a promise's once it settles).
    pub fn js(&self, expr: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": format!("return ({expr});"), "args": [] })),
        )
    }

    /// A DevTools protocol command.
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
    }

    /// Waits up to 30 s for an element `selector` matches; its WebDriver id.
    pub fn wait_for(&self, selector: &str) -> String {
        let t0 = Instant::now();
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let found = call(
                "POST",
                &url,
                Some(json!({ "using": "css selector", "value": selector })),
            );
            match found {
                Ok(v) => {
                    return v[ELEMENT]
                        .as_str()
                        .unwrap_or_else(|| panic!("{selector}: no element in {v}"))
                        .to_string()
                }
                Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                    panic!("{selector} never appeared: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Clicks the element `selector` matches, as a user's pointer does (WebDriver scrolls it
    /// into view and dispatches the mouse events at its centre), and waits for a navigation
    /// it starts.
    pub fn click(&self, selector: &str) {
        // A live update can replace the element between finding and clicking it.
        for _ in 0..3 {
            let id = self.wait_for(selector);
            let url = format!("{}/session/{}/element/{id}/click", self.base, self.session);
            match call("POST", &url, Some(json!({}))) {
                Ok(_) => return,
                Err(e) if e.contains("stale element") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{selector}: replaced under every click");
    }

    /// The viewport as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        decode_base64(self.cmd("GET", "/screenshot", None).as_str().unwrap())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = call(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            None,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (value(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
