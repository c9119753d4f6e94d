//! `cargo xtask bench --dumps-only`: what `run --dumps` costs. How long a crashing process is
//! held for its dump at 10 MiB, 1 GiB and 4 GiB of memory (from the instant it crashes, as it
//! prints it, to its parent's wait returning), and at 1 GiB of bytes no compressor shrinks,
//! beside the same crash under an agent without `--dumps` and one with `--keep-cores` in the
//! same invocation; the core bytes streamed and kept, the agent's CPU per dump and its peak
//! RSS; and processes that do not crash (an exec storm) and a crash storm, with and without
//! `--dumps`, interleaved.
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::{
    observer::{peak_rss_kib, time_run, Observer, Running},
    tools::Tools,
};

/// MiB touched, and whether with incompressible bytes.
const SIZES_MIB: [(u64, bool); 4] = [(10, false), (1024, false), (4096, false), (1024, true)];
const ROUNDS: usize = 3;

/// The agents compared: none of `--dumps`, `--dumps`, `--dumps --keep-cores`.
const MODES: [&[&str]; 3] = [&[], &["--dumps"], &["--dumps", "--keep-cores"]];

pub struct Row {
    pub mib: u64,
    pub noise: bool,
    /// Crash to reaped, ms, per round: without `--dumps`, with, with `--keep-cores`.
    pub plain_ms: Vec<f64>,
    pub dumped_ms: Vec<f64>,
    pub kept_ms: Vec<f64>,
    /// The kept core's bytes (compressed), per round.
    pub kept_bytes: Vec<u64>,
    /// The agent's own `dump.held_ms`, core bytes and CPU ms, per dumped round.
    pub held_ms: Vec<f64>,
    pub bytes: Vec<u64>,
    pub cpu_ms: Vec<f64>,
}

pub struct Dumps {
    pub rows: Vec<Row>,
    pub agent_peak_rss_kib: u64,
    /// Seconds per round: exec storm, crash storm; without `--dumps`, with.
    pub execs: (Vec<f64>, Vec<f64>),
    pub crashes: (Vec<f64>, Vec<f64>),
    pub crash_storm: usize,
}

/// CPU seconds the whole process has used, exited threads included (each dump is read on a
/// thread that ends with it, which the per-thread counts miss): `/proc/PID/stat`'s user and
/// system ticks.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (n(11) + n(12)) / ticks
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `threads big MIB [noise]` to its crash: its pid and the ms from the crash to the
/// wait's end.
fn crash_big(program: &std::path::Path, mib: u64, noise: bool) -> Result<(u32, f64)> {
    let mut cmd = Command::new(program);
    cmd.args(["big", &mib.to_string()])
        .args(noise.then_some("noise"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // No core file in the working directory without --dumps (the socket ignores the limit).
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        })
    };
    let mut child = cmd.spawn().context("spawning the dump workload")?;
    let pid = child.id();
    let mut at = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(v) = line?.strip_prefix("at_ns=") {
            at = v.parse::<u64>().ok();
        }
    }
    child.wait()?;
    let end = monotonic_ns();
    let Some(at) = at else {
        bail!("the workload printed no at_ns");
    };
    Ok((pid, end.saturating_sub(at) as f64 / 1e6))
}

pub fn run(t: &Tools) -> Result<Dumps> {
    let mut rows: Vec<Row> = SIZES_MIB
        .iter()
        .map(|&(mib, noise)| Row {
            mib,
            noise,
            plain_ms: vec![],
            dumped_ms: vec![],
            kept_ms: vec![],
            kept_bytes: vec![],
            held_ms: vec![],
            bytes: vec![],
            cpu_ms: vec![],
        })
        .collect();
    let mut peak = 0;
    for round in 0..ROUNDS {
        for extra in MODES {
            eprintln!(
                "xtask bench: dumps round {} ({})",
                round + 1,
                if extra.is_empty() {
                    "no dumps".into()
                } else {
                    extra.join(" ")
                }
            );
            let agent = Running::start_with(Observer::Crashwatch, &t.agent, extra)?;
            let apid = agent.pid().unwrap();
            for row in rows.iter_mut() {
                let c0 = process_cpu_secs(apid);
                let (pid, ms) = crash_big(&t.threads, row.mib, row.noise)?;
                match extra.len() {
                    0 => row.plain_ms.push(ms),
                    1 => {
                        let r = agent.wait_report(pid)?;
                        let c1 = process_cpu_secs(apid);
                        row.dumped_ms.push(ms);
                        row.cpu_ms.push((c1 - c0) * 1e3);
                        row.held_ms
                            .push(r["dump"]["held_ms"].as_f64().unwrap_or(f64::NAN));
                        row.bytes.push(r["dump"]["bytes"].as_u64().unwrap_or(0));
                    }
                    _ => {
                        let r = agent.wait_report(pid)?;
                        row.kept_ms.push(ms);
                        row.kept_bytes
                            .push(r["dump"]["core_bytes"].as_u64().unwrap_or(0));
                    }
                }
            }
            if extra.len() == 1 {
                peak = peak.max(peak_rss_kib(apid));
            }
            agent.stop();
        }
    }
    let storm = 200;
    let mut execs = (vec![], vec![]);
    let mut crashes = (vec![], vec![]);
    for round in 0..ROUNDS {
        for dumps in [false, true] {
            eprintln!(
                "xtask bench: storms round {} ({})",
                round + 1,
                if dumps { "--dumps" } else { "no dumps" }
            );
            let extra: &[&str] = if dumps { &["--dumps"] } else { &[] };
            let agent = Running::start_with(Observer::Crashwatch, &t.agent, extra)?;
            let e = time_run(Command::new(&t.spawn).args(["5000", "/bin/true"]))?;
            let start = Instant::now();
            for _ in 0..storm {
                let _ = Command::new(&t.crasher)
                    .arg("null")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
            }
            let c = start.elapsed().as_secs_f64();
            let (ev, cv) = if dumps {
                (&mut execs.1, &mut crashes.1)
            } else {
                (&mut execs.0, &mut crashes.0)
            };
            ev.push(e);
            cv.push(c);
            agent.stop();
        }
    }
    Ok(Dumps {
        rows,
        agent_peak_rss_kib: peak,
        execs,
        crashes,
        crash_storm: storm,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

pub fn markdown(d: &Dumps) -> String {
    let mut s = String::from("## Core dumps (--dumps)\n\n");
    s += &format!(
        "A process that touched N MiB writes through a null pointer; the time from its crash (it prints \
         CLOCK_MONOTONIC just before) to its parent's wait returning, under an agent without `--dumps` and \
         one with it, {ROUNDS} interleaved rounds (median, range in ms). With `--dumps` the kernel streams \
         the whole core to the agent (coredump socket, `KERNEL|WAIT`), which keeps each thread's stack \
         top and writes a minidump; `held` is the agent's own measure (connection to close). The \
         agent's peak RSS over all dumps: {} MiB; its CPU per dump counts every thread (user + system, \
         10 ms ticks), the report's symbolization and minidump included.\n\n",
        d.agent_peak_rss_kib / 1024
    );
    s +=
        "`--keep-cores` also compresses the whole stream (zstd level 1) into a file as it passes: \
          its column is the same crash under a third agent, and `kept` the file's size. The last \
          row's process filled its memory with pseudo-random bytes, which no compressor shrinks: \
          the worst case.\n\n";
    s += "| memory | crash → reaped, no dumps | with --dumps | held (agent) | core streamed | agent CPU per dump | with --keep-cores | kept |\n|---|---|---|---|---|---|---|---|\n";
    for r in &d.rows {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        s += &format!(
            "| {} MiB{} | {:.0} ms ({}) | {:.0} ms ({}) | {:.0} ms | {:.0} MiB | {:.0} ms | {:.0} ms ({}) | {:.1} MiB |\n",
            r.mib,
            if r.noise { ", random" } else { "" },
            median(&r.plain_ms),
            range(&r.plain_ms),
            median(&r.dumped_ms),
            range(&r.dumped_ms),
            median(&r.held_ms),
            mib(r.bytes.iter().copied().max().unwrap_or(0)),
            median(&r.cpu_ms),
            median(&r.kept_ms),
            range(&r.kept_ms),
            mib(r.kept_bytes.iter().copied().max().unwrap_or(0)),
        );
    }
    let ratio = |(a, b): &(Vec<f64>, Vec<f64>)| median(b) / median(a);
    s += &format!(
        "\nProcesses that do not crash: an exec storm (5,000 `/bin/true`) takes {:.2} s without `--dumps`, \
         {:.2} s with it ({:.2}×). A crash storm ({} C null-pointer crashes one after another, each \
         dumping its small core) takes {:.2} s without, {:.2} s with ({:.2}×).\n",
        median(&d.execs.0),
        median(&d.execs.1),
        ratio(&d.execs),
        d.crash_storm,
        median(&d.crashes.0),
        median(&d.crashes.1),
        ratio(&d.crashes),
    );
    s
}
