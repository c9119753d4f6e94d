//! The agent run as an unprivileged user with only capabilities (issue 8, defect 6): with the
//! documented set, a Go panic in another user's process is reported; with less, the agent
//! says at start what is off and why, and `check` names the real cause.
use std::{path::Path, process::Command};

use crate::{
    common::{
        agent_bin,
        gobuild::{self, Flavour},
        Agent, Setup,
    },
    corpus, probed_then_panics,
};

/// `setpriv` as nobody with exactly `caps` (ambient, so they survive the exec).
fn as_nobody_with(caps: &[&str]) -> Vec<String> {
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = list.join(",");
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={list}"),
        &format!("--ambient-caps={list}"),
        // A credential change clears the parent-death signal the harness set: without it, a
        // failed test left its agent running for good.
        "--pdeathsig=TERM",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const DOCUMENTED: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];

#[test]
fn the_documented_capabilities_report_go_panics_of_other_users() {
    let a = Agent::start_with(
        &[],
        Setup {
            wrap: as_nobody_with(&DOCUMENTED),
            ..Setup::default()
        },
    );
    assert!(
        !a.log().contains("running with less"),
        "warned with every capability: {}",
        a.log()
    );
    // A binary only root may read, in a directory only root may enter, run by root.
    let d = corpus::dir("caps");
    let bin = d.join("private/gocrash");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(gobuild::build("1.27", Flavour::Static), &bin).unwrap();
    chmod(&bin, 0o700);
    chmod(bin.parent().unwrap(), 0o700);
    let r = probed_then_panics(&a, &bin, 1);
    assert_eq!(r["stack"][0]["function"], "runtime.fatalpanic", "{r:#}");
}

#[test]
fn fewer_capabilities_are_named_at_start_and_by_check() {
    let a = Agent::start_with(
        &[],
        Setup {
            wrap: as_nobody_with(&["bpf", "perfmon"]),
            ..Setup::default()
        },
    );
    assert!(
        a.log().contains("running with less: no CAP_SYS_PTRACE"),
        "log:\n{}",
        a.log()
    );
    assert!(
        a.log().contains("no CAP_DAC_READ_SEARCH"),
        "log:\n{}",
        a.log()
    );
    let mut check = Command::new("setpriv");
    check
        .args(&as_nobody_with(&["bpf", "perfmon"])[1..])
        .arg(agent_bin())
        .arg("check");
    let out = check.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check fails with enough to run:\n{text}"
    );
    assert!(text.contains("warn CAP_SYS_PTRACE"), "{text}");
    // tracefs is not needed, except by the syscall tracepoints last words fall back to
    // where the kernel refuses fentry (without it: no last words, a warning).
    assert!(
        !text
            .lines()
            .any(|l| l.contains("tracefs") && !l.contains("last words")),
        "tracefs is not needed:\n{text}"
    );
    assert!(text.contains("ok   uprobes"), "{text}");
    let mut none = Command::new("setpriv");
    none.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(agent_bin())
    .arg("check");
    let out = none.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("FAIL CAP_BPF"), "{text}");
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}
