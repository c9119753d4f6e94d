//! Closed pipes, through the real binary: every command whose stdout reader went away
//! (`crashwatch report | head`) stops writing without a word and exits with the status it
//! has anyway, as with its output read to the end. Needs root (CI runs as root): `check`,
//! `exec` and the agent that fills a crash history load the programs.
mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{agent_bin, state_dir, Agent, Crasher};

/// A pipe whose reader is gone before the command writes: its first write fails (EPIPE).
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// `crashwatch ARGS` with `env`, stdout to `stdout`.
fn run(args: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Output {
    Command::new(agent_bin())
        .args(args)
        .env("CRASHWATCH_CONFIG", "/dev/null")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// `args` into a closed pipe: no panic, no word about it, and the status of the same command
/// whose output was all read (into /dev/null).
fn quiet_on_a_closed_pipe(args: &[&str], env: &[(&str, &str)]) {
    let read = run(args, env, Stdio::null());
    let closed = run(args, env, closed_pipe().into());
    let err = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(
        closed.status.code(),
        read.status.code(),
        "{args:?}: the status with its output read is the status with the pipe closed: {}\n{err}",
        closed.status
    );
    for bad in [
        "panicked",
        "Broken pipe",
        "broken pipe",
        "os error 32",
        "stdout",
    ] {
        assert!(!err.contains(bad), "{args:?} said {bad:?}:\n{err}");
    }
}

#[test]
fn every_command_exits_quietly_when_its_reader_went_away() {
    let dir = state_dir("pipes");
    let d = dir.display().to_string();
    let me = agent_bin().display().to_string();
    let log = dir.join("app.log");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&log, "INFO up\npanic: boom\n\ngoroutine 1 [running]:\nmain.main()\n\t/src/main.go:5 +0x1d\nexit status 2\n").unwrap();
    let log = log.display().to_string();

    // A crash history with one crash in it.
    let a = Agent::start(&["--state-dir", &d]);
    let c = Crasher::run("null");
    let id = a.report_for(c.pid)["cluster"]["id"].to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(&["report", "--state-dir", &d, &id], &[], Stdio::piped())
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the crash never reached the history"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    for args in [
        &["--help"][..],
        &["--version"],
        &["report", "--help"],
        &["report", "--state-dir", &d],
        &["report", "--state-dir", &d, "--json"],
        &["report", "--state-dir", &d, &id],
        &["report", "--state-dir", &d, &id, "--json"],
        &["analyze", &log],
        &["analyze", "--json", &log],
        &["check"],
        &["check", "--sinks", "--listen", "off", "--state-dir", &d],
        &["symbolize", "--exe", &me, "0x1000", "0x2000"],
        &["uninstall-bpf", "--pin-dir", "/nonexistent/crashwatch-pins"],
        &["run", "--print-config"],
    ] {
        quiet_on_a_closed_pipe(args, &[]);
    }
    // exec writes GitHub annotations to stdout in a GitHub job, and --json - the crashes;
    // its status is the crash's class either way. (The command writes nothing itself: it
    // shares the closed pipe.)
    let exec = ["exec", "--json", "-", "--", "sh", "-c", "kill -SEGV $$"];
    quiet_on_a_closed_pipe(&exec, &[("GITHUB_ACTIONS", "true")]);
    let read = run(&exec, &[("GITHUB_ACTIONS", "true")], Stdio::piped());
    assert_eq!(read.status.code(), Some(112), "a signal: {read:?}");
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("::error"),
        "the annotations were written: {read:?}"
    );
    let _ = std::fs::remove_dir_all(Path::new(&d));
}
