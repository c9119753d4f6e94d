//! `cargo xtask bench`: what crashwatch costs a host, beside no observer and the peer tools,
//! measured in one invocation with the runs interleaved (observer order rotates per round),
//! written to docs/benchmarks.md. Results, not assertions: nothing here fails on a timing.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::vm::Paths;

const BPFTRACE: &str =
    "tracepoint:signal:signal_deliver { @sig[args->sig] = count(); } tracepoint:sched:sched_process_exit { @exit = count(); }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Observer {
    None,
    Crashwatch,
    Bpftrace,
    Libbpf,
}

impl Observer {
    fn name(self) -> &'static str {
        match self {
            Observer::None => "no observer",
            Observer::Crashwatch => "crashwatch",
            Observer::Bpftrace => "bpftrace one-liner",
            Observer::Libbpf => "exitsnoop + sigsnoop",
        }
    }
}

/// A running observer: its processes, drained so they never block on a full pipe.
struct Running {
    children: Vec<Child>,
    /// crashwatch's reports as (line, arrival time in µs since the epoch).
    reports: Arc<Mutex<Vec<(String, u64)>>>,
    log: Arc<Mutex<Vec<String>>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Spawns `cmd`, drains stdout and stderr into `lines` (timestamped), returns once a line
/// contains `ready`.
fn spawn_ready(
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
    fn start(o: Observer, agent: &Path) -> Result<Running> {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut children = Vec::new();
        match o {
            Observer::None => {}
            Observer::Crashwatch => {
                let mut c = Command::new(agent);
                c.args(["run", "--output", "json"]);
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

    fn pid(&self) -> Option<u32> {
        self.children.first().map(|c| c.id())
    }

    fn stop(mut self) -> Vec<String> {
        for c in &self.children {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        thread::sleep(Duration::from_millis(200));
        self.log.lock().unwrap().clone()
    }
}

fn time_run(cmd: &mut Command) -> Result<f64> {
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// CPU seconds (user + system) a process has used, and its resident set in KiB.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    (cpu / ticks, rss)
}

struct Tools {
    agent: PathBuf,
    spawn: PathBuf,
    writes: PathBuf,
    signals: PathBuf,
    crasher: PathBuf,
    gocrash: PathBuf,
    gowrite: Vec<(String, PathBuf)>,
}

fn build(p: &Paths) -> Result<Tools> {
    let out = p.vm.parent().unwrap().join("bench");
    fs::create_dir_all(&out)?;
    eprintln!("xtask bench: building the agent and the workloads");
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "crashwatch"])
        .current_dir(&p.root)
        .status()?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let src = p.root.join("xtask/bench");
    let gcc = |name: &str, file: &Path| -> Result<PathBuf> {
        let bin = out.join(name);
        let st = Command::new("gcc")
            .args(["-O2", "-pthread", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(file)
            .status()?;
        if !st.success() {
            bail!("gcc {}", file.display());
        }
        Ok(bin)
    };
    let gobuild = |go: &str, dir: &Path, name: &str| -> Result<PathBuf> {
        let bin = out.join(name);
        let st = Command::new(go)
            .args(["build", "-buildvcs=false", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(dir)
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local")
            .status()?;
        if !st.success() {
            bail!("{go} build in {}", dir.display());
        }
        Ok(bin)
    };
    let go = |v: &str| format!("/opt/crashwatch-go/{v}/go/bin/go");
    Ok(Tools {
        agent: p.root.join("target/release/crashwatch"),
        spawn: gcc("spawn", &src.join("spawn.c"))?,
        writes: gcc("writes", &src.join("writes.c"))?,
        signals: gcc("signals", &src.join("signals.c"))?,
        crasher: gcc(
            "crasher",
            &p.root.join("crashwatch/tests/crashers/crasher.c"),
        )?,
        gocrash: gobuild(
            &go("1.27"),
            &p.root.join("crashwatch/tests/gocrash"),
            "gocrash",
        )?,
        gowrite: vec![
            (
                "1.21".into(),
                gobuild(&go("1.21"), &src.join("gowrite"), "gowrite-1.21")?,
            ),
            (
                "1.27".into(),
                gobuild(&go("1.27"), &src.join("gowrite"), "gowrite-1.27")?,
            ),
        ],
    })
}

struct Workload {
    name: String,
    cmd: Vec<String>,
    observers: Vec<Observer>,
}

pub fn run(rounds: usize, storm: usize, idle_secs: u64) -> Result<()> {
    let p = Paths::new()?;
    let t = build(&p)?;
    let s = |x: &Path| x.display().to_string();
    let all = vec![
        Observer::None,
        Observer::Crashwatch,
        Observer::Bpftrace,
        Observer::Libbpf,
    ];
    let two = vec![Observer::None, Observer::Crashwatch];
    let mut workloads = vec![
        Workload {
            name: "exec/exit storm: 5,000 short processes".into(),
            cmd: vec![s(&t.spawn), "5000".into(), "/bin/true".into()],
            observers: all.clone(),
        },
        Workload {
            name: "2,000,000 write(2) of 64 B to /dev/null (C)".into(),
            cmd: vec![s(&t.writes), "2000000".into(), "devnull".into()],
            observers: two.clone(),
        },
        Workload {
            name: "2,000,000 write(2) of 64 B via fd 2 (C)".into(),
            cmd: vec![s(&t.writes), "2000000".into(), "stderr".into()],
            observers: two.clone(),
        },
        Workload {
            name: "100,000 handled signals (C, SIGUSR1)".into(),
            cmd: vec![s(&t.signals), "100000".into()],
            observers: two.clone(),
        },
    ];
    for (v, bin) in &t.gowrite {
        workloads.push(Workload {
            name: format!("2,000,000 os.Stderr.Write of 64 B (Go {v}, probed binary)"),
            cmd: vec![s(bin), "2000000".into()],
            observers: two.clone(),
        });
    }
    let mut times: Vec<Vec<Vec<f64>>> = workloads
        .iter()
        .map(|w| vec![Vec::new(); w.observers.len()])
        .collect();
    let mut lost_runs = Vec::new();
    for round in 0..rounds {
        let mut order = all.clone();
        order.rotate_left(round % all.len());
        eprintln!(
            "xtask bench: round {}/{rounds} ({})",
            round + 1,
            order
                .iter()
                .map(|o| o.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for o in order {
            let running = Running::start(o, &t.agent)?;
            for (wi, w) in workloads.iter().enumerate() {
                let Some(oi) = w.observers.iter().position(|x| *x == o) else {
                    continue;
                };
                let mut cmd = Command::new(&w.cmd[0]);
                cmd.args(&w.cmd[1..]);
                times[wi][oi].push(time_run(&mut cmd)?);
            }
            let log = running.stop();
            if o == Observer::Crashwatch {
                lost_runs.extend(
                    log.into_iter()
                        .filter(|l| l.contains("stopped (kernel losses")),
                );
            }
        }
    }

    // Crash storm and the agent's own cost, crashwatch only.
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
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (storm_rss, done) = (storm_rss.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
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
    let wanted: std::collections::HashSet<u32> = pids.iter().copied().collect();
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
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let got = received(&running.reports.lock().unwrap());
    let mut latencies: Vec<u64> = got
        .iter()
        .filter_map(|(v, at)| Some(at.saturating_sub(parse_time_us(v["time"].as_str()?)?)))
        .collect();
    let kinds = {
        let mut k = std::collections::BTreeMap::new();
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

    // docs/benchmarks.md
    let mut md = String::new();
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let cpu = fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")?
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse::<u64>()?
        / 1024
        / 1024;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench` (rounds: {rounds}); numbers are results, not thresholds.\n"
    )?;
    writeln!(
        md,
        "- machine: {cpu}, {} CPUs, {mem} GiB",
        thread::available_parallelism()?.get()
    )?;
    writeln!(md, "- kernel: Linux {uname}")?;
    writeln!(md, "- date: {date}")?;
    writeln!(md, "- observers: `crashwatch run --output json` (reports to a pipe); `bpftrace -e '{BPFTRACE}'`; `stdbuf -oL exitsnoop` and `stdbuf -oL sigsnoop` (libbpf-tools) together")?;
    writeln!(md, "- method: each round starts each observer in turn (the order rotates every round), runs every workload under it, stops it; the table gives the median wall time over rounds and ratios of medians. The peers do less than crashwatch: they print events, they do not assemble, symbolize or probe Go binaries.\n")?;
    writeln!(
        md,
        "## Workloads under each observer (median seconds; ratio to no observer)\n"
    )?;
    writeln!(md, "| workload | command | no observer | crashwatch | bpftrace one-liner | exitsnoop + sigsnoop | crashwatch / bpftrace | crashwatch / libbpf-tools |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for (wi, w) in workloads.iter().enumerate() {
        let med: Vec<f64> = times[wi].iter_mut().map(|v| median(v)).collect();
        let get = |o: Observer| w.observers.iter().position(|x| *x == o).map(|i| med[i]);
        let base = get(Observer::None).unwrap();
        let cell = |o: Observer| match get(o) {
            Some(m) if o == Observer::None => format!("{m:.3}"),
            Some(m) => format!("{m:.3} ({:.2}×)", m / base),
            None => "–".into(),
        };
        let vs = |o: Observer| match (get(Observer::Crashwatch), get(o)) {
            (Some(c), Some(m)) => format!("{:.2}", c / m),
            _ => "–".into(),
        };
        let cmd = w
            .cmd
            .iter()
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            md,
            "| {} | `{cmd}` | {} | {} | {} | {} | {} | {} |",
            w.name,
            cell(Observer::None),
            cell(Observer::Crashwatch),
            cell(Observer::Bpftrace),
            cell(Observer::Libbpf),
            vs(Observer::Bpftrace),
            vs(Observer::Libbpf)
        )?;
    }
    writeln!(
        md,
        "\nKernel losses reported by crashwatch at the end of each round: {}\n",
        if lost_runs.is_empty() {
            "none logged".into()
        } else {
            lost_runs.join("; ")
        }
    )?;
    writeln!(md, "## Crash storm\n")?;
    writeln!(md, "{storm} crashing processes, two at a time, in rotation: a Go panic (`gocrash string`, Go 1.27, probed), a C null write (`crasher null`), a C abort (`crasher abort`).\n")?;
    writeln!(md, "| measure | value |\n|---|---|")?;
    writeln!(md, "| crashes run | {} in {storm_secs:.1} s |", pids.len())?;
    writeln!(
        md,
        "| reports received | {} ({}) |",
        got.len(),
        kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(md, "| missing reports | {} |", pids.len() - got.len())?;
    writeln!(
        md,
        "| kernel events lost (sum of `lost_before`) | {lost_before} |"
    )?;
    writeln!(
        md,
        "| agent's loss counters at stop | {} |",
        losses.trim_start_matches("crashwatch: ")
    )?;
    writeln!(
        md,
        "| crash-to-report latency p50 | {:.2} ms |",
        percentile(&mut latencies, 0.5) as f64 / 1000.0
    )?;
    writeln!(
        md,
        "| crash-to-report latency p99 | {:.2} ms |",
        percentile(&mut latencies, 0.99) as f64 / 1000.0
    )?;
    writeln!(
        md,
        "| crash-to-report latency max | {:.2} ms |",
        latencies.iter().max().copied().unwrap_or(0) as f64 / 1000.0
    )?;
    writeln!(md, "\nLatency runs from the kernel's exit timestamp (the report's `time`, converted from `bpf_ktime_get_ns`) to the report line's arrival on the agent's stdout pipe.\n")?;
    writeln!(md, "## The agent's own cost\n")?;
    writeln!(
        md,
        "| phase | CPU | RSS (max) | RSS (mean) |\n|---|---|---|---|"
    )?;
    let stat = |v: &[u64]| {
        (
            v.iter().max().copied().unwrap_or(0),
            v.iter().sum::<u64>() / v.len().max(1) as u64,
        )
    };
    let (imax, imean) = stat(&idle_rss);
    let srss = storm_rss.lock().unwrap().clone();
    let (smax, smean) = stat(&srss);
    writeln!(
        md,
        "| idle, {idle_secs} s | {idle_cpu:.2} % of one CPU | {} MiB | {} MiB |",
        imax / 1024,
        imean / 1024
    )?;
    let storm_cpu = (s1 - s0) / storm_secs.max(0.001) * 100.0;
    writeln!(
        md,
        "| crash storm, {storm_secs:.1} s | {storm_cpu:.1} % of one CPU | {} MiB | {} MiB |",
        smax / 1024,
        smean / 1024
    )?;
    let out = p.root.join("docs/benchmarks.md");
    fs::write(&out, &md)?;
    println!("{md}");
    eprintln!("xtask bench: wrote {}", out.display());
    Ok(())
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
