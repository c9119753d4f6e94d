//! `cargo xtask bench`: what crashwatch costs a host, beside no observer and the peer tools,
//! measured in one invocation with the runs interleaved (observer order rotates per round),
//! written to docs/benchmarks.md. Results, not assertions: nothing here fails on a timing.
//!
//! [`tools`] builds what runs, [`observer`] starts and stops the observers and takes
//! readings, [`storm`] measures the crash storm and the idle agent, [`symbols`] the
//! symbolizer beside Go's own, [`report`] writes the page; the rounds are here.
mod observer;
mod report;
mod storm;
mod symbols;
mod tools;

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::vm::Paths;
use observer::{time_run, Observer, Running};

pub struct Workload {
    pub name: String,
    pub cmd: Vec<String>,
    pub observers: Vec<Observer>,
}

pub fn run(rounds: usize, storm: usize, idle_secs: u64) -> Result<()> {
    let p = Paths::new()?;
    let t = tools::build(&p)?;
    let s = |x: &Path| x.display().to_string();
    let all = vec![
        Observer::None,
        Observer::Crashwatch,
        Observer::CrashwatchQuiet,
        Observer::Bpftrace,
        Observer::Libbpf,
    ];
    let two = vec![Observer::None, Observer::Crashwatch];
    // The write hooks' cost: crashwatch with and without them, side by side.
    let words = vec![
        Observer::None,
        Observer::Crashwatch,
        Observer::CrashwatchQuiet,
    ];
    let mut workloads = vec![
        Workload {
            name: "exec/exit storm: 5,000 short processes".into(),
            cmd: vec![s(&t.spawn), "5000".into(), "/bin/true".into()],
            observers: all.clone(),
        },
        Workload {
            name: "2,000,000 write(2) of 64 B to /dev/null, not fd 2 (C)".into(),
            cmd: vec![s(&t.writes), "2000000".into(), "devnull".into()],
            observers: words.clone(),
        },
        Workload {
            name: "2,000,000 write(2) of 64 B via fd 2 to /dev/null (C)".into(),
            cmd: vec![s(&t.writes), "2000000".into(), "stderr".into()],
            observers: words.clone(),
        },
        Workload {
            name: "2,000,000 write(2) of 64 B via fd 1 to /dev/null (C)".into(),
            cmd: vec![s(&t.writes), "2000000".into(), "stdout".into()],
            observers: words.clone(),
        },
        Workload {
            name: "2,000,000 write(2) of 64 B via fd 2 to a pipe (C)".into(),
            cmd: vec![s(&t.writes), "2000000".into(), "pipe".into()],
            observers: words.clone(),
        },
        Workload {
            name: "2,000,000 getppid(2): syscalls that write nothing (C)".into(),
            cmd: vec![s(&t.writes), "2000000".into(), "getppid".into()],
            observers: words.clone(),
        },
        Workload {
            name: "Python logging 500,000 lines to stderr".into(),
            cmd: vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                "import logging, sys\nlogging.basicConfig(stream=sys.stderr)\nlog = logging.getLogger('bench')\nfor i in range(500000): log.warning('line %d of the benchmark', i)".into(),
            ],
            observers: words.clone(),
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
    // How the agent attached its write hooks here, from its ready line.
    let mut words_mode: Option<String> = None;
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
                if let Some(l) = log.iter().find_map(|l| l.split_once("last words: ")) {
                    words_mode.get_or_insert_with(|| l.1.to_string());
                }
                lost_runs.extend(
                    log.into_iter()
                        .filter(|l| l.contains("stopped (kernel losses")),
                );
            }
        }
    }

    let crashes = storm::run(&t, storm, idle_secs)?;
    let mut sides = symbols::run(&t, rounds)?;
    let symbolization = symbols::markdown(&mut sides, &crashes.symbolization, crashes.frames_named);
    report::write(
        &p.root,
        rounds,
        &workloads,
        &mut times,
        &report::AgentNotes {
            lost_runs,
            words_mode,
        },
        &crashes,
        &symbolization,
    )
}
