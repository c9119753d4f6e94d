//! The kernel state pinned across agent restarts (`--pin-dir`): crashes while no agent runs
//! are reported by the next one with their own time of death, a Go program probed by the
//! first agent panicking in the gap keeps its uprobe details, a `kill -9` in the middle of a
//! crash storm loses nothing and repeats at most the one report being written at that
//! instant, an upgrade to a build with a changed program in such a storm loses and repeats
//! nothing, an incompatible pinned state is replaced and said, and `uninstall-bpf` leaves
//! nothing. Each test pins in a directory of its own and removes it. Needs root.
mod common;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use common::{
    agent_bin, crasher_bin,
    gobuild::{self, Flavour},
    Agent, Crasher, Setup,
};

/// A pin directory of the test's own, removed (with `uninstall-bpf`) at the end.
struct Pins(PathBuf);

impl Pins {
    fn new(tag: &str) -> Pins {
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/crashwatch-test-{tag}-{}",
            std::process::id()
        ));
        uninstall(&p);
        Pins(p)
    }

    fn arg(&self) -> [&str; 2] {
        ["--pin-dir", self.0.to_str().unwrap()]
    }

    /// With a kernel buffer of `ring` bytes.
    fn with_ring<'a>(&'a self, ring: &'a str) -> [&'a str; 4] {
        ["--pin-dir", self.0.to_str().unwrap(), "--ring-size", ring]
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        uninstall(&self.0);
    }
}

fn uninstall(dir: &std::path::Path) -> String {
    let out = Command::new(agent_bin())
        .args(["uninstall-bpf", "--pin-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child killed if the test ends early, so no pipe stays open after it.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seconds since the epoch of a report's `time` (`2026-12-02T16:54:41.004656Z`).
fn unix_time(t: &str) -> f64 {
    let num = |s: &str| s.parse::<i64>().unwrap();
    let (date, clock) = t.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(num).collect();
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let c: Vec<f64> = clock.split(':').map(|s| s.parse().unwrap()).collect();
    days as f64 * 86_400.0 + c[0] * 3600.0 + c[1] * 60.0 + c[2]
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Tests whose buffers must hold a gap take turns: every program records every crash on the
/// host, so a storm would fill another test's buffer while its agent is away.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A run stopped with Ctrl-C (someone trying it at a terminal) leaves nothing in the kernel;
/// one stopped with SIGTERM (a service manager) keeps recording for the next agent. Each stop
/// says which, and how to remove what stays.
#[test]
fn ctrl_c_takes_the_kernel_state_with_it_and_sigterm_keeps_it() {
    let _one = one_at_a_time();
    let pins = Pins::new("ctrlc");
    let a = Agent::start(&pins.arg());
    a.wait_log("kernel state pinned under");
    assert!(pins.0.exists());
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(10))
        .expect("the agent stopped");
    assert!(pins.0.exists(), "SIGTERM keeps the pins");
    assert_eq!(
        a.log_count("kernel state: kept pinned under"),
        1,
        "{}",
        a.log()
    );
    assert_eq!(a.log_count("crashwatch uninstall-bpf --pin-dir"), 1);
    let b = Agent::start(&pins.arg());
    b.wait_log("took over from generation 1");
    b.signal(libc::SIGINT);
    b.wait_exit(Duration::from_secs(10))
        .expect("the agent stopped");
    assert!(!pins.0.exists(), "Ctrl-C took the pins: {}", b.log());
    assert_eq!(b.log_count("kernel state: removed ("), 1, "{}", b.log());
}

#[test]
fn crashes_while_no_agent_runs_are_reported_by_the_next() {
    let _one = one_at_a_time();
    let pins = Pins::new("gap");
    // A Go program the first agent probes; it panics while no agent runs.
    let go_bin = gobuild::build("1.27", Flavour::Stripped);
    let mut go = Reap(
        Command::new(&go_bin)
            .arg("on-usr1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // One node: the agents share the state directory as they share the pins.
    let state = common::state_dir("restart");
    let [flag, dir] = pins.arg();
    let args = [flag, dir, "--state-dir", state.to_str().unwrap()];
    let t = Instant::now();
    let a = Agent::start(&args);
    let fresh = t.elapsed();
    a.wait_log("kernel state pinned under");
    a.wait_log(&format!("probing Go binary {}", go_bin.display()));
    let before = Crasher::run("null");
    a.report_for(before.pid);
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(10))
        .expect("the agent stopped");

    // A 5 s gap: crashes all through it, and the Go panic.
    let gap_start = now();
    let mut in_gap = Vec::new();
    for _ in 0..20 {
        in_gap.push(Crasher::run("bus").pid);
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(go.0.id() as i32, libc::SIGUSR1) };
    assert_eq!(go.0.wait().unwrap().code(), Some(2), "a Go panic exits 2");
    std::thread::sleep(Duration::from_secs_f64((gap_start + 5.0 - now()).max(0.0)));

    let t = Instant::now();
    let b_start = now();
    let b = Agent::start(&args);
    let adopting = t.elapsed();
    b.wait_log("took over from generation 1");
    for pid in &in_gap {
        let r = b.report_for(*pid);
        assert_eq!(r["signal"]["name"], "SIGBUS");
        let died = unix_time(r["time"].as_str().unwrap());
        assert!(
            died > gap_start - 0.5 && died < b_start,
            "time of death {} is in the gap [{gap_start}, {b_start}]",
            r["time"]
        );
        assert_eq!(b.reports_for(*pid).len(), 1, "once");
    }
    let g = b.report_for(go.0.id());
    assert_eq!(g["kind"], "go_panic");
    assert_eq!(g["go"]["panic_value"], "boom: on SIGUSR1");
    assert_eq!(
        g["go"]["panic_type"], "string",
        "the first agent's pinned Go probes fired in the gap: {g}"
    );
    b.flush();
    b.assert_no_report(before.pid);
    eprintln!(
        "restart: ready in {fresh:?} fresh, {adopting:?} taking over; {} crashes in a 5 s gap, {} reported after it",
        in_gap.len() + 1,
        in_gap.iter().filter(|p| b.try_report_for(**p).is_some()).count()
            + usize::from(b.try_report_for(go.0.id()).is_some())
    );
    b.signal(libc::SIGTERM);
    b.wait_exit(Duration::from_secs(10))
        .expect("the agent stopped");
    let said = uninstall(&pins.0);
    assert!(said.starts_with("removed "), "{said}");
    assert!(!pins.0.exists());
    // Nothing records any more: the next agent starts fresh.
    let lost = Crasher::run("null");
    let c = Agent::start(&pins.arg());
    assert!(!c.log().contains("took over"), "{}", c.log());
    c.flush();
    c.assert_no_report(lost.pid);
}

/// What a storm of 2,000 crashes across a change of agents came to.
struct Storm {
    b: Agent,
    /// The storm's pids and how many reports each got from both agents.
    times: HashMap<u32, usize>,
    missing: Vec<u32>,
    twice: usize,
}

/// Two workers crash 1,000 programs each; once the first agent has reported 300, `switch`
/// replaces it (the storm goes on meanwhile).
fn storm(args: &[&str], switch: impl FnOnce(&Agent) -> Agent) -> Storm {
    let _one = one_at_a_time();
    let a = Agent::start(args);
    let stop = AtomicBool::new(false);
    let (pids, b) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut pids = Vec::new();
                    while pids.len() < 1000 && !stop.load(Ordering::Relaxed) {
                        let mut c = Command::new(crasher_bin())
                            .arg("null")
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .unwrap();
                        pids.push(c.id());
                        let _ = c.wait();
                    }
                    pids
                })
            })
            .collect();
        let t = Instant::now();
        while a.reports().len() < 300 {
            assert!(t.elapsed() < Duration::from_secs(120), "{}", a.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        let b = switch(&a);
        let pids: Vec<u32> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (pids, b)
    });
    stop.store(true, Ordering::Relaxed);
    b.flush();
    let mut times: HashMap<u32, usize> = HashMap::new();
    for r in a.reports().into_iter().chain(b.reports()) {
        *times.entry(r["pid"].as_u64().unwrap() as u32).or_default() += 1;
    }
    let missing: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| !times.contains_key(p))
        .collect();
    let twice = times.values().filter(|n| **n > 1).count();
    eprintln!(
        "storm: {} crashes; {} reported before the switch, {} after it by the next agent; {} missing, {twice} twice",
        pids.len(),
        a.reports().len(),
        b.reports().len(),
        missing.len()
    );
    for (pid, _) in times.iter().filter(|(_, n)| **n > 1) {
        for (who, agent) in [("before", &a), ("after", &b)] {
            for r in agent.reports_for(*pid) {
                eprintln!(
                    "twice: {who}: pid {pid} kind {} time {} signal {} exit {}",
                    r["kind"], r["time"], r["signal"]["name"], r["exit"]
                );
            }
        }
    }
    assert!(!b.reports().is_empty(), "the next agent reported the rest");
    let lost: u64 = b
        .reports()
        .iter()
        .map(|r| r["lost_before"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(lost, 0, "the kernel's buffer held the gap");
    Storm {
        b,
        times,
        missing,
        twice,
    }
}

/// Both agents on one pin directory with a buffer that holds the whole gap (the default
/// holds some 400 crashes), and one state directory, as on a node (the next agent reads
/// which crashes were written).
fn storm_args(pins: &Pins, state: &str) -> Vec<String> {
    let mut args: Vec<String> = pins
        .with_ring("67108864")
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--state-dir".to_string(), state.to_string()]);
    args
}

#[test]
fn a_kill_9_in_a_crash_storm_loses_nothing_and_repeats_at_most_the_report_being_written() {
    let pins = Pins::new("storm");
    let state = common::state_dir("storm").display().to_string();
    let args = storm_args(&pins, &state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = storm(&args, |a| {
        a.signal(libc::SIGKILL);
        a.wait_exit(Duration::from_secs(10))
            .expect("the agent died");
        // A second with nobody reading, then the next agent while the storm goes on.
        std::thread::sleep(Duration::from_secs(1));
        Agent::start_with(&args, Setup::default())
    });
    // What the killed agent had read but not written (its report queue, crashes waiting for
    // their exit) was still the kernel's: the next agent reports it.
    assert!(s.missing.is_empty(), "missing: {:?}", s.missing);
    // The report being written to stdout when the kill came may be there without its key
    // (the pipe and the keys file cannot be written as one): that one can come twice. The
    // test kills right after reading a report, when that is likeliest.
    assert!(s.twice <= 1, "{} crashes reported twice", s.twice);
}

/// The agent built with the test's changed signal program (the `upgrade-test` feature) by
/// `cargo xtask static-agent`, so it shares the static build's dependencies (the deploy
/// tests built them already) instead of building everything again in a directory of its
/// own. Copied out, as the next static build puts the plain agent back in its place.
fn upgraded_agent() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args(["xtask", "static-agent", "--features", "upgrade-test"])
        .current_dir(&root)
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "building the upgraded agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = String::from_utf8(out.stdout).unwrap();
    let dir = common::state_dir("upgraded");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("crashwatch");
    std::fs::copy(built.trim(), &copy).expect("copying the upgraded agent");
    copy
}

/// An upgrade in the middle of a storm, the way a service manager does it: SIGTERM to the
/// running agent, then the new build (whose signal program differs) on the same pins and
/// state. Nothing is lost, nothing repeated, and crashes after the switch are recorded by
/// the new program.
#[test]
fn an_upgrade_in_a_crash_storm_loses_and_repeats_nothing() {
    let upgraded = upgraded_agent();
    let pins = Pins::new("upgrade");
    let state = common::state_dir("upgrade").display().to_string();
    let args = storm_args(&pins, &state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = storm(&args, |a| {
        a.signal(libc::SIGTERM);
        let st = a
            .wait_exit(Duration::from_secs(30))
            .expect("the agent stops");
        assert!(st.success(), "{}", a.log());
        let mut with_debug = args.clone();
        with_debug.extend(["--log-level", "debug"]);
        Agent::start_with(
            &with_debug,
            Setup {
                program: Some(upgraded.clone()),
                ..Setup::default()
            },
        )
    });
    assert!(s.missing.is_empty(), "missing: {:?}", s.missing);
    assert_eq!(s.twice, 0, "reported twice");
    assert!(
        s.b.log().contains("took over from generation"),
        "{}",
        s.b.log()
    );
    // The new program recorded crashes of the storm after the switch.
    let upgraded_said: std::collections::HashSet<u32> =
        s.b.log()
            .lines()
            .filter_map(|l| {
                let rest = l.split("kernel: pid ").nth(1)?;
                let (pid, said) = rest.split_once(' ')?;
                said.ends_with("upgraded program")
                    .then(|| pid.parse().ok())?
            })
            .collect();
    let by_new =
        s.b.reports()
            .iter()
            .map(|r| r["pid"].as_u64().unwrap() as u32)
            .filter(|pid| s.times.contains_key(pid) && upgraded_said.contains(pid))
            .count();
    assert!(
        by_new > 0,
        "no crash recorded by the upgraded program:\n{}",
        s.b.log()
    );
    eprintln!("upgrade: {by_new} crashes of the storm recorded by the upgraded program");
}

/// The kernel's buffer fills while no agent reads it: what it could not hold is counted by
/// the next agent, not lost silently.
#[test]
fn what_the_buffer_lost_in_the_gap_is_said() {
    let pins = Pins::new("lost");
    // 64 KiB: a few crashes with their stack copies.
    let args = pins.with_ring("65536");
    let a = Agent::start(&args);
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(10))
        .expect("the agent stopped");
    let pids: Vec<u32> = (0..30).map(|_| Crasher::run("null").pid).collect();
    let b = Agent::start(&args);
    assert!(
        b.wait_log_count("ring buffer full: ", 1, Duration::from_secs(10)),
        "{}",
        b.log()
    );
    let c = Crasher::run("null");
    b.report_for(c.pid);
    b.flush();
    // Every report is in by now (flush): no waiting for those that cannot come.
    let seen: std::collections::HashSet<u64> = b
        .reports()
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .collect();
    let reported = pids
        .iter()
        .filter(|p| seen.contains(&u64::from(**p)))
        .count();
    assert!(reported < pids.len(), "64 KiB held all {reported}?");
    eprintln!(
        "lost: {reported} of {} gap crashes fit in 64 KiB; the log says: {}",
        pids.len(),
        b.log()
            .lines()
            .find(|l| l.contains("ring buffer full"))
            .unwrap_or("")
    );
}

#[test]
fn an_incompatible_pinned_state_is_replaced_and_said() {
    let pins = Pins::new("layout");
    let a = Agent::start(&pins.arg());
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(10))
        .expect("the agent stopped");
    // An agent whose shared maps mean something else (a failpoint changes its layout hash).
    let b = Agent::start_with(
        &pins.arg(),
        Setup {
            wrap: vec!["env".into(), "CRASHWATCH_FAILPOINT_PIN_LAYOUT=1".into()],
            ..Setup::default()
        },
    );
    assert!(
        b.log()
            .contains("pinned by an incompatible crashwatch (generation 1) were removed"),
        "{}",
        b.log()
    );
    assert!(!b.log().contains("took over"), "{}", b.log());
    let c = Crasher::run("null");
    b.report_for(c.pid);
}
