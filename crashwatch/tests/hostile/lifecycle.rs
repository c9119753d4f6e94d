//! The agent's own life: hundreds of probed binaries released and stopped promptly, and a
//! sink that goes away.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    alone,
    common::{
        gobuild::{self, Flavour},
        spawn, Agent, Crasher, Setup,
    },
    corpus, run,
};

/// Copies `go` to `n` new files in `dir` and runs each once; waits until the agent probed all.
fn one_shot_binaries(a: &Agent, dir: &Path, go: &Path, n: usize) -> Vec<PathBuf> {
    let bins: Vec<PathBuf> = (0..n)
        .map(|i| {
            let p = dir.join(format!("oneshot-{i}"));
            fs::copy(go, &p).unwrap();
            p
        })
        .collect();
    for b in &bins {
        assert!(run(b, &["noop"]).2.success());
    }
    let needle = format!("probing Go binary {}", dir.join("oneshot-").display());
    assert!(
        a.wait_log_count(&needle, n, Duration::from_secs(300)),
        "{} of {n} binaries probed; log tail:\n{}",
        a.log_count(&needle),
        a.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    bins
}

/// 5a. Five hundred one-shot Go binaries: once nothing runs them, their probes and
///     descriptors are released; at once for the deleted ones (`go run` deletes its binary),
///     after `--go-release-after` for the others.
#[test]
fn one_shot_go_binaries_are_released() {
    let _alone = alone();
    let a = Agent::start_with(&["--go-release-after", "30"], Setup::default());
    let d = corpus::dir("oneshot-release");
    let go = gobuild::build("1.27", Flavour::Static);
    let fds_start = a.fd_count();
    let bins = one_shot_binaries(&a, &d, &go, 500);
    let fds_probed = a.fd_count();
    let t0 = Instant::now();
    for b in &bins[..250] {
        fs::remove_file(b).unwrap();
    }
    // Each binary holds two descriptors (its link and its file).
    let fds_deleted_gone = wait_fds(&a, fds_start + 2 * 250 + 10, Duration::from_secs(20));
    let deleted_after = t0.elapsed();
    let fds_after = wait_fds(&a, fds_start + 10, Duration::from_secs(120));
    let all_after = t0.elapsed();
    println!(
        "agent fds: {fds_start} at start, {fds_probed} with 500 binaries probed, {fds_deleted_gone} {deleted_after:?} after 250 were deleted, {fds_after} {all_after:?} after (--go-release-after 30)"
    );
    assert!(
        fds_deleted_gone <= fds_start + 2 * 250 + 10,
        "the deleted binaries' descriptors were not released: {fds_deleted_gone}"
    );
    assert!(
        fds_after <= fds_start + 10,
        "{fds_after} descriptors open, {fds_start} at start"
    );
    a.signal(libc::SIGINT);
    let t0 = Instant::now();
    let st = a.wait_exit(Duration::from_secs(60));
    println!("exit after SIGINT: {:?}", t0.elapsed());
    assert!(st.is_some_and(|s| s.success()), "exit status {st:?}");
    let _ = fs::remove_dir_all(&d);
}

/// Waits up to `timeout` for the agent to hold at most `fds` descriptors; how many it holds.
fn wait_fds(a: &Agent, fds: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    while a.fd_count() > fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    a.fd_count()
}

/// 5b. An agent holding the probes of 500 binaries stops promptly on SIGINT, and another
///     agent starting meanwhile probes a fresh binary without waiting behind it.
#[test]
fn an_agent_with_500_probed_binaries_stops_promptly() {
    let _alone = alone();
    let a = Agent::start(&[]);
    let d = corpus::dir("oneshot-stop");
    let go = gobuild::build("1.27", Flavour::Static);
    one_shot_binaries(&a, &d, &go, 500);
    let fds = a.fd_count();
    let b = Agent::start(&[]);
    let fresh = d.join("fresh");
    fs::copy(&go, &fresh).unwrap();
    a.signal(libc::SIGINT);
    let t0 = Instant::now();
    let mut child = spawn(Command::new(&fresh).arg("sleep").stdout(Stdio::null()));
    let probed = b.wait_log_count(
        &format!("probing Go binary {}", fresh.display()),
        1,
        Duration::from_secs(60),
    );
    let probe_latency = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let st = a.wait_exit(Duration::from_secs(60));
    let stop = t0.elapsed();
    println!(
        "agent with 500 binaries probed ({fds} fds): exit after SIGINT in {stop:?}; meanwhile another agent probed a fresh binary within {probe_latency:?}"
    );
    assert!(probed, "the second agent never probed the fresh binary");
    assert!(st.is_some(), "still running 60 s after SIGINT");
    assert!(stop < Duration::from_secs(5), "took {stop:?} to stop");
    let _ = fs::remove_dir_all(&d);
}

/// 9c. Stdout closed under the agent, and it is the only sink: the agent says so and stops
///     cleanly instead of failing once per report forever.
#[test]
fn a_closed_stdout_stops_the_agent_cleanly() {
    let a = Agent::start_with(
        &[],
        Setup {
            keep_stdout: true,
            ..Setup::default()
        },
    );
    drop(a.stdout.lock().unwrap().take());
    let c = Crasher::run("null");
    assert_eq!(c.signal, Some(11));
    let st = a.wait_exit(Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit status {st:?}; log:\n{}",
        a.log()
    );
    assert!(a.log().contains("broken pipe"), "log:\n{}", a.log());
    // At least this crash's report; crashes of tests running beside this one count too.
    let unwritten = a
        .log()
        .split("reports not written ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        unwritten.is_some_and(|n| n >= 1),
        "the lost report is counted: {}",
        a.log()
    );
}
