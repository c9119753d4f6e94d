//! Closed pipes, through the real binary: every command whose stdout reader went away
//! (`crashwatch report | head`) stops writing without a word and exits with the status it
//! has anyway, as with its output read to the end; the agent whose stderr is closed
//! (`crashwatch run 2>&1 | head -1`) runs on, its log lines counted as not written. Needs
//! root (CI runs as root): `check`, `exec` and the agents load the programs.
mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{agent_bin, http_get, state_dir, Agent, Crasher};

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

/// A port free now on 127.0.0.1 (the agent's log, where it says its address, is not read).
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Waits until the agent at `addr` answers /readyz 200, or fails saying how it ended.
fn wait_ready(agent: &mut std::process::Child, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = agent.try_wait().unwrap() {
            panic!("the agent ended before it was ready: {st}");
        }
        if http_get(addr, "/readyz").is_some_and(|(h, _)| h.contains(" 200 ")) {
            return;
        }
        assert!(Instant::now() < deadline, "the agent never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `crashwatch run` with `args`, stderr a pipe whose reader is gone, stdout `stdout`.
fn agent_without_stderr(args: &[&str], stdout: Stdio) -> (std::process::Child, String) {
    let addr = free_port();
    let child = Command::new(agent_bin())
        .args(["run", "--no-pin", "--output", "json", "--listen", &addr])
        .args(args)
        .env("CRASHWATCH_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    (child, addr)
}

fn wait_exit(agent: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = agent.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_runs_on_when_its_stderr_is_closed() {
    use std::io::{BufRead, BufReader};
    let dir = state_dir("pipes-stderr");
    let d = dir.display().to_string();
    let (mut agent, addr) = agent_without_stderr(&["--state-dir", &d], Stdio::piped());
    let out = BufReader::new(agent.stdout.take().unwrap());
    let (tx, reports) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    wait_ready(&mut agent, &addr);
    // Its log lines went nowhere, and it keeps count; its reports still go to stdout.
    let unwritten = || {
        let (_, body) = http_get(&addr, "/metrics").expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("crashwatch_log_lines_unwritten_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no log line count: {body}"))
    };
    assert!(unwritten() >= 1.0, "the ready line at least");
    let c = Crasher::run("null");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = reports
            .recv_timeout(left)
            .expect("the crash was reported on stdout");
        if r["pid"] == c.pid {
            break;
        }
    }
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut agent, Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{st}");

    // `crashwatch run 2>&1 | head -1`: stdout and stderr both closed. The first report finds
    // stdout closed and the agent stops, as it does when stdout alone is closed.
    let (mut agent, addr) = agent_without_stderr(&["--state-dir", &d], closed_pipe().into());
    wait_ready(&mut agent, &addr);
    Crasher::run("null");
    let st = wait_exit(&mut agent, Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{st}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A command refused before any log exists (a setting that sends reports nowhere, a file that
/// cannot be read) says so on stderr; with stderr closed the message is lost, and the status
/// is still the one that says why (2), never a panic's 101.
#[test]
fn a_refusal_with_stderr_closed_keeps_its_status() {
    for args in [
        &["run", "--output", "none", "--no-store"][..],
        &["report", "--state-dir", "/nonexistent/crashwatch-state"][..],
    ] {
        let with = Command::new(agent_bin())
            .args(args)
            .env("CRASHWATCH_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let closed = Command::new(agent_bin())
            .args(args)
            .env("CRASHWATCH_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(closed_pipe())
            .status()
            .unwrap();
        assert_eq!(closed.code(), with.code(), "{args:?}");
        assert_ne!(closed.code(), Some(101), "{args:?}");
    }
}
