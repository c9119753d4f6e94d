//! The crash page in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol, reads the agent's page after real programs crashed (a Go panic, a C segfault,
//! a Python exception whose message is markup, a crash loop): the list, a click into a
//! cluster, the markup shown as text with nothing run, a new crash arriving without a
//! reload, light and dark, wide and narrow (screenshots under target/screenshots/). And the
//! listener's guard over plain HTTP: the token, the login cookie, the Host check.
#[path = "../common/mod.rs"]
mod common;
mod driver;
mod guard;

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use driver::Driver;

use common::{
    gobuild::{self, Flavour},
    Agent, Crasher,
};
use serde_json::Value;

const SCRIPT: &str = "<script>alert(1)</script>";

/// (status code, headers, body) of one request.
pub fn http(addr: &str, request: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

pub fn get(addr: &str, path: &str, headers: &str) -> (u16, String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n"),
    )
}

fn api(addr: &str, path: &str) -> Value {
    let (code, _, body) = get(addr, path, "");
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The listed cluster whose headline starts with `head`, once it holds `count` crashes.
fn wait_cluster(addr: &str, head: &str, count: u64) -> Value {
    let t0 = Instant::now();
    loop {
        let l = api(addr, "/api/clusters?limit=200");
        let found = l["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["headline"].as_str().unwrap().starts_with(head))
            .cloned();
        match found {
            Some(c) if c["count"] == count => return c,
            f if t0.elapsed() > Duration::from_secs(30) => {
                panic!("no cluster {head:?} with {count} crashes: {f:?}\n{l:#}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `expr` (a JSON.stringify call) parsed.
fn js_json(d: &Driver, expr: &str) -> Value {
    serde_json::from_str(d.js(expr).as_str().unwrap_or("null")).unwrap()
}

fn wait_js(d: &Driver, expr: &str, what: &str) {
    let t0 = Instant::now();
    while d.js(expr) != Value::Bool(true) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: {expr} never held; the page: {}",
            d.js("JSON.stringify({ updated: document.body.dataset.updated, \
                live: document.getElementById('live').className, \
                rows: [...document.querySelectorAll('.cluster')].map(c => \
                    c.className + ' ' + c.querySelector('.headline').textContent) })")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn shots_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn screenshot(d: &Driver, name: &str) -> PathBuf {
    let png = d.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let p = shots_dir().join(format!("web-{name}.png"));
    std::fs::write(&p, png).unwrap();
    p
}

fn scheme(d: &Driver, dark: bool) {
    let value = if dark { "dark" } else { "light" };
    d.cdp(
        "Emulation.setEmulatedMedia",
        serde_json::json!({ "features": [{ "name": "prefers-color-scheme", "value": value }] }),
    );
}

fn viewport(d: &Driver, width: u32, height: u32, mobile: bool) {
    d.cdp(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
    );
}

#[test]
fn the_page_shows_real_crashes_escapes_markup_and_updates_live() {
    let agent = Agent::start(&[]);
    let addr = agent.metrics_addr().expect("the agent listens");
    // The crashes: a Go panic, a segfault, markup in a Python exception, a loop of aborts.
    let go = Command::new(gobuild::build("1.26", Flavour::Static))
        .arg("string")
        .output()
        .unwrap();
    assert!(!go.status.success());
    Crasher::run("null");
    let py = Command::new("python3")
        .args(["-c", &format!("raise RuntimeError({SCRIPT:?})")])
        .output()
        .unwrap();
    assert_eq!(py.status.code(), Some(1));
    for _ in 0..5 {
        Crasher::run("abort");
    }
    let go_c = wait_cluster(&addr, "panic: boom: a string", 1);
    let segv = wait_cluster(&addr, "SIGSEGV", 1);
    let pyc = wait_cluster(&addr, &format!("RuntimeError: {SCRIPT}"), 1);
    let abrt = wait_cluster(&addr, "SIGABRT", 5);
    assert_eq!(abrt["loop"], true, "{abrt}");
    assert_eq!(segv["loop"], false);
    assert_eq!(abrt["last_24h"]["counts"][23], 5, "{abrt}");

    let d = Driver::start();
    d.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };" }),
    );
    viewport(&d, 1280, 900, false);
    scheme(&d, false);
    let base = format!("http://{addr}");
    d.open(&format!("{base}/"));
    d.wait_for(".cluster");
    let rows = js_json(
        &d,
        "JSON.stringify([...document.querySelectorAll('.cluster')].map(li => ({
            id: +li.dataset.id, count: +li.dataset.count,
            kind: li.querySelector('.badge.kind').textContent,
            headline: li.querySelector('.headline').textContent,
            loop: !!li.querySelector('.badge.loop'),
            frame: (li.querySelector('.frame') || {}).textContent || '',
            bars: li.querySelectorAll('svg.spark rect:not(.zero)').length,
            day: li.querySelector('svg.spark title').textContent })))",
    );
    let row = |c: &Value| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == c["id"])
            .unwrap_or_else(|| panic!("cluster {} not listed: {rows:#}", c["id"]))
            .clone()
    };
    let (r_go, r_segv, r_py, r_abrt) = (row(&go_c), row(&segv), row(&pyc), row(&abrt));
    assert_eq!(
        (r_go["kind"].as_str(), r_go["count"].as_u64()),
        (Some("go_panic"), Some(1))
    );
    assert_eq!(
        (r_segv["kind"].as_str(), r_segv["count"].as_u64()),
        (Some("signal"), Some(1))
    );
    assert!(
        r_segv["frame"].as_str().unwrap().contains("null_write"),
        "{r_segv}"
    );
    assert_eq!(
        r_py["headline"],
        format!("RuntimeError: {SCRIPT}"),
        "markup shown as text"
    );
    assert_eq!(
        (r_abrt["count"].as_u64(), r_abrt["loop"].as_bool()),
        (Some(5), Some(true))
    );
    assert_eq!(r_go["loop"], false);
    assert_eq!(r_abrt["day"], "5 crashes in the last 24 hours, by hour");
    // One bar for the hour they crashed in (two if the hour turned meanwhile).
    let bars = r_abrt["bars"].as_u64().unwrap();
    assert!((1..=2).contains(&bars), "{r_abrt}");
    let mut shots = vec![screenshot(&d, "list-light-wide")];

    // A click opens the Go cluster: its last words, the goroutine, the frames.
    d.click(&format!(".cluster[data-id='{}'] a.headline", go_c["id"]));
    d.wait_for(".report");
    let go_page = js_json(
        &d,
        "JSON.stringify({
            words: document.querySelector('.words .headline-big').textContent,
            frames: document.querySelector('.words .stack').textContent,
            go: document.querySelector('.go').textContent,
            last: (document.querySelector('.lastwords pre') || {}).textContent || '' })",
    );
    assert!(
        go_page["words"]
            .as_str()
            .unwrap()
            .contains("panic: boom: a string"),
        "{go_page}"
    );
    let frames = go_page["frames"].as_str().unwrap();
    assert!(
        frames.contains("main.main") && frames.contains("main.go:63"),
        "{go_page}"
    );
    assert!(
        go_page["go"]
            .as_str()
            .unwrap()
            .contains("example.com/gocrash"),
        "{go_page}"
    );
    assert!(
        go_page["last"]
            .as_str()
            .unwrap()
            .contains("goroutine 1 [running]"),
        "{go_page}"
    );
    shots.push(screenshot(&d, "cluster-go-light-wide"));

    // The segfault: the native stack with file:line, the signal, its registers.
    d.open(&format!("{base}/"));
    d.click(&format!(".cluster[data-id='{}'] a.headline", segv["id"]));
    let native = js_json(
        &d,
        "JSON.stringify({
            stack: document.querySelector('.native').textContent,
            how: document.querySelector('.how').textContent,
            regs: document.querySelectorAll('.regs dt').length })",
    );
    let stack = native["stack"].as_str().unwrap();
    assert!(
        stack.contains("null_write") && stack.contains("crasher.c:"),
        "{stack}"
    );
    assert!(
        native["how"]
            .as_str()
            .unwrap()
            .contains("SIGSEGV (11) SEGV_MAPERR"),
        "{native}"
    );
    assert!(native["regs"].as_u64().unwrap() >= 16, "{native}");
    shots.push(screenshot(&d, "cluster-segv-light-wide"));

    // The markup: text on the list and on its page, and nothing of it ran.
    d.open(&format!("{base}/cluster/{}", pyc["id"]));
    let py_page = js_json(
        &d,
        "JSON.stringify({
            headline: document.querySelector('.words .headline-big').textContent,
            cmdline: document.querySelector('.cmdline').textContent,
            scripts: [...document.scripts].map(s => s.getAttribute('src')),
            alerts: window.__alerts })",
    );
    assert_eq!(
        py_page["headline"],
        format!("RuntimeError: {SCRIPT}"),
        "{py_page}"
    );
    assert!(
        py_page["cmdline"].as_str().unwrap().contains(SCRIPT),
        "{py_page}"
    );
    assert_eq!(
        py_page["scripts"].as_array().unwrap().len(),
        1,
        "only the page's own script: {py_page}"
    );
    assert!(py_page["scripts"][0]
        .as_str()
        .unwrap()
        .starts_with("/assets/app.js"));
    assert_eq!(py_page["alerts"], serde_json::json!([]), "nothing ran");

    // Live: a new crash shows up in the open list, the document never reloaded.
    d.open(&format!("{base}/"));
    d.wait_for(".cluster");
    wait_js(
        &d,
        "!document.getElementById('live').hidden",
        "the live badge",
    );
    d.js("window.__same = 'this document'");
    Crasher::run("fpe");
    wait_js(
        &d,
        "[...document.querySelectorAll('.cluster.changed .headline')].some(h => h.textContent.startsWith('SIGFPE'))",
        "the SIGFPE crash listed without a reload",
    );
    assert_eq!(d.js("window.__same"), "this document");
    assert_eq!(d.js("window.__alerts.length"), 0);

    // Dark and narrow: the colours change, a phone's width holds the page without sideways
    // scrolling, and the cluster rows stack to one column.
    scheme(&d, true);
    assert_eq!(
        d.js("getComputedStyle(document.body).backgroundColor"),
        "rgb(20, 22, 26)"
    );
    shots.push(screenshot(&d, "list-dark-wide"));
    viewport(&d, 390, 844, true);
    wait_js(&d, "innerWidth === 390", "the narrow viewport");
    assert_eq!(
        d.js("document.documentElement.scrollWidth <= innerWidth"),
        true,
        "no sideways scrolling on a phone"
    );
    assert_eq!(
        d.js("getComputedStyle(document.querySelector('.cluster')).gridTemplateColumns.split(' ').length"),
        1
    );
    shots.push(screenshot(&d, "list-dark-narrow"));
    d.open(&format!("{base}/cluster/{}", segv["id"]));
    assert_eq!(
        d.js("document.documentElement.scrollWidth <= innerWidth"),
        true
    );
    shots.push(screenshot(&d, "cluster-segv-dark-narrow"));
    scheme(&d, false);
    shots.push(screenshot(&d, "cluster-segv-light-narrow"));
    d.open(&format!("{base}/"));
    shots.push(screenshot(&d, "list-light-narrow"));
    for s in &shots {
        println!("screenshot: {}", s.display());
    }
}
