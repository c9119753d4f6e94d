//! The simulated fleet's traffic: real reports rewritten as N nodes' agents would send them,
//! posted at set rates by a pool of keep-alive HTTP clients, every request timed.
//!
//! A scheduler thread turns each scenario's rate into jobs on a bounded queue; when the hub
//! cannot keep up, the queue fills, the scheduler waits, and the achieved rate falls below
//! the target — which is what the ramp reads as "ingest is the limit".
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Kubernetes' alphabet for generated name parts.
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A tiny deterministic generator (xorshift): the same fleet every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Who sent a report: its node, workload and build.
pub struct Origin<'a> {
    pub node: usize,
    pub namespace: &'a str,
    pub workload: &'a str,
    /// The build: image tag `1.V`, revision `rev-V` (or a name).
    pub build: &'a str,
}

/// `template` as `o`'s agent would send it: its node and boot, a fresh key (`seq`), its pod,
/// container image and build, crashed now, under `fingerprint`.
pub fn rewrite(template: &Value, o: &Origin, seq: u64, fingerprint: &str, rng: &mut Rng) -> Value {
    let mut r = template.clone();
    let node = format!("node-{:04}", o.node);
    let pick = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| SAFE[rng.below(SAFE.len() as u64) as usize] as char)
            .collect()
    };
    // A Deployment's pod: NAME-<template hash>-<5>; the hash per build, the suffix per node.
    let hash: String = o
        .build
        .bytes()
        .map(|b| SAFE[b as usize % SAFE.len()] as char)
        .chain(std::iter::repeat('b'))
        .take(9)
        .collect();
    let pod = format!("{}-{hash}-{}", o.workload, pick(rng, 5));
    r["host"] = node.clone().into();
    r["boot_id"] = format!("00000000-0000-4000-8000-{:012x}", o.node).into();
    r["pid"] = (1000 + seq % 4_000_000).into();
    r["start_time_ns"] = (seq + 1).into();
    r["time"] = super::clock::rfc3339(super::clock::now_ns()).into();
    r["fingerprint"] = fingerprint.into();
    r["k8s"] = serde_json::json!({
        "namespace": o.namespace, "pod": pod, "container": o.workload, "node": node
    });
    r["container"] = serde_json::json!({
        "id": format!("{:064x}", seq), "runtime": "containerd", "name": o.workload,
        "image": format!("registry.example/{}/{}:{}", o.namespace, o.workload, o.build)
    });
    r["go"] = serde_json::json!({ "build": { "vcs_revision": format!("rev-{}", o.build) } });
    r
}

/// A keep-alive client that hands back every status.
fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One request for the pool: a POST of `body`, or a GET when it is empty.
pub struct Job {
    pub path: &'static str,
    pub body: Vec<u8>,
    /// What it counts as in the results.
    pub kind: &'static str,
}

/// What the pool saw, per kind: latencies (µs) and failures.
#[derive(Default)]
pub struct Seen {
    pub us: std::collections::BTreeMap<&'static str, Vec<u64>>,
    pub failed: std::collections::BTreeMap<&'static str, u64>,
    /// Answers by result ("stored", "duplicate", "counted", "heard").
    pub results: std::collections::BTreeMap<String, u64>,
}

/// Keep-alive clients taking jobs off one queue.
pub struct Pool {
    pub queue: mpsc::SyncSender<Job>,
    pub seen: Arc<Mutex<Seen>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    /// `workers` clients, spread over the replicas at `bases`.
    pub fn start(bases: &[String], token: &str, workers: usize) -> Pool {
        let (tx, rx) = mpsc::sync_channel::<Job>(workers * 4);
        let rx = Arc::new(Mutex::new(rx));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let workers = (0..workers)
            .map(|i| {
                let (rx, seen) = (rx.clone(), seen.clone());
                let (base, auth) = (bases[i % bases.len()].clone(), format!("Bearer {token}"));
                thread::spawn(move || {
                    let agent = client();
                    loop {
                        let job = match rx.lock().unwrap().recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let t = Instant::now();
                        let url = format!("{base}{}", job.path);
                        // An empty body is a GET (the benchmark's HTTP floor: /healthz).
                        let answer = if job.body.is_empty() {
                            agent.get(url).call()
                        } else {
                            agent
                                .post(url)
                                .header("Authorization", &auth)
                                .header("Content-Type", "application/json")
                                .send(&job.body[..])
                        };
                        let us = t.elapsed().as_micros() as u64;
                        let mut s = seen.lock().unwrap();
                        match answer {
                            Ok(mut r) if r.status().is_success() => {
                                s.us.entry(job.kind).or_default().push(us);
                                let body = r.body_mut().read_to_string().unwrap_or_default();
                                let result = serde_json::from_str::<Value>(&body)
                                    .ok()
                                    .and_then(|v| v["result"].as_str().map(str::to_string))
                                    .unwrap_or_default();
                                *s.results.entry(result).or_default() += 1;
                            }
                            _ => *s.failed.entry(job.kind).or_default() += 1,
                        }
                    }
                })
            })
            .collect();
        Pool {
            queue: tx,
            seen,
            workers,
        }
    }

    /// Waits for every queued job.
    pub fn finish(self) -> Seen {
        drop(self.queue);
        for w in self.workers {
            let _ = w.join();
        }
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

/// Times GETs of `paths` in turn, every `every`, until `stop`: (path, µs) each.
pub fn reader(
    base: String,
    token: String,
    paths: Arc<Mutex<Vec<String>>>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(String, u64, bool)>> {
    thread::spawn(move || {
        let agent = client();
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let list = paths.lock().unwrap().clone();
            for p in list {
                let t = Instant::now();
                let ok = agent
                    .get(format!("{base}{p}"))
                    .header("Authorization", format!("Bearer {token}"))
                    .call()
                    .map(|mut r| {
                        let _ = r.body_mut().read_to_vec();
                        r.status().is_success()
                    })
                    .unwrap_or(false);
                out.push((p, t.elapsed().as_micros() as u64, ok));
            }
            thread::sleep(every);
        }
        out
    })
}

/// The `q`-th quantile (0..=1) of `v` in ms.
pub fn quantile_ms(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    s[i] as f64 / 1000.0
}
