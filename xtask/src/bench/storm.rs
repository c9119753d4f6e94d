//! The crash storm and the agent's own cost: an idle agent watched for a while, then crashing
//! processes two at a time (Go panics, C segfaults, aborts), every report matched to its
//! process, with the crash-to-report latency, the losses and the agent's CPU and RSS.
use std::{
    collections::{BTreeMap, HashSet},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{
    observer::{cpu_and_rss, Observer, Running},
    tools::Tools,
};

/// What the idle agent and the storm measured.
pub struct Storm {
    pub idle_secs: u64,
    /// Percent of one CPU while idle.
    pub idle_cpu: f64,
    /// RSS samples (KiB) while idle, one per second.
    pub idle_rss: Vec<u64>,
    pub crashes: usize,
    pub secs: f64,
    /// Percent of one CPU during the storm.
    pub cpu: f64,
    /// RSS samples (KiB) during the storm.
    pub rss: Vec<u64>,
    pub reports: usize,
    /// Reports received by kind.
    pub kinds: BTreeMap<String, u64>,
    /// The sum of the reports' `lost_before`.
    pub lost_before: u64,
    /// The agent's stop line.
    pub losses: String,
    /// The agent's line on symbolization time per report, at its stop.
    pub symbolization: String,
    /// Frames named, and frames, across the reports.
    pub frames_named: (u64, u64),
    pub latencies_us: Vec<u64>,
}

pub fn run(t: &Tools, storm: usize, idle_secs: u64) -> Result<Storm> {
    eprintln!("xtask bench: idle agent for {idle_secs} s");
    let running = Running::start(Observer::Crashwatch, &t.agent)?;
    let pid = running.pid().unwrap();
    thread::sleep(Duration::from_secs(2));
    let (c0, _) = cpu_and_rss(pid);
    let mut idle_rss = Vec::new();
    for _ in 0..idle_secs {
        thread::sleep(Duration::from_secs(1));
        idle_rss.push(cpu_and_rss(pid).1);
    }
    let (c1, _) = cpu_and_rss(pid);
    let idle_cpu = (c1 - c0) / idle_secs as f64 * 100.0;

    eprintln!("xtask bench: crash storm of {storm} processes, two at a time");
    // The Go binary's first run lets the agent probe it before the storm.
    let _ = Command::new(&t.gocrash)
        .arg("noop")
        .stdout(Stdio::null())
        .status();
    let probe_wait = Instant::now();
    while !running
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("probing Go binary") && l.contains("gocrash"))
    {
        if probe_wait.elapsed() > Duration::from_secs(60) {
            bail!("the agent never probed the storm's Go binary");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let pids = Arc::new(Mutex::new(Vec::new()));
    let storm_rss = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (storm_rss, done) = (storm_rss.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                storm_rss.lock().unwrap().push(cpu_and_rss(pid).1);
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (s0, _) = cpu_and_rss(pid);
    let t0 = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (pids, crasher, gocrash) = (pids.clone(), t.crasher.clone(), t.gocrash.clone());
            let n = storm / 2;
            thread::spawn(move || {
                for i in 0..n {
                    let mut cmd = match (i + w) % 3 {
                        0 => {
                            let mut c = Command::new(&gocrash);
                            c.arg("string");
                            c
                        }
                        1 => {
                            let mut c = Command::new(&crasher);
                            c.arg("null");
                            c
                        }
                        _ => {
                            let mut c = Command::new(&crasher);
                            c.arg("abort");
                            c
                        }
                    };
                    let child = cmd
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    pids.lock().unwrap().push(child.id());
                    let _ = child.wait_with_output();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let storm_secs = t0.elapsed().as_secs_f64();
    let pids = pids.lock().unwrap().clone();
    let wait = Instant::now();
    let wanted: HashSet<u32> = pids.iter().copied().collect();
    let received = |reports: &[(String, u64)]| -> Vec<(serde_json::Value, u64)> {
        reports
            .iter()
            .filter_map(|(l, at)| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .map(|v| (v, *at))
            })
            .filter(|(v, _)| {
                v["pid"]
                    .as_u64()
                    .is_some_and(|p| wanted.contains(&(p as u32)))
            })
            .collect()
    };
    while received(&running.reports.lock().unwrap()).len() < pids.len()
        && wait.elapsed() < Duration::from_secs(30)
    {
        thread::sleep(Duration::from_millis(100));
    }
    let (s1, _) = cpu_and_rss(pid);
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let got = received(&running.reports.lock().unwrap());
    let latencies: Vec<u64> = got
        .iter()
        .filter_map(|(v, at)| Some(at.saturating_sub(parse_time_us(v["time"].as_str()?)?)))
        .collect();
    let kinds = {
        let mut k = BTreeMap::new();
        for (v, _) in &got {
            *k.entry(v["kind"].as_str().unwrap_or("?").to_string())
                .or_insert(0u64) += 1;
        }
        k
    };
    let lost_before: u64 = got
        .iter()
        .filter_map(|(v, _)| v["lost_before"].as_u64())
        .sum();
    let stop_log = running.stop();
    let losses = stop_log
        .iter()
        .find(|l| l.contains("stopped (kernel losses"))
        .cloned()
        .unwrap_or_default();
    let symbolization = stop_log
        .iter()
        .find(|l| l.contains("symbolization per report"))
        .cloned()
        .unwrap_or_default();
    let frames: Vec<&serde_json::Value> = got
        .iter()
        .filter_map(|(v, _)| v["stack"].as_array())
        .flatten()
        .collect();
    let frames_named = (
        frames.iter().filter(|f| f["function"].is_string()).count() as u64,
        frames.len() as u64,
    );
    let storm_rss = storm_rss.lock().unwrap().clone();
    Ok(Storm {
        idle_secs,
        idle_cpu,
        idle_rss,
        crashes: pids.len(),
        secs: storm_secs,
        cpu: (s1 - s0) / storm_secs.max(0.001) * 100.0,
        rss: storm_rss,
        reports: got.len(),
        kinds,
        lost_before,
        losses,
        symbolization,
        frames_named,
        latencies_us: latencies,
    })
}

/// `2026-11-21T16:04:05.123456Z` → µs since the epoch.
fn parse_time_us(s: &str) -> Option<u64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac_us = format!("{frac:0<6}")[..6].parse::<i64>().ok()?;
    Some(((days * 86400 + h * 3600 + mi * 60 + se) * 1_000_000 + frac_us) as u64)
}
