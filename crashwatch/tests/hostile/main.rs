//! A hostile and unlucky world against the real agent: binaries whose symbols lie, files of
//! gigabytes, inodes that come back, paths that mean something else to the agent, hundreds of
//! one-shot binaries, fewer privileges, names made of escape sequences, signals other
//! processes send, a JVM's routine faults. The agent must not change what a program computes,
//! must not die or bloat, and must not miss or misreport a crash. Inputs come from
//! [`corpus`]. Needs root (CI runs as root).
#[path = "../common/mod.rs"]
mod common;
mod corpus;

mod binaries;
mod lifecycle;
mod privileges;
mod reports;

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
};

use serde_json::Value;

/// The agent the tests share: every exit reported, and no limit on Go binaries (the one-shot
/// tests run a thousand of them past it).
pub fn agent() -> &'static common::Agent {
    static AGENT: OnceLock<common::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        common::Agent::start(&["--exits", "nonzero", "--go-max-binaries", "1000000"])
    })
}

/// Held by tests that stop an agent or flood the host with binaries, so they do not overlap
/// (a stopped agent's ring buffer would fill with the flood).
pub fn alone() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `bin` with `args`; (pid, stdout, exit status).
fn run(bin: &Path, args: &[&str]) -> (u32, String, std::process::ExitStatus) {
    let child = common::spawn(
        Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    (pid, String::from_utf8_lossy(&out.stdout).into(), out.status)
}

/// Runs the Go crash program `bin` once so `a` probes it (its `nth` "probing" line for that
/// path), then makes it panic; the panic's report, checked to be that panic.
fn probed_then_panics(a: &common::Agent, bin: &Path, nth: usize) -> Value {
    assert!(
        run(bin, &["noop"]).2.success(),
        "{} does not run",
        bin.display()
    );
    let probing = format!("probing Go binary {}", bin.display());
    assert!(
        a.wait_log_count(&probing, nth, std::time::Duration::from_secs(60)),
        "{} was never probed; log:\n{}",
        bin.display(),
        a.log()
    );
    let (pid, _, _) = run(bin, &["string"]);
    let r = a.report_for(pid);
    assert_eq!(
        (r["kind"].as_str(), r["go"]["panic_value"].as_str()),
        (Some("go_panic"), Some("boom: a string")),
        "{}: {r:#}",
        bin.display()
    );
    r
}

fn frames(r: &Value) -> Vec<String> {
    r["stack"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|f| f["function"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
