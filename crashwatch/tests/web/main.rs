//! The crash page in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol, reads the agent's page after real programs crashed (a Go panic, a C segfault,
//! a Python exception whose message is markup, a crash loop): the list, a click into a
//! cluster, the markup shown as text with nothing run, a new crash arriving without a
//! reload, light and dark, wide and narrow (screenshots under target/screenshots/). And the
//! listener's guard over plain HTTP: the token, the login cookie, the Host check.
#[path = "../common/mod.rs"]
mod common;
mod guard;

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    gobuild::{self, Flavour},
    Agent, Crasher,
};
use headless_chrome::{
    protocol::cdp::{Emulation, Page},
    Browser, LaunchOptions, Tab,
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

fn js(tab: &Tab, expr: &str) -> Value {
    let r = tab
        .evaluate(expr, false)
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
    r.value.unwrap_or(Value::Null)
}

/// `expr` (a JSON.stringify call) parsed.
fn js_json(tab: &Tab, expr: &str) -> Value {
    serde_json::from_str(js(tab, expr).as_str().unwrap_or("null")).unwrap()
}

fn wait_js(tab: &Tab, expr: &str, what: &str) {
    let t0 = Instant::now();
    while js(tab, expr) != Value::Bool(true) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: {expr} never held; the page: {}",
            js(
                tab,
                "JSON.stringify({ updated: document.body.dataset.updated, \
                live: document.getElementById('live').className, \
                rows: [...document.querySelectorAll('.cluster')].map(c => \
                    c.className + ' ' + c.querySelector('.headline').textContent) })"
            )
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

fn screenshot(tab: &Tab, name: &str) -> PathBuf {
    let png = tab
        .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let p = shots_dir().join(format!("web-{name}.png"));
    std::fs::write(&p, png).unwrap();
    p
}

fn scheme(tab: &Tab, dark: bool) {
    tab.call_method(Emulation::SetEmulatedMedia {
        media: None,
        features: Some(vec![Emulation::MediaFeature {
            name: "prefers-color-scheme".into(),
            value: if dark { "dark" } else { "light" }.into(),
        }]),
    })
    .unwrap();
}

fn viewport(tab: &Tab, width: u32, height: u32, mobile: bool) {
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width,
        height,
        device_scale_factor: 1.0,
        mobile,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .unwrap();
}

fn open(tab: &Tab, url: &str) {
    tab.navigate_to(url)
        .unwrap()
        .wait_until_navigated()
        .unwrap();
}

fn click(tab: &Tab, selector: &str) {
    tab.wait_for_element(selector).unwrap().click().unwrap();
    tab.wait_until_navigated().unwrap();
}

fn browser() -> Browser {
    let opts = LaunchOptions::default_builder()
        .path(Some(PathBuf::from("/usr/bin/chromium")))
        .sandbox(false)
        .window_size(Some((1280, 900)))
        .idle_browser_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    Browser::new(opts).expect("launching /usr/bin/chromium (scripts/setup.sh installs it)")
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

    let b = browser();
    let tab = b.new_tab().unwrap();
    tab.call_method(Page::AddScriptToEvaluateOnNewDocument {
        source: "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };".into(),
        world_name: None,
        include_command_line_api: None,
        run_immediately: None,
    })
    .unwrap();
    viewport(&tab, 1280, 900, false);
    scheme(&tab, false);
    let base = format!("http://{addr}");
    open(&tab, &format!("{base}/"));
    tab.wait_for_element(".cluster").unwrap();
    let rows = js_json(
        &tab,
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
    let mut shots = vec![screenshot(&tab, "list-light-wide")];

    // A click opens the Go cluster: its last words, the goroutine, the frames.
    click(
        &tab,
        &format!(".cluster[data-id='{}'] a.headline", go_c["id"]),
    );
    tab.wait_for_element(".report").unwrap();
    let go_page = js_json(
        &tab,
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
    shots.push(screenshot(&tab, "cluster-go-light-wide"));

    // The segfault: the native stack with file:line, the signal, its registers.
    open(&tab, &format!("{base}/"));
    click(
        &tab,
        &format!(".cluster[data-id='{}'] a.headline", segv["id"]),
    );
    let native = js_json(
        &tab,
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
    shots.push(screenshot(&tab, "cluster-segv-light-wide"));

    // The markup: text on the list and on its page, and nothing of it ran.
    open(&tab, &format!("{base}/cluster/{}", pyc["id"]));
    let py_page = js_json(
        &tab,
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
    open(&tab, &format!("{base}/"));
    tab.wait_for_element(".cluster").unwrap();
    wait_js(
        &tab,
        "!document.getElementById('live').hidden",
        "the live badge",
    );
    js(&tab, "window.__same = 'this document'");
    Crasher::run("fpe");
    wait_js(
        &tab,
        "[...document.querySelectorAll('.cluster.changed .headline')].some(h => h.textContent.startsWith('SIGFPE'))",
        "the SIGFPE crash listed without a reload",
    );
    assert_eq!(js(&tab, "window.__same"), "this document");
    assert_eq!(js(&tab, "window.__alerts.length"), 0);

    // Dark and narrow: the colours change, a phone's width holds the page without sideways
    // scrolling, and the cluster rows stack to one column.
    scheme(&tab, true);
    assert_eq!(
        js(&tab, "getComputedStyle(document.body).backgroundColor"),
        "rgb(20, 22, 26)"
    );
    shots.push(screenshot(&tab, "list-dark-wide"));
    viewport(&tab, 390, 844, true);
    wait_js(&tab, "innerWidth === 390", "the narrow viewport");
    assert_eq!(
        js(&tab, "document.documentElement.scrollWidth <= innerWidth"),
        true,
        "no sideways scrolling on a phone"
    );
    assert_eq!(
        js(&tab, "getComputedStyle(document.querySelector('.cluster')).gridTemplateColumns.split(' ').length"),
        1
    );
    shots.push(screenshot(&tab, "list-dark-narrow"));
    open(&tab, &format!("{base}/cluster/{}", segv["id"]));
    assert_eq!(
        js(&tab, "document.documentElement.scrollWidth <= innerWidth"),
        true
    );
    shots.push(screenshot(&tab, "cluster-segv-dark-narrow"));
    scheme(&tab, false);
    shots.push(screenshot(&tab, "cluster-segv-light-narrow"));
    open(&tab, &format!("{base}/"));
    shots.push(screenshot(&tab, "list-light-narrow"));
    for s in &shots {
        println!("screenshot: {}", s.display());
    }
}
