//! `cargo xtask fleet-sim`: a fleet of N nodes' agents, simulated against real hub replicas on
//! a real PostgreSQL (the servers the hub's tests start: crashwatch/tests/hub/servers.rs,
//! shared). The reports are real: crashes of this machine recorded by `crashwatch exec`,
//! rewritten per node ([`load::rewrite`]). The timeline ([`sim`]) runs a steady trickle, a
//! Deployment crash-looping on 50 nodes, a rollout's SIGTERMs and a new build that regresses,
//! with heartbeats and a few silent nodes; then the page's answers are checked (the top
//! cluster, its node and workload counts, the loop, the regression flag, the terminations,
//! the silent nodes, every report stored once). `--ramp` then doubles the trickle step by
//! step until something gives, and says what gave first. Results, printed; docs/fleet.md
//! keeps what they taught.
mod bench;
mod load;
mod retention;
mod sim;

/// What the shared servers file needs from "common".
mod common {
    use std::path::PathBuf;

    pub static AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

    pub fn agent_bin() -> PathBuf {
        AGENT.get().expect("the agent is built first").clone()
    }

    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }
}

#[path = "../../../crashwatch/tests/hub/servers.rs"]
#[allow(dead_code)]
mod servers;

/// The agent's own clocks (RFC 3339 as agents write it).
#[path = "../../../crashwatch/src/model/clock.rs"]
#[allow(dead_code)]
mod clock;

use std::{
    path::Path,
    process::Command,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::observer::peak_rss_kib;
use crate::vm::{run as sh, Paths};
use load::{quantile_ms, Pool, Seen};
use servers::{token_file, Hub, Postgres};

const INGEST: &str = "fleet-sim-ingest-0123456789";
const READ: &str = "fleet-sim-read-0123456789ab";

#[derive(clap::Args)]
pub struct Args {
    /// Nodes in the simulated fleet.
    #[arg(long, default_value_t = 300)]
    pub nodes: usize,
    /// Seconds the timeline runs (the silent nodes show as silent after 95 s).
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    /// Crashes per second of the steady trickle, fleet-wide.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Then double the trickle every --step-seconds until the hub falls behind, fails, or
    /// its pages pass 50 ms at p95; say what gave first.
    #[arg(long)]
    pub ramp: bool,
    #[arg(long, default_value_t = 30)]
    pub step_seconds: u64,
    /// HTTP clients posting at once (agents' connections).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

pub fn run(a: Args) -> Result<()> {
    if a.nodes < sim::LOOP_NODES + sim::SILENT + 1 {
        bail!("--nodes: at least {}", sim::LOOP_NODES + sim::SILENT + 1);
    }
    let p = Paths::new()?;
    let dir = p.vm.parent().context("target")?.join("fleet-sim");
    std::fs::create_dir_all(&dir)?;
    eprintln!("fleet-sim: building the agent");
    sh(crate::dist::cargo()
        .args(["build", "--release", "-p", "crashwatch"])
        .current_dir(&p.root))?;
    let _ = common::AGENT.set(crate::dist::target_dir(&p.root).join("release/crashwatch"));
    let templates = record(&p.root, &dir)?;
    eprintln!("fleet-sim: {} real reports recorded", templates.len());

    let pg = Postgres::start();
    let ingest = token_file(&dir, "ingest", INGEST);
    let read = token_file(&dir, "read", READ);
    let a_hub = Hub::start(&pg.url(), &ingest, Some(&read));
    let b_hub = Hub::start(&pg.url(), &ingest, Some(&read));
    let bases = vec![a_hub.url(), b_hub.url()];
    let mut fleet = sim::Fleet::new(a.nodes, templates);

    eprintln!(
        "fleet-sim: {} nodes, {} s, trickle {}/s, a loop on {} nodes, a rollout, a regression",
        a.nodes,
        a.seconds,
        a.rate,
        sim::LOOP_NODES
    );
    let (seen, took, reads) = phase(&mut fleet, &bases, &a, a.rate, a.seconds, true);
    std::thread::sleep(Duration::from_secs(2));
    print_phase("timeline", a.rate, a.seconds, took, &seen, &reads);
    let rss = [&a_hub, &b_hub].map(|h| peak_rss_kib(h.pid()));
    println!(
        "replicas' peak RSS: {} and {} MiB; database {} MiB, {} reports",
        rss[0] / 1024,
        rss[1] / 1024,
        pg.one("SELECT pg_database_size('postgres')") >> 20,
        pg.one("SELECT COUNT(*) FROM reports")
    );
    let failures = check(&b_hub, &pg, &fleet.sent, a.seconds);
    for f in &failures {
        println!("CHECK FAILED: {f}");
    }

    if a.ramp {
        ramp(&mut fleet, &bases, &a);
    }
    if !failures.is_empty() {
        bail!("{} checks failed", failures.len());
    }
    Ok(())
}

/// `cargo xtask bench --hub-only`'s section: the hub measured with `agent` ([`bench`]).
pub fn bench_section(p: &Paths, agent: &Path) -> Result<String> {
    let dir = p.vm.parent().context("target")?.join("fleet-bench");
    std::fs::create_dir_all(&dir)?;
    let _ = common::AGENT.set(agent.to_path_buf());
    let templates = record(&p.root, &dir)?;
    Ok(bench::markdown(&bench::run(templates, &dir)?))
}

/// `cargo xtask bench --hub-retention`'s section ([`retention`]).
pub fn retention_section(p: &Paths, agent: &Path) -> Result<String> {
    let dir = p.vm.parent().context("target")?.join("fleet-bench");
    std::fs::create_dir_all(&dir)?;
    let _ = common::AGENT.set(agent.to_path_buf());
    let templates = record(&p.root, &dir)?;
    Ok(retention::markdown(&retention::run(&templates[0], &dir)?))
}

/// Real crashes of this machine, as the agent reports them: a segfault, an abort, a Python
/// exception.
fn record(root: &Path, dir: &Path) -> Result<Vec<Value>> {
    let crasher = dir.join("crasher");
    sh(Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&crasher)
        .arg(root.join("crashwatch/tests/crashers/crasher.c")))?;
    let out = dir.join("recorded.jsonl");
    let _ = std::fs::remove_file(&out);
    let script = format!(
        "{c} null; {c} abort; python3 -c 'raise RuntimeError(\"fleet-sim\")'; true",
        c = crasher.display()
    );
    let st = Command::new(common::agent_bin())
        .args(["exec", "--exit-code", "passthrough", "--json"])
        .arg(&out)
        .args(["--", "sh", "-c", &script])
        .status()
        .context("crashwatch exec (as root)")?;
    if !st.success() {
        bail!("crashwatch exec failed: {st}");
    }
    let text = std::fs::read_to_string(&out)?;
    let reports: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if reports.len() < 3 {
        bail!("{} reports recorded, 3 expected", reports.len());
    }
    Ok(reports)
}

type Reads = Vec<(String, u64, bool)>;

/// One run of the timeline with the pages read throughout.
fn phase(
    fleet: &mut sim::Fleet,
    bases: &[String],
    a: &Args,
    rate: f64,
    seconds: u64,
    scenarios: bool,
) -> (Seen, f64, Reads) {
    let pool = Pool::start(bases, INGEST, a.clients);
    let stop = Arc::new(AtomicBool::new(false));
    let paths = Arc::new(Mutex::new(vec![
        "/".to_string(),
        "/api/clusters".to_string(),
        "/nodes".to_string(),
        format!("/api/clusters?workload={}", sim::LOOP_WORKLOAD),
    ]));
    let reader = load::reader(
        bases[bases.len() - 1].clone(),
        READ.to_string(),
        paths,
        Duration::from_millis(250),
        stop.clone(),
    );
    let took = fleet.run(&pool.queue, rate, Duration::from_secs(seconds), scenarios);
    let seen = pool.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap_or_default();
    (seen, took, reads)
}

fn print_phase(name: &str, rate: f64, seconds: u64, took: f64, seen: &Seen, reads: &Reads) {
    let posted: usize = seen.us.values().map(Vec::len).sum();
    let failed: u64 = seen.failed.values().sum();
    println!(
        "{name}: trickle {rate}/s for {seconds} s took {took:.1} s; {posted} posts answered \
         ({:.0}/s), {failed} failed; results {:?}",
        posted as f64 / took,
        seen.results
    );
    for (kind, us) in &seen.us {
        println!(
            "  POST {kind}: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
            quantile_ms(us, 0.5),
            quantile_ms(us, 0.95),
            quantile_ms(us, 0.99)
        );
    }
    let mut paths: Vec<&String> = reads.iter().map(|r| &r.0).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        let us: Vec<u64> = reads.iter().filter(|r| &r.0 == p).map(|r| r.1).collect();
        let bad = reads.iter().filter(|r| &r.0 == p && !r.2).count();
        println!(
            "  GET {p}: p50 {:.1} ms, p95 {:.1} ms over {} reads{}",
            quantile_ms(&us, 0.5),
            quantile_ms(&us, 0.95),
            us.len(),
            if bad > 0 {
                format!(", {bad} failed")
            } else {
                String::new()
            }
        );
    }
}

fn get(hub: &Hub, path: &str) -> Value {
    let (st, body) = hub.get(path, Some(READ));
    if st != 200 {
        return Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// The page's answers against what was sent; each failure said.
fn check(hub: &Hub, pg: &Postgres, sent: &sim::Sent, seconds: u64) -> Vec<String> {
    let mut failed = Vec::new();
    let mut expect = |what: &str, ok: bool, got: String| {
        println!("check: {what}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(format!("{what}: {got}"));
        }
    };
    let stored = pg.one("SELECT COUNT(*) FROM reports") as u64;
    expect(
        "every report stored once",
        stored == sent.reports,
        format!(
            "{stored} stored, {} sent ({} twice)",
            sent.reports, sent.twice
        ),
    );
    let list = get(hub, "/api/clusters?limit=200");
    let clusters = list["clusters"].as_array().cloned().unwrap_or_default();
    let top = clusters
        .iter()
        .max_by_key(|c| c["count"].as_u64().unwrap_or(0))
        .cloned()
        .unwrap_or(Value::Null);
    expect(
        "the top cluster is the crash loop",
        top["fingerprint"] == sim::LOOP_FP && top["count"] == sent.loop_reports,
        format!("{top}"),
    );
    expect(
        "on 50 nodes, in 1 namespace, 1 workload",
        top["fleet"]["node_count"] == sim::LOOP_NODES
            && top["fleet"]["namespace_count"] == 1
            && top["fleet"]["workload_count"] == 1,
        format!("{}", top["fleet"]),
    );
    let loops = get(hub, "/api/loops");
    let looped = loops["loops"].as_array().is_some_and(|l| {
        l.iter().any(|x| {
            x["scope"] == "workload"
                && x["name"] == sim::LOOP_WORKLOAD
                && x["namespace"] == sim::LOOP_NS
        })
    });
    expect("the workload's crash loop", looped, format!("{loops}"));
    let reg = pg.query(&format!(
        "SELECT COALESCE(regression, '') FROM clusters WHERE fingerprint = '{}'",
        sim::REG_FP
    ));
    expect(
        "the new build's cluster is a regression",
        reg == [format!("rev-{}", sim::REG_BUILD)],
        format!("{reg:?}"),
    );
    let (_, metrics) = hub.get("/metrics", None);
    let terms = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "crashwatch_fleet_terminations_24h{namespace=\"web\",workload=\"frontend\",signal=\"SIGTERM\"} ",
            )
        })
        .and_then(|v| v.parse::<u64>().ok());
    expect(
        "the rollout's terminations counted, not clustered",
        terms == Some(sent.terminations),
        format!("{terms:?} of {}", sent.terminations),
    );
    if seconds >= 100 {
        let nodes = get(hub, "/api/nodes");
        let silent = nodes["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["silent"] == true).count());
        expect(
            "the silent nodes shown silent",
            silent == sim::SILENT,
            format!("{silent} silent"),
        );
    }
    failed
}

/// Doubles the trickle each step until the hub falls behind (under 90 % of the rate) or
/// fails posts; says the rate at which the page first passed 50 ms at p95 on the way.
fn ramp(fleet: &mut sim::Fleet, bases: &[String], a: &Args) {
    let mut rate = a.rate.max(50.0);
    let mut page_gave = None;
    println!("\nramp: the trickle doubled every {} s", a.step_seconds);
    for _ in 0..10 {
        let (seen, took, reads) = phase(fleet, bases, a, rate, a.step_seconds, false);
        print_phase("step", rate, a.step_seconds, took, &seen, &reads);
        let answered = seen.us.get("report").map_or(0, Vec::len) as f64;
        let failed: u64 = seen.failed.values().sum();
        let page: Vec<u64> = reads
            .iter()
            .filter(|r| r.0 == "/" || r.0 == "/api/clusters")
            .map(|r| r.1)
            .collect();
        let page_p95 = quantile_ms(&page, 0.95);
        if page_p95 > 50.0 && page_gave.is_none() {
            page_gave = Some(rate);
            println!("ramp: the page passed 50 ms at p95 ({page_p95:.1} ms) at {rate}/s");
        }
        let achieved = answered / took;
        let gave = if achieved < 0.9 * rate {
            Some(format!(
                "ingest: {achieved:.0}/s answered of {rate}/s asked"
            ))
        } else if failed > 0 {
            Some(format!("{failed} posts failed"))
        } else {
            None
        };
        if let Some(g) = gave {
            println!("ramp: ingest gave at {rate}/s: {g}");
            return;
        }
        rate *= 2.0;
    }
    println!("ramp: ingest kept up to {rate}/s");
}
