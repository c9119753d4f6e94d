//! What processes that do not crash cost the agent: once it has classified an executable,
//! runs of it that end normally send nothing, and a crash of one of them is still reported
//! whole. A file of its own: the record counts it checks must not include another test's
//! processes. Needs root (CI runs as root).
mod common;

use std::{process::Stdio, time::Duration};

use common::{Agent, Crasher};

/// `crashwatch: records from the kernel: N execs (...), M identities ..., K exits; ...`
fn records(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("crashwatch: records from the kernel: "))
        .unwrap_or_else(|| panic!("no records line in the agent's log:\n{log}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1], n[2])
}

/// 300 runs of a classified binary reach the agent as no more than background noise (each
/// used to send an exec and an exit record); a crash of that binary, whose exec was not sent,
/// names its executable, command line, cgroup and stack all the same.
#[test]
fn a_known_binarys_runs_cost_no_records_and_its_crash_is_still_whole() {
    let a = Agent::start(&[]);
    // A copy of its own: a file the agent has never seen.
    // Not CARGO_TARGET_TMPDIR: the VMs run this test too.
    let bin = std::env::temp_dir().join(format!("quiet-crasher-{}", std::process::id()));
    std::fs::copy(common::crasher_bin(), &bin).unwrap();
    let ok = || {
        let st = Crasher::command_of(&bin, "ok")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    };
    // Its first runs are sent until the agent has an answer for the file.
    for _ in 0..3 {
        ok();
        a.flush();
        std::thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..300 {
        ok();
    }
    let c = Crasher::finish(Crasher::command_of(&bin, "null").spawn().unwrap());
    assert_eq!(c.signal, Some(libc::SIGSEGV));
    let r = a.report_for(c.pid);
    assert_eq!(r["kind"], "signal", "{r}");
    assert_eq!(r["exe"].as_str(), bin.to_str(), "{r}");
    assert_eq!(r["cmdline"][0].as_str(), bin.to_str(), "{r}");
    assert_eq!(r["cmdline"][1], "null", "{r}");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let cg = r["cgroup"].as_str().unwrap_or_default();
    assert!(
        !cg.is_empty() && own.lines().any(|l| l.ends_with(cg)),
        "cgroup {cg:?} is not the test's ({own:?})"
    );
    assert_eq!(r["stack"][0]["function"], "null_write", "{r}");
    a.signal(libc::SIGINT);
    assert!(a.wait_exit(Duration::from_secs(60)).is_some());
    let (execs, idents, exits) = records(&a.log());
    println!("records: {execs} execs, {idents} identities, {exits} exits");
    // Before: at least 303 execs and 303 exits.
    assert!(
        execs < 100 && exits < 100,
        "{execs} execs and {exits} exits sent for 300 quiet runs"
    );
    assert!(
        idents >= 1,
        "the crash's identity was not read at its signal"
    );
    let _ = std::fs::remove_file(&bin);
}
