//! How long `crashwatch exec` takes to start a command, beside a plain `sh`, in the same
//! invocation: a CI job with fifty steps under `exec` pays it fifty times. The command is
//! `sh -c 'date +%s%N'`: the time until it runs is the clock it prints minus the clock read
//! just before the spawn; the whole run is the wall time until `exec` has exited (its stop
//! included: the programs' detach, the summary).
use std::{
    process::{Command, Stdio},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use super::tools::Tools;

const ROUNDS: usize = 15;

pub struct Row {
    pub what: &'static str,
    /// Milliseconds until the command ran, and until all was over, per round.
    pub to_command: Vec<f64>,
    pub total: Vec<f64>,
}

/// One run: (ms until the command printed its clock, ms until the whole run ended).
fn once(t: &Tools, exec: bool) -> Result<(f64, f64)> {
    let mut cmd = if exec {
        let mut c = Command::new(&t.agent);
        c.args(["exec", "--", "sh", "-c", "date +%s%N"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", "date +%s%N"]);
        c
    };
    let before = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as f64;
    let wall = Instant::now();
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .context("running the command")?;
    let total = wall.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let printed: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the command's clock")?;
    Ok(((printed - before) / 1e6, total))
}

pub fn run(t: &Tools) -> Result<Vec<Row>> {
    let mut rows = [
        Row {
            what: "`sh -c 'date +%s%N'`",
            to_command: Vec::new(),
            total: Vec::new(),
        },
        Row {
            what: "`crashwatch exec -- sh -c 'date +%s%N'`",
            to_command: Vec::new(),
            total: Vec::new(),
        },
    ];
    // One unmeasured run each: the page cache, the binary's first load.
    once(t, false)?;
    once(t, true)?;
    for _ in 0..ROUNDS {
        for (i, row) in rows.iter_mut().enumerate() {
            let (to, total) = once(t, i == 1)?;
            row.to_command.push(to);
            row.total.push(total);
        }
    }
    Ok(rows.into())
}

/// Median, min and max.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn markdown(rows: &[Row]) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut s = format!(
        "## Starting a command under exec\n\nA command's start under `crashwatch exec` beside a plain `sh`, interleaved, {ROUNDS} rounds, on {cores} CPUs: the time until the command runs (the clock it prints minus the clock read before the spawn) and until all is over. Median [min–max] ms.\n\n| command | until it runs | until all is over |\n|---|---|---|\n"
    );
    for r in rows {
        let (a, a0, a1) = spread(&r.to_command);
        let (b, b0, b1) = spread(&r.total);
        s.push_str(&format!(
            "| {} | {a:.0} [{a0:.0}–{a1:.0}] | {b:.0} [{b0:.0}–{b1:.0}] |\n",
            r.what
        ));
    }
    s.push_str("\nMost of exec's start is the kernel's verifier checking the programs (`signal_deliver` alone 163,000 instructions, about 0.25 s here); each program is loaded on a thread of its own, so a machine with more CPUs starts sooner. The kernel's BTF is mapped, not parsed whole. The syscall tracepoints' detach waits for RCU grace periods (about 0.12 s here): a child of exec's pays it after exec has exited.\n");
    s
}
