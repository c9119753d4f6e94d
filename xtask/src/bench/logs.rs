//! `crashwatch analyze` over a 1 GB log beside `grep -c 'panic:'` over the same file, in the
//! same invocation: throughput (MB/s) and the analyzer's peak RSS. The log is an ordinary
//! service's lines with real crash texts between them, taken from the gocrash program and
//! python3 at the start of the run (Go panics, a GOTRACEBACK=all dump, a fatal error, gctrace
//! lines, a Python traceback); written as plain text and as Kubernetes CRI lines.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::tools::Tools;

const SIZE: u64 = 1 << 30;
const ROUNDS: usize = 3;

pub struct Row {
    pub format: &'static str,
    pub bytes: u64,
    pub crashes: u64,
    pub grep_secs: f64,
    pub grep_count: u64,
    pub analyze_secs: f64,
    pub analyze_rss_kib: u64,
}

/// What one crashing run printed on stderr.
fn stderr_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .context("running a crash")?;
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn crash_texts(t: &Tools) -> Result<Vec<String>> {
    let go = |mode: &str, env: &[(&str, &str)]| {
        stderr_of(Command::new(&t.gocrash).arg(mode).envs(env.iter().copied()))
    };
    let py = "def f(row):\n    return {}[row]\ntry:\n    f('id-17')\nexcept KeyError as e:\n    raise ValueError('bad row') from e\n";
    Ok(vec![
        go("string", &[])?,
        go("goroutine", &[("GOTRACEBACK", "all")])?,
        go("mapwrite", &[])?,
        go("churn", &[("GODEBUG", "gctrace=1")])?,
        stderr_of(Command::new("python3").args(["-c", py]))?,
    ])
}

/// Writes about [`SIZE`] bytes: 5,000 ordinary lines, a crash, and again. The number of
/// crashes written.
fn write_log(path: &Path, cri: bool, crashes: &[String]) -> Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let (mut written, mut n, mut i) = (0u64, 0u64, 0u64);
    while written < SIZE {
        for k in 0..5_000u64 {
            let l = format!(
                "level=info ts=2026-12-03T07:00:00.{k:06}Z caller=server.go:212 msg=\"request served\" method=GET path=/api/v1/items/{i} status=200 duration_ms={}\n",
                k % 97
            );
            written += line(&mut w, cri, "stdout", &l)?;
            i += 1;
        }
        for l in crashes[(n as usize) % crashes.len()].lines() {
            written += line(&mut w, cri, "stderr", &format!("{l}\n"))?;
        }
        n += 1;
    }
    w.flush()?;
    Ok(n)
}

fn line(w: &mut impl Write, cri: bool, stream: &str, l: &str) -> Result<u64> {
    let s = if cri {
        format!("2026-12-03T07:00:00.123456789Z {stream} F {l}")
    } else {
        l.to_string()
    };
    w.write_all(s.as_bytes())?;
    Ok(s.len() as u64)
}

/// Runs `cmd` to its end: wall seconds, its stdout, and its peak RSS (KiB).
fn measure(cmd: &mut Command) -> Result<(f64, String, u64)> {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let pid = child.id() as i32;
    let out = child.stdout;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut o) = out {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        s
    });
    let mut status = 0;
    // SAFETY: waits for our own child, which nothing else waits for; rusage is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
        bail!("wait4 on {cmd:?} failed");
    }
    let secs = t.elapsed().as_secs_f64();
    let stdout = reader.join().unwrap_or_default();
    Ok((secs, stdout, ru.ru_maxrss as u64))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(t: &Tools, dir: &Path) -> Result<Vec<Row>> {
    let crashes = crash_texts(t)?;
    let mut rows = Vec::new();
    for (format, cri) in [("plain", false), ("cri", true)] {
        let path: PathBuf = dir.join(format!("bench-{format}.log"));
        eprintln!("xtask bench: writing a 1 GiB {format} log");
        let written = write_log(&path, cri, &crashes)?;
        let bytes = std::fs::metadata(&path)?.len();
        let (mut grep, mut analyze, mut rss) = (Vec::new(), Vec::new(), 0);
        let (mut grep_count, mut found) = (0, 0);
        // Interleaved, so the page cache and the machine's state favour neither.
        for _ in 0..ROUNDS {
            let (s, out, _) = measure(Command::new("grep").args(["-c", "panic:"]).arg(&path))?;
            grep.push(s);
            grep_count = out.trim().parse().unwrap_or(0);
            let (s, out, r) = measure(
                Command::new(&t.agent)
                    .args(["analyze", "--json"])
                    .arg(&path),
            )?;
            analyze.push(s);
            rss = rss.max(r);
            let v: serde_json::Value = serde_json::from_str(&out).context("analyze's JSON")?;
            found = v["crashes_found"].as_u64().unwrap_or(0);
        }
        if found != written {
            bail!("analyze found {found} crashes in the {format} log; {written} were written");
        }
        std::fs::remove_file(&path)?;
        rows.push(Row {
            format,
            bytes,
            crashes: found,
            grep_secs: median(grep),
            grep_count,
            analyze_secs: median(analyze),
            analyze_rss_kib: rss,
        });
    }
    Ok(rows)
}

pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "## Log analysis\n\n`crashwatch analyze --json` over a 1 GiB log (an ordinary service's lines with real crash texts between them: Go panics, a GOTRACEBACK=all dump, a fatal error, gctrace lines, a Python traceback), beside `grep -c 'panic:'` over the same file, interleaved, median of 3, page cache warm.\n\n| format | size | crashes found | grep -c 'panic:' | analyze | analyze / grep | analyze peak RSS |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let mb = r.bytes as f64 / 1e6;
        s.push_str(&format!(
            "| {} | {:.0} MB | {} | {:.2} s ({:.0} MB/s; counts {}) | {:.2} s ({:.0} MB/s) | {:.1}× | {:.1} MiB |\n",
            r.format,
            mb,
            r.crashes,
            r.grep_secs,
            mb / r.grep_secs,
            r.grep_count,
            r.analyze_secs,
            mb / r.analyze_secs,
            r.analyze_secs / r.grep_secs,
            r.analyze_rss_kib as f64 / 1024.0
        ));
    }
    s.push_str("\ngrep counts lines; analyze decodes the format, finds each crash's whole block, parses it, folds its goroutines, fingerprints it and reads every gctrace line. On plain logs it passes over the lines holding none of the runtimes' markers, found by a SIMD search ([analyze.md](analyze.md#speed)); CRI lines are each decoded.\n");
    s
}
