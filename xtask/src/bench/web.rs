//! The crash page and its API over a large history: 10,000 clusters and 100,000 reports,
//! beside 100 clusters and 1,000 reports, served by the real agent; each request's latency
//! (median and p95 over interleaved rounds) and size, with `/healthz` in the same rounds as
//! the baseline (the HTTP round trip with no work). The history is real reports multiplied:
//! the agent reports a real segfault and a real Python exception, then its own database
//! (schema and all) is filled with copies of those reports spread over 30 days, so the page
//! reads what it would read on a node with that past.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{observer::spawn_ready, report::median, tools::Tools};

const ROUNDS: usize = 40;
const PORT: u16 = 19731;
const HOUR_NS: i64 = 3_600_000_000_000;

pub struct Request {
    pub label: &'static str,
    pub path: String,
    /// Milliseconds: (median, p95), per history size.
    pub ms: Vec<(f64, f64)>,
    pub bytes: Vec<usize>,
}

pub struct Web {
    /// (clusters, reports, database bytes) per history size.
    pub sizes: Vec<(usize, usize, u64)>,
    pub requests: Vec<Request>,
}

fn state_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crashwatch-bench-web-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn start(t: &Tools, dir: &Path, out: Arc<Mutex<Vec<(String, u64)>>>) -> Result<Child> {
    let mut c = Command::new(&t.agent);
    c.args(["run", "--no-pin", "--output", "json", "--listen"])
        .arg(format!("127.0.0.1:{PORT}"))
        .arg("--state-dir")
        .arg(dir);
    spawn_ready(c, "crashwatch: ready", out, Arc::default())
}

fn stop(mut agent: Child) {
    // SAFETY: a plain kill of our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let _ = agent.wait();
}

/// (status, body bytes) of `GET path`.
fn get(path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", PORT))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let head = String::from_utf8_lossy(&all[..end]);
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, all[end + 4..].to_vec()))
}

/// A real report of each kind, as the agent printed them.
fn templates(t: &Tools, dir: &Path) -> Result<Vec<String>> {
    let out: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let agent = start(t, dir, out.clone())?;
    let _ = Command::new(&t.crasher).arg("null").output();
    let _ = Command::new("python3")
        .args([
            "-c",
            "import json\ndef load(r):\n    return json.loads(r)\nload('{')",
        ])
        .output();
    let t0 = Instant::now();
    while out.lock().unwrap().len() < 2 && t0.elapsed() < Duration::from_secs(20) {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
    stop(agent);
    let v: Vec<String> = out.lock().unwrap().iter().map(|(l, _)| l.clone()).collect();
    if v.len() < 2 {
        bail!("the agent reported {} of the 2 template crashes", v.len());
    }
    Ok(v)
}

/// Fills the agent's database with `clusters` clusters of `per` reports each, their last
/// activity spread over the past 30 days.
fn fill(dir: &Path, clusters: usize, per: usize, templates: &[String]) -> Result<u64> {
    let path = dir.join("crashwatch.db");
    let mut db = rusqlite::Connection::open(&path)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    let kinds = [
        "signal",
        "go_panic",
        "runtime_error",
        "oom_kill",
        "go_fatal",
    ];
    let tx = db.transaction()?;
    for c in 0..clusters as i64 {
        let id = 1000 + c;
        // Newest first: cluster 0 was active a minute ago, the last one 30 days ago.
        let last = now - 60_000_000_000 - c * (30 * 24 * HOUR_NS / clusters as i64);
        let first = last - (per as i64) * HOUR_NS / 2;
        let kind = kinds[c as usize % kinds.len()];
        tx.execute(
            "INSERT INTO clusters (id, fingerprint, kind, headline, top_frame, count, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                id,
                format!("v1:{:016x}", 0x5eed_0000_0000u64 + c as u64),
                kind,
                format!("{kind}: handler {c} failed: index out of range [{c}] with length 4"),
                format!("svc.handler{c} (/src/svc/handler{c}.go:{})", 10 + c % 300),
                per as i64,
                first,
                last
            ],
        )?;
        for r in 0..per as i64 {
            let time = first + r * (last - first) / (per as i64).max(1);
            tx.execute(
                "INSERT INTO reports (cluster, time, exe, container, namespace, pod, node, revision, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![
                    id,
                    time,
                    format!("/usr/local/bin/svc-{}", c % 97),
                    format!("svc-{} (registry.example/svc:{})", c % 97, c % 7),
                    format!("team-{}", c % 13),
                    format!("svc-{}-{r}", c % 97),
                    "node-1",
                    format!("{:040x}", c % 31),
                    templates[(c + r) as usize % templates.len()]
                ],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO cluster_exes VALUES (?1, ?2)",
                rusqlite::params![id, format!("/usr/local/bin/svc-{}", c % 97)],
            )?;
            tx.execute(
                "INSERT INTO cluster_hours VALUES (?1, ?2, 1)
                 ON CONFLICT DO UPDATE SET count = count + 1",
                rusqlite::params![id, time / HOUR_NS],
            )?;
        }
    }
    tx.commit()?;
    Ok(std::fs::metadata(&path)?.len())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn run(t: &Tools) -> Result<Web> {
    let template_dir = state_dir("templates");
    let templates = templates(t, &template_dir)?;
    let mut requests: Vec<Request> = Vec::new();
    let mut sizes = Vec::new();
    for (clusters, per) in [(100usize, 10usize), (10_000, 10)] {
        eprintln!(
            "xtask bench: crash page over {clusters} clusters, {} reports",
            clusters * per
        );
        let dir = state_dir(&clusters.to_string());
        // The agent makes its database (schema and all), then stops while it is filled.
        let agent = start(t, &dir, Arc::default())?;
        stop(agent);
        let bytes = fill(&dir, clusters, per, &templates)?;
        sizes.push((clusters, clusters * per, bytes));
        let agent = start(t, &dir, Arc::default())?;
        let mid = 1000 + clusters as i64 / 2;
        let (_, body) = get(&format!("/api/clusters/{mid}?limit=1"))?;
        let detail: serde_json::Value = serde_json::from_slice(&body)?;
        let report = detail["reports"][0]["id"].as_i64().context("a report id")?;
        let paths: Vec<(&'static str, String)> = vec![
            ("baseline: /healthz", "/healthz".into()),
            ("page: clusters (first 50)", "/".into()),
            ("page: clusters, kind filter", "/?kind=oom_kill".into()),
            (
                "page: text search matching nothing (walks 5,000)",
                "/?q=no-such-text".into(),
            ),
            (
                "page: one cluster, its latest report in full",
                format!("/cluster/{mid}"),
            ),
            ("API: clusters (50)", "/api/clusters".into()),
            (
                "API: clusters (200, the largest page)",
                "/api/clusters?limit=200".into(),
            ),
            ("API: one cluster", format!("/api/clusters/{mid}")),
            ("API: one report", format!("/api/reports/{report}")),
            ("asset: app.css", "/assets/app.css".into()),
            ("asset: app.js", "/assets/app.js".into()),
        ];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut body_bytes = vec![0usize; paths.len()];
        for round in 0..ROUNDS + 3 {
            for (i, (_, p)) in paths.iter().enumerate() {
                let t0 = Instant::now();
                let (code, body) = get(p)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if code != 200 {
                    bail!("{p}: HTTP {code}: {}", String::from_utf8_lossy(&body));
                }
                body_bytes[i] = body.len();
                // The first rounds warm the page cache and the connection's statements.
                if round >= 3 {
                    times[i].push(ms);
                }
            }
        }
        stop(agent);
        for (i, (label, p)) in paths.into_iter().enumerate() {
            let mut v = times[i].clone();
            let stat = (median(&mut v), pct(&mut v, 0.95));
            match requests.iter_mut().find(|r| r.label == label) {
                Some(r) => {
                    r.ms.push(stat);
                    r.bytes.push(body_bytes[i]);
                }
                None => requests.push(Request {
                    label,
                    path: p,
                    ms: vec![stat],
                    bytes: vec![body_bytes[i]],
                }),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&template_dir);
    Ok(Web { sizes, requests })
}

pub fn markdown(w: &Web) -> String {
    let mut md = String::from("## Crash page\n\n");
    let (small, big) = (&w.sizes[0], &w.sizes[w.sizes.len() - 1]);
    md.push_str(&format!(
        "The agent's crash page and API over a history of {} clusters and {} reports ({:.0} MiB of SQLite), beside {} clusters and {} reports ({:.1} MiB), each served by the real agent (`crashwatch run`) after it reported a real segfault and a real Python exception, whose reports fill the history (copies spread over 30 days, 10 per cluster). {ROUNDS} interleaved rounds over every request after 3 warm-up rounds; one client, `Connection: close`; median and p95 in milliseconds, and the ratio of the large history's median to `/healthz`'s (the round trip without work) in the same rounds.\n\n",
        big.0, big.1, big.2 as f64 / 1048576.0, small.0, small.1, small.2 as f64 / 1048576.0
    ));
    md.push_str(&format!(
        "| request | {} clusters: median / p95 | {} clusters: median / p95 | / baseline | bytes |\n|---|---|---|---|---|\n",
        small.0, big.0
    ));
    let base = w.requests[0].ms[w.sizes.len() - 1].0;
    for r in &w.requests {
        let cells: Vec<String> =
            r.ms.iter()
                .map(|(m, p)| format!("{m:.2} / {p:.2}"))
                .collect();
        let last = r.ms[r.ms.len() - 1].0;
        md.push_str(&format!(
            "| {} (`{}`) | {} | {:.1}× | {} |\n",
            r.label,
            r.path,
            cells.join(" | "),
            last / base,
            r.bytes[r.bytes.len() - 1]
        ));
    }
    let page = |l: &str| {
        w.requests
            .iter()
            .find(|r| r.label.starts_with(l))
            .map_or(0, |r| r.bytes[r.bytes.len() - 1])
    };
    let first_visit =
        page("page: clusters (first") + page("asset: app.css") + page("asset: app.js");
    md.push_str(&format!(
        "\nTransfer size of a first visit to `/` (the page with 50 clusters, its stylesheet and script; no compression, the assets cached for a day after): {:.1} KiB; a cluster's page: {:.1} KiB.\n",
        first_visit as f64 / 1024.0,
        page("page: one cluster") as f64 / 1024.0
    ));
    md
}
