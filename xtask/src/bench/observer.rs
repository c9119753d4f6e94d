//! The observers a workload runs under (none, crashwatch, and the peer tools), started and
//! stopped with their output drained, and the timings and readings taken of them.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

pub const BPFTRACE: &str =
    "tracepoint:signal:signal_deliver { @sig[args->sig] = count(); } tracepoint:sched:sched_process_exit { @exit = count(); }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observer {
    None,
    Crashwatch,
    /// crashwatch with `--last-words off`: what the write hooks cost, beside it.
    CrashwatchQuiet,
    Bpftrace,
    Libbpf,
}

impl Observer {
    pub fn is_crashwatch(self) -> bool {
        matches!(self, Observer::Crashwatch | Observer::CrashwatchQuiet)
    }

    pub fn name(self) -> &'static str {
        match self {
            Observer::None => "no observer",
            Observer::Crashwatch => "crashwatch",
            Observer::CrashwatchQuiet => "crashwatch --last-words off",
            Observer::Bpftrace => "bpftrace one-liner",
            Observer::Libbpf => "exitsnoop + sigsnoop",
        }
    }
}

/// A running observer: its processes, drained so they never block on a full pipe.
pub struct Running {
    children: Vec<Child>,
    /// crashwatch's reports as (line, arrival time in µs since the epoch).
    pub reports: Arc<Mutex<Vec<(String, u64)>>>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The crash history the bench's agents keep, emptied at each start.
pub fn state_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("crashwatch-bench-state-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Spawns `cmd`, drains stdout and stderr into `lines` (timestamped), returns once a line
/// contains `ready`.
pub fn spawn_ready(
    mut cmd: Command,
    ready: &str,
    out: Arc<Mutex<Vec<(String, u64)>>>,
    log: Arc<Mutex<Vec<String>>>,
) -> Result<Child> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for (stream, is_out) in [
        (Box::new(stdout) as Box<dyn std::io::Read + Send>, true),
        (Box::new(stderr), false),
    ] {
        let (tx, out, log, ready) = (tx.clone(), out.clone(), log.clone(), ready.to_string());
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains(&ready) {
                    let _ = tx.send(());
                }
                if is_out && line.starts_with('{') {
                    out.lock().unwrap().push((line, now_us()));
                } else {
                    log.lock().unwrap().push(line);
                }
            }
        });
    }
    rx.recv_timeout(Duration::from_secs(120))
        .with_context(|| format!("{cmd:?} never printed {ready:?}"))?;
    Ok(child)
}

impl Running {
    pub fn start(o: Observer, agent: &Path) -> Result<Running> {
        Self::start_with(o, agent, &[])
    }

    /// With `extra` arguments for crashwatch's `run`.
    pub fn start_with(o: Observer, agent: &Path, extra: &[&str]) -> Result<Running> {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut children = Vec::new();
        match o {
            Observer::None => {}
            Observer::Crashwatch | Observer::CrashwatchQuiet => {
                let mut c = Command::new(agent);
                // Unpinned: nothing of a measured agent may stay attached after it.
                c.args(["run", "--no-pin", "--output", "json"]);
                // A crash history of the run's own, not this host's.
                c.arg("--state-dir").arg(state_dir());
                if o == Observer::CrashwatchQuiet {
                    c.args(["--last-words", "off"]);
                }
                c.args(extra);
                children.push(spawn_ready(
                    c,
                    "crashwatch: ready",
                    reports.clone(),
                    log.clone(),
                )?);
            }
            Observer::Bpftrace => {
                let mut c = Command::new("bpftrace");
                c.args(["-e", BPFTRACE]);
                children.push(spawn_ready(c, "Attaching", reports.clone(), log.clone())?);
            }
            Observer::Libbpf => {
                for (tool, header) in [("exitsnoop", "PCOMM"), ("sigsnoop", "COMM")] {
                    let mut c = Command::new("stdbuf");
                    c.args(["-oL", tool]);
                    children.push(spawn_ready(c, header, reports.clone(), log.clone())?);
                }
            }
        }
        Ok(Running {
            children,
            reports,
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.children.first().map(|c| c.id())
    }

    /// crashwatch's report for `pid`, waiting up to a minute.
    pub fn wait_report(&self, pid: u32) -> Result<serde_json::Value> {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let found = self.reports.lock().unwrap().iter().find_map(|(l, _)| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["pid"] == pid).then_some(v)
            });
            if let Some(v) = found {
                return Ok(v);
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("no report for pid {pid} within a minute")
    }

    /// SIGINT, again every 5 s while it runs (bpftrace once sat through one for 13 minutes
    /// in round 7), SIGKILL after 30 s.
    pub fn stop(mut self) -> Vec<String> {
        for c in &mut self.children {
            let t0 = Instant::now();
            let mut next = t0;
            while matches!(c.try_wait(), Ok(None)) {
                if t0.elapsed() > Duration::from_secs(30) {
                    eprintln!("xtask bench: {} ignored SIGINT for 30 s: SIGKILL", c.id());
                    let _ = c.kill();
                } else if Instant::now() >= next {
                    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
                    next += Duration::from_secs(5);
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
        thread::sleep(Duration::from_millis(200));
        self.log.lock().unwrap().clone()
    }
}

pub fn time_run(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("{cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// CPU seconds a process has used, and its resident set in KiB. The CPU time is the
/// scheduler's own count in nanoseconds (`/proc/PID/task/*/schedstat`, summed over the
/// threads alive now); where that file is missing, user + system clock ticks from
/// `/proc/PID/stat` (10 ms granularity, too coarse for a short storm).
pub fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    if let Some(ns) = schedstat_ns(pid) {
        return (ns as f64 / 1e9, rss);
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|u| u.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ((field(11) + field(12)) / ticks, rss)
}

/// Nanoseconds on a CPU, summed over the process's threads; None without schedstat.
fn schedstat_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// A process's peak resident set (VmHWM), KiB; 0 when it cannot be read.
pub fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
