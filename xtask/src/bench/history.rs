//! The crash history under load: an agent that keeps every report (`--keep-per-cluster`
//! above the storm) takes a storm of C crashes, then the store's size per report, the
//! agent's RSS with that history, how fast the store took the reports, and how long
//! `crashwatch report` takes over them.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{
    observer::{cpu_and_rss, spawn_ready, state_dir},
    report::median,
    tools::Tools,
};

pub struct History {
    pub crashes: usize,
    /// Reports the agent printed.
    pub received: usize,
    pub storm_secs: f64,
    /// From the storm's start until the agent's store thread had written every report.
    pub stored_secs: f64,
    pub stored: u64,
    pub not_stored: u64,
    /// The agent's own count at stop: reports per second of its store thread's busy time.
    pub store_rate: f64,
    pub db_bytes: u64,
    pub rss_kib: u64,
    /// Median milliseconds of `crashwatch report`, `report --json` and `report ID`.
    pub list_ms: f64,
    pub list_json_ms: f64,
    pub one_ms: f64,
}

pub fn run(t: &Tools, crashes: usize) -> Result<History> {
    eprintln!("xtask bench: crash history of {crashes} reports");
    let dir = state_dir();
    let mut c = Command::new(&t.agent);
    c.args(["run", "--no-pin", "--output", "json", "--state-dir"])
        .arg(&dir)
        .args(["--keep-per-cluster", "10000000", "--store-max-mib", "65536"]);
    let log: Arc<Mutex<Vec<String>>> = Default::default();
    let out: Arc<Mutex<Vec<(String, u64)>>> = Default::default();
    let mut agent = spawn_ready(c, "crashwatch: ready", out.clone(), log.clone())?;
    let pid = agent.id();
    let t0 = Instant::now();
    super::sinks::storm(t, crashes);
    let storm_secs = t0.elapsed().as_secs_f64();
    // Everything in the store (or nothing more arriving for 10 s: a report can be lost,
    // and the agent counts it), then the agent's RSS with its history.
    let crashed = (crashes / 2) * 2;
    let (mut last, mut still) = (0, Instant::now());
    loop {
        let n = stored_count(&t.agent, &dir)?;
        if n >= crashed as u64 || still.elapsed() > Duration::from_secs(10) {
            break;
        }
        if n != last {
            (last, still) = (n, Instant::now());
        }
        thread::sleep(Duration::from_millis(500));
    }
    let stored_secs = t0.elapsed().as_secs_f64();
    let rss_kib = cpu_and_rss(pid).1;
    // SAFETY: a plain kill of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = agent.wait();
    thread::sleep(Duration::from_millis(200));
    let (stored, not_stored) = log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            let rest = l.strip_prefix("crashwatch: crash history: ")?;
            let n: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            Some((n.first().copied()?, n.get(1).copied()?))
        })
        .unwrap_or((0, 0));
    let store_rate = log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            let (head, _) = l.split_once(" reports/s while writing")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or(0.0);
    let db_bytes = ["crashwatch.db", "crashwatch.db-wal"]
        .iter()
        .filter_map(|f| fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let report = |args: &[&str]| -> Result<f64> {
        let mut v = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let st = Command::new(&t.agent)
                .arg("report")
                .arg("--state-dir")
                .arg(&dir)
                .args(args)
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("crashwatch report {args:?} failed");
            }
            v.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(&mut v))
    };
    let received = out.lock().unwrap().len();
    let history = History {
        received,
        crashes: crashed,
        storm_secs,
        stored_secs,
        stored,
        not_stored,
        store_rate,
        db_bytes,
        rss_kib,
        list_ms: report(&[])?,
        list_json_ms: report(&["--json"])?,
        one_ms: report(&["1"])?,
    };
    let _ = fs::remove_dir_all(&dir);
    Ok(history)
}

/// Crashes the store holds: the clusters' counts (`report --json`), which each insert keeps.
fn stored_count(agent: &Path, dir: &Path) -> Result<u64> {
    let out = Command::new(agent)
        .arg("report")
        .arg("--state-dir")
        .arg(dir)
        .args(["--json", "--limit", "100000"])
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .map(|a| a.iter().filter_map(|c| c["count"].as_u64()).sum())
        .unwrap_or(0))
}

/// The page's section on the crash history.
pub fn markdown(h: &History) -> String {
    let per = |x: f64| x / h.crashes.max(1) as f64;
    format!(
        "## Crash history\n\n\
         {n} C crashes (null write, abort, divide by zero in rotation, two at a time) under an agent \
         that keeps every report (`--keep-per-cluster 10000000`): three clusters, {n} reports \
         with their full JSON.\n\n\
         | measure | value |\n|---|---|\n\
         | crashes run | {n} in {storm:.1} s |\n\
         | reports received on the agent's stdout | {received} |\n\
         | reports sent to the store / not stored (the agent's counts at stop) | {stored} / {lost} |\n\
         | the store's last report | {stored_secs:.1} s after the storm's start: at least {rate:.0} reports/s (the storm's own pace bounds it) |\n\
         | the store's capacity (reports per second of its thread's busy time, the agent's count) | {store_rate:.0} reports/s |\n\
         | database size | {mib:.1} MiB, {per_report:.0} bytes per report |\n\
         | agent RSS with that history | {rss} MiB |\n\
         | `crashwatch report` (the cluster list) | {list:.0} ms |\n\
         | `crashwatch report --json` | {json:.0} ms |\n\
         | `crashwatch report 1` (one cluster, its latest 3 reports) | {one:.0} ms |\n\n\
         Times are medians of 5 runs of the command, process start included.\n",
        n = h.crashes,
        received = h.received,
        storm = h.storm_secs,
        stored = h.stored,
        lost = h.not_stored,
        store_rate = h.store_rate,
        stored_secs = h.stored_secs,
        rate = h.stored.saturating_sub(h.not_stored) as f64 / h.stored_secs.max(0.001),
        mib = h.db_bytes as f64 / (1 << 20) as f64,
        per_report = per(h.db_bytes as f64),
        rss = h.rss_kib / 1024,
        list = h.list_ms,
        json = h.list_json_ms,
        one = h.one_ms,
    )
}
