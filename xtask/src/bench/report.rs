//! docs/benchmarks.md: the machine, the workload table (medians and ratios), the crash storm
//! and the agent's own cost, written from what the other modules measured.
use std::{fmt::Write as _, fs, path::Path, process::Command, thread};

use anyhow::Result;

use super::{
    observer::{Observer, BPFTRACE},
    storm::Storm,
    Breakdown, Workload,
};

/// What the agent said over the rounds: its stop lines and how it attached its write hooks.
pub struct AgentNotes {
    pub lost_runs: Vec<String>,
    pub words_mode: Option<String>,
    /// The agent's CPU milliseconds per 1,000 execs in the exec storm, one per round.
    pub exec_cpu: Vec<(Observer, f64)>,
    /// The cost breakdown passes (kernel BPF statistics on).
    pub breakdown: Vec<Breakdown>,
}

/// Writes docs/benchmarks.md under `root` (and prints it). `times[w][o]`: the wall times of
/// workload `w` under its observer `o`, one per round, in round order.
pub fn write(
    root: &Path,
    rounds: usize,
    workloads: &[Workload],
    times: &[Vec<Vec<f64>>],
    agent: &AgentNotes,
    s: &Storm,
    symbolization: &str,
) -> Result<()> {
    let mut md = String::new();
    let mut latencies = s.latencies_us.clone();
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
    writeln!(md, "- observers: `crashwatch run --output json` (reports to a pipe), and the same with `--last-words off` (no write hooks: fentry, or on kernels that refuse it the syscalls tracepoints, whichever the agent said it attached); `bpftrace -e '{BPFTRACE}'`; `stdbuf -oL exitsnoop` and `stdbuf -oL sigsnoop` (libbpf-tools) together")?;
    writeln!(md, "- method: each round starts each observer in turn (the order rotates every round), runs every workload under it, stops it. A cell gives the median wall time over rounds; under an observer, the median of the per-round ratios to no observer in the same round and, in brackets, their range (min–max over rounds). The no-observer cell's ± is the median absolute deviation of its own times, in %: the noise a ratio must clear. The peers do less than crashwatch: they print events, they do not assemble, symbolize or probe Go binaries.\n")?;
    writeln!(
        md,
        "## Workloads under each observer (median seconds; ratio to no observer)\n"
    )?;
    writeln!(md, "| workload | command | no observer | crashwatch | crashwatch --last-words off | bpftrace one-liner | exitsnoop + sigsnoop | crashwatch / bpftrace | crashwatch / libbpf-tools |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for (wi, w) in workloads.iter().enumerate() {
        // Round order is kept: medians sort copies.
        let rounds_of = |i: usize| times[wi][i].clone();
        let get = |o: Observer| w.observers.iter().position(|x| *x == o);
        let base = rounds_of(get(Observer::None).expect("every workload runs bare"));
        let med: Vec<f64> = (0..w.observers.len())
            .map(|i| median(&mut rounds_of(i)))
            .collect();
        // Each round runs every observer once: a ratio pairs times of the same round.
        let ratios =
            |i: usize| -> Vec<f64> { rounds_of(i).iter().zip(&base).map(|(t, b)| t / b).collect() };
        let cell = |o: Observer| match get(o) {
            Some(i) if o == Observer::None => {
                format!("{:.3} ±{:.1}%", med[i], 100.0 * mad(&base) / med[i])
            }
            Some(i) => {
                let mut r = ratios(i);
                let (lo, hi) = min_max(&r);
                format!("{:.3} ({:.3}× [{lo:.2}–{hi:.2}])", med[i], median(&mut r))
            }
            None => "–".into(),
        };
        let vs = |o: Observer| match (get(Observer::Crashwatch), get(o)) {
            (Some(c), Some(m)) => format!("{:.2}", med[c] / med[m]),
            _ => "–".into(),
        };
        let cmd = w
            .cmd
            .iter()
            .map(|c| c.rsplit('/').next().unwrap_or(c).replace('\n', "; "))
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            md,
            "| {} | `{cmd}` | {} | {} | {} | {} | {} | {} | {} |",
            w.name,
            cell(Observer::None),
            cell(Observer::Crashwatch),
            cell(Observer::CrashwatchQuiet),
            cell(Observer::Bpftrace),
            cell(Observer::Libbpf),
            vs(Observer::Bpftrace),
            vs(Observer::Libbpf)
        )?;
    }
    writeln!(
        md,
        "\nLast words were captured with: {}. The rows with `crashwatch --last-words off` beside `crashwatch` are what the write hooks cost.",
        agent
            .words_mode
            .as_deref()
            .unwrap_or("(the agent did not say)")
    )?;
    writeln!(
        md,
        "\nKernel losses reported by crashwatch at the end of each round: {}\n",
        if agent.lost_runs.is_empty() {
            "none logged".into()
        } else {
            agent.lost_runs.join("; ")
        }
    )?;
    writeln!(md, "## Crash storm\n")?;
    writeln!(md, "{} crashing processes, two at a time, in rotation: a Go panic (`gocrash string`, Go 1.27, probed), a C null write (`crasher null`), a C abort (`crasher abort`).\n", s.crashes)?;
    writeln!(md, "| measure | value |\n|---|---|")?;
    writeln!(md, "| crashes run | {} in {:.1} s |", s.crashes, s.secs)?;
    writeln!(
        md,
        "| reports received | {} ({}) |",
        s.reports,
        s.kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(md, "| missing reports | {} |", s.crashes - s.reports)?;
    writeln!(
        md,
        "| kernel events lost (sum of `lost_before`) | {} |",
        s.lost_before
    )?;
    writeln!(
        md,
        "| agent's loss counters at stop | {} |",
        s.losses.trim_start_matches("crashwatch: ")
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
    let (imax, imean) = stat(&s.idle_rss);
    let (smax, smean) = stat(&s.rss);
    writeln!(
        md,
        "| idle, {} s | {:.2} % of one CPU | {} MiB | {} MiB |",
        s.idle_secs,
        s.idle_cpu,
        imax / 1024,
        imean / 1024
    )?;
    writeln!(
        md,
        "| crash storm, {:.1} s | {:.1} % of one CPU | {} MiB | {} MiB |",
        s.secs,
        s.cpu,
        smax / 1024,
        smean / 1024
    )?;
    for o in [Observer::Crashwatch, Observer::CrashwatchQuiet] {
        let mut v: Vec<f64> = agent
            .exec_cpu
            .iter()
            .filter(|(x, _)| *x == o)
            .map(|(_, ms)| *ms)
            .collect();
        if v.is_empty() {
            continue;
        }
        let (lo, hi) = min_max(&v);
        writeln!(
            md,
            "| exec/exit storm, `{}` | {:.1} ms per 1,000 execs [{lo:.1}–{hi:.1}] over {} rounds | – | – |",
            o.name(),
            median(&mut v),
            v.len()
        )?;
    }
    writeln!(
        md,
        "\nCPU is the scheduler's count of the agent's time on a CPU (`/proc/PID/task/*/schedstat`)."
    )?;
    breakdown(
        &mut md,
        "## Where crashwatch's cost goes, per event",
        workloads,
        times,
        &agent.breakdown,
    )?;
    md.push('\n');
    md.push_str(symbolization);
    let out = root.join("docs/benchmarks.md");
    fs::write(&out, &md)?;
    println!("{md}");
    eprintln!("xtask bench: wrote {}", out.display());
    Ok(())
}

/// The kernel side's own time per event, beside the event's own time with no observer.
/// The programs' own time per event; `times[wi][0]` is each workload's run without an
/// observer.
pub fn breakdown(
    md: &mut String,
    heading: &str,
    workloads: &[Workload],
    times: &[Vec<Vec<f64>>],
    passes: &[Breakdown],
) -> Result<()> {
    if passes.is_empty() {
        return Ok(());
    }
    writeln!(md, "\n{heading}\n")?;
    writeln!(
        md,
        "Each workload once more under `crashwatch`, {} time(s), with the kernel's BPF run \
         statistics on (`kernel.bpf_stats_enabled`: each program's run count and total run \
         time, kept by the kernel). These are exact where the wall-time ratios above move by \
         several percent from round to round, so they show costs well under 1 %. They count \
         the programs' own time only: not the kernel's dispatch to them (tens of ns per \
         attached program), nor, with the syscalls tracepoints, the slower syscall entry and \
         exit every task on the host takes while any is attached; the ratios above hold \
         those.\n",
        passes.len()
    )?;
    writeln!(
        md,
        "| workload | event | no observer, ns per event | crashwatch programs, ns per event [min–max] | as a share of the event | programs that ran (runs per event × ns per run) | agent CPU per 1,000 events |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for (wi, w) in workloads.iter().enumerate() {
        let (n, what) = w.events;
        let mut base = times[wi][0].clone();
        let base_ns = median(&mut base) * 1e9 / n as f64;
        let per: Vec<f64> = passes
            .iter()
            .map(|p| p.per_workload[wi].0.values().map(|c| c.ns).sum::<u64>() as f64 / n as f64)
            .collect();
        let (lo, hi) = min_max(&per);
        let mid = median(&mut per.clone());
        // The programs of the pass nearest the median.
        let pi = (0..passes.len())
            .min_by(|a, b| {
                (per[*a] - mid)
                    .abs()
                    .partial_cmp(&(per[*b] - mid).abs())
                    .unwrap()
            })
            .unwrap_or(0);
        let mut progs: Vec<_> = passes[pi].per_workload[wi].0.iter().collect();
        progs.sort_by_key(|(_, c)| std::cmp::Reverse(c.ns));
        let progs = progs
            .iter()
            .map(|(name, c)| {
                format!(
                    "`{name}` {:.2} × {:.0} ns",
                    c.runs as f64 / n as f64,
                    c.ns as f64 / c.runs.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut cpu: Vec<f64> = passes
            .iter()
            .map(|p| p.per_workload[wi].1 as f64 / 1e6 * 1000.0 / n as f64)
            .collect();
        writeln!(
            md,
            "| {} | {what} | {base_ns:.0} | {mid:.1} [{lo:.1}–{hi:.1}] | {:.2} % | {} | {:.2} ms |",
            w.name,
            mid / base_ns * 100.0,
            if progs.is_empty() {
                "none".to_string()
            } else {
                progs
            },
            median(&mut cpu)
        )?;
    }
    writeln!(
        md,
        "\n`NAME`, `NAME_2` and `NAME_3` are the recursion guard's three copies of one program \
         (a run the kernel turns away from a copy because that copy is already running on the \
         CPU goes to the next); on an event the programs do not want, each copy returns at its \
         first test."
    )?;
    Ok(())
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// Median absolute deviation from the median.
fn mad(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    let m = median(&mut v);
    let mut d: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    median(&mut d)
}

pub fn median(v: &mut [f64]) -> f64 {
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

pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Puts `section` (which starts with `heading`) into the page in place of the section with
/// that heading, or before the symbolization section, dated: it was measured apart from the
/// rest, by `cargo xtask bench FLAG`.
pub fn splice(page: &Path, heading: &str, flag: &str, section: &str) -> Result<()> {
    let md = fs::read_to_string(page)?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let section = section.replacen(
        "\n\n",
        &format!("\n\n(Measured {date} by `cargo xtask bench {flag}`.)\n\n"),
        1,
    );
    let start = md.find(&format!("{heading}\n"));
    let end = start.and_then(|s| md[s + 3..].find("\n## ").map(|e| s + 3 + e + 1));
    let out = match (start, end) {
        (Some(s), Some(e)) => format!("{}{section}\n{}", &md[..s], &md[e..]),
        _ => match md.find("## Symbolization") {
            Some(at) => format!("{}{section}\n{}", &md[..at], &md[at..]),
            None => format!("{md}\n{section}"),
        },
    };
    fs::write(page, &out)?;
    println!("{section}");
    eprintln!("xtask bench: wrote {heading:?} into {}", page.display());
    Ok(())
}
