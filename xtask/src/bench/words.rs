//! The write hooks alone (`--words-only`): the workloads that write (and one that makes
//! syscalls without writing) without an observer, under crashwatch, and under crashwatch
//! with `--last-words off`, interleaved, then the programs' own time per write from the
//! kernel's BPF statistics, as the main table and breakdown measure them.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Result;

use super::{
    observer::{time_run, Observer, Running},
    report, Workload,
};

pub fn section(mut workloads: Vec<Workload>, agent: &Path, rounds: usize) -> Result<String> {
    let observers = [
        Observer::None,
        Observer::Crashwatch,
        Observer::CrashwatchQuiet,
    ];
    for w in &mut workloads {
        w.observers = observers.to_vec();
    }
    let mut times = vec![vec![Vec::new(); observers.len()]; workloads.len()];
    for round in 0..rounds {
        let mut order = observers.to_vec();
        order.rotate_left(round % observers.len());
        eprintln!("xtask bench: the write hooks, round {}/{rounds}", round + 1);
        for o in order {
            let running = Running::start(o, agent)?;
            let oi = observers.iter().position(|x| *x == o).unwrap_or(0);
            for (wi, w) in workloads.iter().enumerate() {
                let mut cmd = Command::new(&w.cmd[0]);
                cmd.args(&w.cmd[1..]);
                times[wi][oi].push(time_run(&mut cmd)?);
            }
            running.stop();
        }
    }
    let passes = (0..rounds.clamp(1, 3))
        .map(|_| super::breakdown(&workloads, agent))
        .collect::<Result<Vec<_>>>()?;
    let mut md = format!(
        "## The write hooks\n\nThe workloads that write, and one that makes syscalls without writing, without an observer, under `crashwatch` and under `crashwatch --last-words off`, {rounds} interleaved rounds: median seconds, and the ratio to no observer with its range over rounds.\n\n| workload | no observer | crashwatch | `--last-words off` |\n|---|---|---|---|\n"
    );
    for (wi, w) in workloads.iter().enumerate() {
        let base = report::median(&mut times[wi][0].clone());
        let cell = |oi: usize| {
            let t: &Vec<f64> = &times[wi][oi];
            let ratios: Vec<f64> = t.iter().zip(&times[wi][0]).map(|(a, b)| a / b).collect();
            let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().cloned().fold(0.0, f64::max);
            let m = report::median(&mut t.clone());
            format!("{m:.3} ({:.3}× [{lo:.2}–{hi:.2}])", m / base)
        };
        writeln!(md, "| {} | {base:.3} | {} | {} |", w.name, cell(1), cell(2))?;
    }
    if let Some(mode) = passes.iter().find_map(|p| p.words_mode.clone()) {
        writeln!(md, "\nLast words: {mode}.")?;
    }
    report::breakdown(
        &mut md,
        "### The programs' own time per write",
        &workloads,
        &times,
        &passes,
    )?;
    Ok(md)
}
