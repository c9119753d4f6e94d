//! The outputs under a crash storm: the same storm under an agent with stdout alone (the
//! baseline) and with every output on (the file, a webhook, OTLP, the crash history, and
//! /metrics scraped throughout); each output's pace from the agent's own counts
//! (`crashwatch_reports_delivered_total`, read from /metrics every 50 ms), the agent's CPU
//! and peak RSS beside the baseline's; then the webhook and OTLP endpoint down through a
//! storm and back up: how fast the spools replay.
//!
//! The endpoint is a small HTTP server on a thread here, answering 200 to everything, so
//! what is measured is crashwatch's side.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    observer::{cpu_and_rss, peak_rss_kib, spawn_ready, state_dir},
    tools::Tools,
};

/// Answers every request 200; counts them; can refuse connections for a while.
struct Endpoint {
    port: u16,
    served: Arc<AtomicU64>,
    up: Arc<AtomicBool>,
}

impl Endpoint {
    fn start() -> Result<Endpoint> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let e = Endpoint {
            port,
            served: Arc::default(),
            up: Arc::default(),
        };
        e.bring_up()?;
        Ok(e)
    }

    fn bring_up(&self) -> Result<()> {
        let l = TcpListener::bind(("127.0.0.1", self.port))?;
        l.set_nonblocking(true)?;
        self.up.store(true, Ordering::SeqCst);
        let (up, served) = (self.up.clone(), self.served.clone());
        thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (served, up) = (served.clone(), up.clone());
                        thread::spawn(move || {
                            if answer(s, &up).is_ok() {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(())
    }

    fn take_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
    }
}

/// Answers the requests of one connection, kept alive as HTTP/1.1 does, until the client
/// closes it or the endpoint is taken down.
fn answer(s: TcpStream, up: &AtomicBool) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    while up.load(Ordering::SeqCst) {
        let mut len = 0usize;
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        while r.read_line(&mut line)? > 2 {
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            line.clear();
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    }
    Ok(())
}

/// The agent's delivered counts by output, from its /metrics.
fn delivered(addr: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(mut s) = TcpStream::connect(addr) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("crashwatch_reports_delivered_total{sink=\"") else {
            continue;
        };
        if let Some((sink, n)) = rest.split_once("\"} ") {
            out.insert(sink.to_string(), n.parse().unwrap_or(0));
        }
    }
    out
}

/// One output's pace: (first report, last report) times after the storm's start, seconds.
pub struct Pace {
    pub first: f64,
    pub last: f64,
    pub count: u64,
}

pub struct Run {
    pub crashes: usize,
    pub storm_secs: f64,
    pub per_sink: BTreeMap<String, Pace>,
    pub cpu_ms: f64,
    pub peak_rss_mib: f64,
}

pub struct Sinks {
    pub baseline: Run,
    pub all: Run,
    /// stdout and one network output: a webhook, then the fleet hub (`--hub`, the same
    /// endpoint): what `--hub` adds to an agent beside what a webhook does.
    pub webhook_alone: Run,
    /// The same with `--webhook-batch 100`.
    pub webhook_batched: Run,
    pub hub_alone: Run,
    /// Reports spooled during the outage, and how long each spool took to empty once the
    /// endpoint was back (seconds), by output.
    pub replay: (u64, BTreeMap<String, f64>),
}

/// `n` C crashes (null write, abort, divide by zero in rotation), two at a time.
pub fn storm(t: &Tools, n: usize) {
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let crasher = t.crasher.clone();
            thread::spawn(move || {
                for i in 0..n / 2 {
                    let _ = Command::new(&crasher)
                        .arg(["null", "abort", "fpe"][(i + w) % 3])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

struct Agent {
    child: std::process::Child,
    metrics: String,
}

impl Agent {
    fn start(t: &Tools, extra: &[String]) -> Result<Agent> {
        let mut c = Command::new(&t.agent);
        c.args([
            "run",
            // Unpinned: nothing of a measured agent may stay attached after it.
            "--no-pin",
            "--output",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state_dir())
        .args(extra);
        let log: Arc<Mutex<Vec<String>>> = Default::default();
        let child = spawn_ready(c, "crashwatch: ready", Default::default(), log.clone())?;
        let metrics = log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                Some(
                    l.split("metrics on http://")
                        .nth(1)?
                        .split('/')
                        .next()?
                        .to_string(),
                )
            })
            .context("the agent did not say where /metrics is")?;
        Ok(Agent { child, metrics })
    }

    /// Waits until every output has `n` reports more than at `before` (or nothing moved
    /// for 20 s), noting when each got its first and its last.
    fn follow(
        &self,
        t0: Instant,
        before: &BTreeMap<String, u64>,
        n: u64,
    ) -> BTreeMap<String, Pace> {
        let mut pace: BTreeMap<String, Pace> = BTreeMap::new();
        let mut still = Instant::now();
        loop {
            let now = delivered(&self.metrics);
            let at = t0.elapsed().as_secs_f64();
            let mut moved = false;
            for (sink, v) in &now {
                let got = v - before.get(sink).copied().unwrap_or(0);
                let p = pace.entry(sink.clone()).or_insert(Pace {
                    first: f64::NAN,
                    last: f64::NAN,
                    count: 0,
                });
                if got > 0 && p.first.is_nan() {
                    p.first = at;
                }
                if got > p.count {
                    (p.count, p.last, moved) = (got, at, true);
                }
            }
            if moved {
                still = Instant::now();
            }
            let done = !pace.is_empty() && pace.values().all(|p| p.count >= n);
            if done || still.elapsed() > Duration::from_secs(20) {
                return pace;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

fn measure(t: &Tools, n: usize, extra: &[String]) -> Result<Run> {
    let a = Agent::start(t, extra)?;
    let pid = a.child.id();
    let before = delivered(&a.metrics);
    let cpu0 = cpu_and_rss(pid).0;
    let t0 = Instant::now();
    // The outputs are followed while the storm runs.
    let crashing = {
        let t = t.clone();
        thread::spawn(move || {
            storm(&t, n);
            t0.elapsed().as_secs_f64()
        })
    };
    let crashed = (n / 2 * 2) as u64;
    let per_sink = a.follow(t0, &before, crashed);
    let storm_secs = crashing.join().unwrap_or(f64::NAN);
    let cpu_ms = (cpu_and_rss(pid).0 - cpu0) * 1e3;
    let peak_rss_mib = peak_rss_kib(pid) as f64 / 1024.0;
    a.stop();
    Ok(Run {
        crashes: crashed as usize,
        storm_secs,
        per_sink,
        cpu_ms,
        peak_rss_mib,
    })
}

pub fn run(t: &Tools, n: usize) -> Result<Sinks> {
    eprintln!("xtask bench: the outputs under a storm of {n} crashes");
    let baseline = measure(t, n, &[])?;
    let ep = Endpoint::start()?;
    let file = state_dir().with_extension("jsonl");
    let outputs = |retry: &str| -> Vec<String> {
        [
            "--output-file",
            &file.display().to_string(),
            "--webhook",
            &format!("http://127.0.0.1:{}/hook", ep.port),
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{}", ep.port),
            "--webhook-batch",
            "100",
            "--webhook-retry-max",
            retry,
        ]
        .map(String::from)
        .to_vec()
    };
    let all = measure(t, n, &outputs("60"))?;
    let _ = std::fs::remove_file(&file);
    let hook = format!("http://127.0.0.1:{}", ep.port);
    let webhook_alone = measure(t, n, &["--webhook".into(), format!("{hook}/hook")])?;
    let webhook_batched = measure(
        t,
        n,
        &[
            "--webhook".into(),
            format!("{hook}/hook"),
            "--webhook-batch".into(),
            "100".into(),
        ],
    )?;
    let token = state_dir().with_extension("token");
    std::fs::write(&token, "bench-ingest-token-0123456789\n")?;
    let hub_alone = measure(
        t,
        n,
        &[
            "--hub".into(),
            hook.clone(),
            "--hub-token-file".into(),
            token.display().to_string(),
        ],
    )?;
    let _ = std::fs::remove_file(&token);

    // The outage: both network outputs spool through a storm, then the endpoint returns.
    let a = Agent::start(t, &outputs("1"))?;
    let before = delivered(&a.metrics);
    ep.take_down();
    storm(t, n);
    // Everything spooled (what the agent took) before the endpoint returns.
    thread::sleep(Duration::from_secs(3));
    let spooled = (n / 2 * 2) as u64;
    ep.bring_up()?;
    let t0 = Instant::now();
    let pace = a.follow(t0, &before, spooled);
    a.stop();
    let _ = std::fs::remove_file(&file);
    let replay = pace
        .into_iter()
        .filter(|(s, _)| s == "webhook" || s == "otlp")
        .map(|(s, p)| (s, if p.count >= spooled { p.last } else { f64::NAN }))
        .collect::<BTreeMap<_, _>>();
    if replay.is_empty() {
        bail!("neither network output delivered after the outage");
    }
    Ok(Sinks {
        baseline,
        all,
        webhook_alone,
        webhook_batched,
        hub_alone,
        replay: (spooled, replay),
    })
}

pub fn markdown(s: &Sinks) -> String {
    let a = &s.all;
    let mut out = format!(
        "## Outputs\n\n\
         A storm of {n} C crashes (two at a time; {storm:.1} s) under an agent with stdout alone, \
         then under one with every output on: stdout, `--output-file`, a `--webhook` and \
         `--otlp-endpoint` (an HTTP server on this machine answering 200), the crash history, \
         and /metrics read every 50 ms for the agent's own delivered counts. Each output's pace \
         is its reports over the time from its first report to its last.\n\n\
         | output | reports | first .. last (s after the storm's start) | reports/s |\n|---|---|---|---|\n",
        n = a.crashes,
        storm = a.storm_secs
    );
    for (sink, p) in &a.per_sink {
        let span = p.last - p.first;
        out += &format!(
            "| {sink} | {} | {:.2} .. {:.2} | {:.0} |\n",
            p.count,
            p.first,
            p.last,
            p.count as f64 / span.max(1e-3)
        );
    }
    out +=
        "\nOutputs that keep up with the storm show its own pace. The webhook and OTLP send one \
             request at a time, in order, on a connection kept alive; each request carries up to \
             100 waiting reports (OTLP's log records; the webhook's JSON array, \
             `--webhook-batch 100` here).\n";
    let b = &s.baseline;
    out += &format!(
        "\n| agent | CPU during the storm | per report | peak RSS |\n|---|---|---|---|\n\
         | stdout alone (baseline) | {:.0} ms | {:.2} ms | {:.1} MiB |\n\
         | every output | {:.0} ms ({:.2}×) | {:.2} ms | {:.1} MiB ({:.2}×) |\n",
        b.cpu_ms,
        b.cpu_ms / b.crashes as f64,
        b.peak_rss_mib,
        a.cpu_ms,
        a.cpu_ms / b.cpu_ms.max(1e-3),
        a.cpu_ms / a.crashes as f64,
        a.peak_rss_mib,
        a.peak_rss_mib / b.peak_rss_mib.max(1e-3),
    );
    for (name, r) in [
        ("stdout and a webhook", &s.webhook_alone),
        (
            "stdout and a webhook, `--webhook-batch 100`",
            &s.webhook_batched,
        ),
        ("stdout and `--hub`", &s.hub_alone),
    ] {
        out += &format!(
            "| {name} | {:.0} ms ({:.2}×) | {:.2} ms | {:.1} MiB ({:.2}×) |\n",
            r.cpu_ms,
            r.cpu_ms / b.cpu_ms.max(1e-3),
            r.cpu_ms / r.crashes as f64,
            r.peak_rss_mib,
            r.peak_rss_mib / b.peak_rss_mib.max(1e-3),
        );
    }
    out += "\n`--hub` is the webhook's sender (the same spool: one file per report, its JSON, \
            removed at the 2xx) plus a heartbeat every 30 s; its cost beside the webhook's is \
            the row above it.\n";
    let (spooled, replay) = &s.replay;
    out += &format!(
        "\nThe endpoint down through another storm of {spooled} crashes (both spools fill), then \
         back (`--webhook-retry-max 1`): time until each spool was empty, and its replay rate.\n\n\
         | output | spooled | emptied after | replayed/s |\n|---|---|---|---|\n"
    );
    for (sink, secs) in replay {
        out += &format!(
            "| {sink} | {spooled} | {secs:.2} s | {:.0} |\n",
            *spooled as f64 / secs.max(1e-3)
        );
    }
    out
}
