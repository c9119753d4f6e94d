//! `cargo xtask bench`: what crashwatch costs a host, beside no observer and the peer tools,
//! measured in one invocation with the runs interleaved (observer order rotates per round),
//! written to docs/benchmarks.md. Results, not assertions: nothing here fails on a timing.
//!
//! [`tools`] builds what runs, [`observer`] starts and stops the observers and takes
//! readings, [`bpfstats`] reads the kernel's per-program run times for the cost breakdown,
//! [`history`] loads the crash history with a storm and times `crashwatch report` over it,
//! [`sinks`] the outputs under a storm and their spools' replay, [`storm`] measures the crash
//! storm and the idle agent, [`symbols`] the symbolizer beside Go's own, [`report`] writes
//! the page, [`logs`] `crashwatch analyze` beside grep over a 1 GiB log, [`dumps`] what
//! `run --dumps` holds and costs, [`startup`] how long `exec` takes to start a command; the
//! rounds are here.
mod bpfstats;
mod dumps;
mod history;
mod logs;
pub(crate) mod observer;
mod report;
mod sinks;
mod startup;
mod storm;
mod symbols;
mod tools;
mod web;
mod words;

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::Result;

use crate::vm::Paths;
use observer::{cpu_and_rss, time_run, Observer, Running};

pub struct Workload {
    pub name: String,
    pub cmd: Vec<String>,
    pub observers: Vec<Observer>,
    /// Processes it execs: the agent's CPU is taken around it, per 1,000 execs.
    pub execs: usize,
    /// How many of what it does (execs, signals, writes…): the kernel-side cost is shown per
    /// one of these.
    pub events: (usize, &'static str),
}

/// One pass of the cost breakdown: each workload under crashwatch with the kernel's BPF
/// statistics on, the programs' time and the agent's CPU taken around it.
pub struct Breakdown {
    /// Per workload: the programs that ran (name → time and runs), and the agent's CPU ns.
    pub per_workload: Vec<(BTreeMap<String, bpfstats::Counters>, u64)>,
    /// How the agent attached its write hooks, from its start-up details.
    pub words_mode: Option<String>,
}

/// What `cargo xtask bench` is asked to measure.
#[derive(clap::Args)]
pub struct Args {
    /// Interleaved rounds per workload and observer; each ratio is shown with its range
    /// over rounds and each baseline with its noise (±MAD). Up to 3 more passes measure
    /// the programs' own time per event with the kernel's BPF statistics.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Crashing processes in the crash storm.
    #[arg(long, default_value_t = 2000)]
    pub storm: usize,
    /// Seconds the idle agent is watched.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Crashes stored in the crash-history measurement.
    #[arg(long, default_value_t = 100_000)]
    pub history: usize,
    /// Measure the crash history alone and put its section into docs/benchmarks.md.
    #[arg(long)]
    pub history_only: bool,
    /// Measure the outputs alone (a storm of --storm crashes) and put their section into
    /// docs/benchmarks.md.
    #[arg(long)]
    pub sinks_only: bool,
    /// Measure `crashwatch analyze` alone (beside grep, over a 1 GiB log) and put its
    /// section into docs/benchmarks.md.
    #[arg(long)]
    pub analyze_only: bool,
    /// Measure the crash page and its API over 10,000 clusters and 100,000 reports alone
    /// and put its section into docs/benchmarks.md.
    #[arg(long)]
    pub web_only: bool,
    /// Measure the fleet hub alone (ingest into one and two replicas; the page and API over
    /// 1,000,000 reports on PostgreSQL) and put its section into docs/benchmarks.md.
    #[arg(long)]
    pub hub_only: bool,
    /// Measure the hub's retention alone (one pass over 10,000,000 reports on PostgreSQL,
    /// ingest beside it) and put its section into docs/benchmarks.md.
    #[arg(long)]
    pub hub_retention: bool,
    /// Measure `run --dumps` alone (the hold of a crashing process at 10 MiB to 4 GiB, the
    /// agent's cost per dump, storms with and without it) and put its section into
    /// docs/benchmarks.md.
    #[arg(long)]
    pub dumps_only: bool,
    /// Measure how long `crashwatch exec` takes to start a command (beside a plain `sh`)
    /// alone and put its section into docs/benchmarks.md.
    #[arg(long)]
    pub exec_only: bool,
    /// Measure the write hooks alone (the write workloads without an observer, under
    /// crashwatch and with `--last-words off`, then the programs' ns per write from the
    /// kernel's BPF statistics) and put their section into docs/benchmarks.md.
    #[arg(long)]
    pub words_only: bool,
}

pub fn run(args: Args) -> Result<()> {
    let Args {
        rounds,
        storm,
        idle_secs,
        history: history_crashes,
        history_only,
        sinks_only,
        analyze_only,
        web_only,
        hub_only,
        hub_retention,
        dumps_only,
        exec_only,
        words_only,
    } = args;
    let p = Paths::new()?;
    let t = tools::build(&p)?;
    let page = p.root.join("docs/benchmarks.md");
    if history_only {
        let section = history::markdown(&history::run(&t, history_crashes)?);
        return report::splice(&page, "## Crash history", "--history-only", &section);
    }
    if analyze_only {
        let section = logs::markdown(&logs::run(&t, &p.root.join("target"))?);
        return report::splice(&page, "## Log analysis", "--analyze-only", &section);
    }
    if exec_only {
        let section = startup::markdown(&startup::run(&t)?);
        return report::splice(
            &page,
            "## Starting a command under exec",
            "--exec-only",
            &section,
        );
    }
    if hub_only {
        let section = crate::fleet::bench_section(&p, &t.agent)?;
        return report::splice(&page, "## Fleet hub", "--hub-only", &section);
    }
    if hub_retention {
        let section = crate::fleet::retention_section(&p, &t.agent)?;
        return report::splice(&page, "## Hub retention", "--hub-retention", &section);
    }
    if dumps_only {
        let section = dumps::markdown(&dumps::run(&t)?);
        return report::splice(&page, "## Core dumps (--dumps)", "--dumps-only", &section);
    }
    if web_only {
        let section = web::markdown(&web::run(&t)?);
        return report::splice(&page, "## Crash page", "--web-only", &section);
    }
    if sinks_only {
        let section = sinks::markdown(&sinks::run(&t, storm)?);
        return report::splice(&page, "## Outputs", "--sinks-only", &section);
    }
    let all = vec![
        Observer::None,
        Observer::Crashwatch,
        Observer::CrashwatchQuiet,
        Observer::Bpftrace,
        Observer::Libbpf,
    ];
    let workloads = workloads(&t, &all);
    if words_only {
        let words: Vec<Workload> = workloads
            .into_iter()
            .filter(|w| w.events.1 == "write" || w.events.1 == "line" || w.events.1 == "syscall")
            .collect();
        let section = words::section(words, &t.agent, rounds)?;
        return report::splice(&page, "## The write hooks", "--words-only", &section);
    }
    let mut times: Vec<Vec<Vec<f64>>> = workloads
        .iter()
        .map(|w| vec![Vec::new(); w.observers.len()])
        .collect();
    let mut lost_runs = Vec::new();
    // The agent's CPU ms per 1,000 execs, per round, for each crashwatch observer.
    let mut exec_cpu: Vec<(Observer, f64)> = Vec::new();
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
                let agent = running.pid().filter(|_| w.execs > 0 && o.is_crashwatch());
                let before = agent.map(|p| cpu_and_rss(p).0);
                times[wi][oi].push(time_run(&mut cmd)?);
                if let (Some(p), Some(b)) = (agent, before) {
                    // CPU ms per 1,000 execs.
                    exec_cpu.push((o, (cpu_and_rss(p).0 - b) * 1e6 / w.execs as f64));
                }
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

    let breakdown = (0..rounds.clamp(1, 3))
        .map(|_| breakdown(&workloads, &t.agent))
        .collect::<Result<Vec<_>>>()?;
    let words_mode = breakdown.iter().find_map(|b| b.words_mode.clone());
    let crashes = storm::run(&t, storm, idle_secs)?;
    let history = history::markdown(&history::run(&t, history_crashes)?);
    let outputs = sinks::markdown(&sinks::run(&t, storm)?);
    let mut sides = symbols::run(&t, rounds)?;
    let symbolization = symbols::markdown(&mut sides, &crashes.symbolization, crashes.frames_named);
    let analysis = logs::markdown(&logs::run(&t, &p.root.join("target"))?);
    let page = web::markdown(&web::run(&t)?);
    report::write(
        &p.root,
        rounds,
        &workloads,
        &times,
        &report::AgentNotes {
            lost_runs,
            words_mode,
            exec_cpu,
            breakdown,
        },
        &crashes,
        &format!("{history}\n{outputs}\n{analysis}\n{page}\n{symbolization}"),
    )
}

/// The cost breakdown: every workload once under crashwatch with the kernel's BPF statistics
/// on (apart from the timed rounds: the statistics cost ~20 ns per program run).
/// Every workload of the main table, each with the observers it runs under.
fn workloads(t: &tools::Tools, all: &[Observer]) -> Vec<Workload> {
    let all = all.to_vec();
    let s = |x: &Path| x.display().to_string();
    // Go's own writes: only crashwatch probes them.
    let two = vec![Observer::None, Observer::Crashwatch];
    // The write hooks' cost: crashwatch with and without them, side by side.
    let words = vec![
        Observer::None,
        Observer::Crashwatch,
        Observer::CrashwatchQuiet,
    ];
    let row = |name: &str, cmd: Vec<String>, observers: &Vec<Observer>, events| Workload {
        name: name.into(),
        cmd,
        observers: observers.clone(),
        execs: 0,
        events,
    };
    let writes = |n: &str, mode: &str| vec![s(&t.writes), n.into(), mode.into()];
    let mut workloads = vec![
        Workload {
            execs: 5000,
            ..row(
                "exec/exit storm: 5,000 short processes",
                vec![s(&t.spawn), "5000".into(), "/bin/true".into()],
                &all,
                (5000, "exec"),
            )
        },
        row(
            "fork storm: 10,000 forks that exit at once, no exec (C)",
            vec![s(&t.spawn), "10000".into(), "--fork".into()],
            &all,
            (10000, "fork"),
        ),
        row(
            "thread storm: 50,000 threads created and joined (C)",
            vec![s(&t.spawn), "50000".into(), "--thread".into()],
            &all,
            (50000, "thread"),
        ),
        row(
            "100,000 handled signals (C, SIGUSR1)",
            vec![s(&t.signals), "100000".into()],
            &all,
            (100000, "signal"),
        ),
        row(
            "2,000,000 getppid(2): syscalls that write nothing (C)",
            writes("2000000", "getppid"),
            &all,
            (2000000, "syscall"),
        ),
        row(
            "2,000,000 write(2) of 64 B to /dev/null, not fd 1 or 2 (C)",
            writes("2000000", "devnull"),
            &words,
            (2000000, "write"),
        ),
        row(
            "2,000,000 write(2) of 64 B via fd 2 to /dev/null (C)",
            writes("2000000", "stderr"),
            &words,
            (2000000, "write"),
        ),
        row(
            "2,000,000 write(2) of 64 B via fd 1 to /dev/null (C)",
            writes("2000000", "stdout"),
            &words,
            (2000000, "write"),
        ),
        row(
            "2,000,000 write(2) of 64 B via fd 2 to a pipe (C)",
            writes("2000000", "pipe"),
            &words,
            (2000000, "write"),
        ),
        row(
            "Python logging 500,000 lines to stderr",
            vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                "import logging, sys\nlogging.basicConfig(stream=sys.stderr)\nlog = logging.getLogger('bench')\nfor i in range(500000): log.warning('line %d of the benchmark', i)".into(),
            ],
            &words,
            (500000, "line"),
        ),
    ];
    for (v, bin) in &t.gowrite {
        workloads.push(row(
            &format!("2,000,000 os.Stderr.Write of 64 B (Go {v}, probed binary)"),
            vec![s(bin), "2000000".into()],
            &two,
            (2000000, "write"),
        ));
    }
    workloads
}

pub(crate) fn breakdown(workloads: &[Workload], agent: &Path) -> Result<Breakdown> {
    let _stats = bpfstats::Enabled::new()?;
    // At debug level the agent says at start what it loaded and how (the programs' names,
    // the write hooks); the kernel programs then also log what they fail to capture, which
    // costs only on those failures.
    let running = Running::start_with(Observer::Crashwatch, agent, &["--log-level", "debug"])?;
    let pid = running.pid().expect("crashwatch has a process");
    let (names, words_mode) = {
        let log = running.log.lock().unwrap();
        let words = log.iter().find_map(|l| {
            let (_, w) = l.split_once("last words: ")?;
            Some(w.split(", kernel state ").next().unwrap_or(w).to_string())
        });
        (bpfstats::loaded_names(&log), words)
    };
    let mut per_workload = Vec::new();
    for w in workloads {
        let mut cmd = Command::new(&w.cmd[0]);
        cmd.args(&w.cmd[1..]);
        let (b, cpu0) = (bpfstats::snapshot(pid, &names)?, cpu_and_rss(pid).0);
        time_run(&mut cmd)?;
        let (a, cpu1) = (bpfstats::snapshot(pid, &names)?, cpu_and_rss(pid).0);
        per_workload.push((bpfstats::delta(&b, &a), ((cpu1 - cpu0) * 1e9) as u64));
    }
    running.stop();
    Ok(Breakdown {
        per_workload,
        words_mode,
    })
}
