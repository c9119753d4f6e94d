//! `crashwatch exec` around real commands: a clean one, `go test` of a package whose test
//! panics in a goroutine, a script that swallows its child's segfault, a daemon that
//! double-forks and crashes later, a crash elsewhere on the host (not reported), signals
//! passed on, the command run as sudo's user, and `--restart on-crash` reviving a command
//! and giving up on one that always crashes.
mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use serde_json::Value;

/// One exec at a time: each loads its own programs, and the machine has two cores.
static ONE: Mutex<()> = Mutex::new(());

fn tmp(tag: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("exec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn exec(args: &[&str], cmd: &[&str], env: &[(&str, &str)]) -> Output {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(common::agent_bin())
        .arg("exec")
        .args(args)
        .arg("--")
        .args(cmd)
        .envs(env.iter().copied())
        .env_remove("GITHUB_ACTIONS")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `crashwatch exec ARGS` started, once the command printed `line` on stdout.
fn started(
    args: &[&str],
    line: &str,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(common::agent_bin())
        .arg("exec")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert_eq!(l.trim_end(), line);
    (child, out)
}

fn crasher() -> String {
    common::crasher_bin().display().to_string()
}

fn json_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_clean_command_exits_zero_and_says_nothing() {
    let out = exec(&[], &["sh", "-c", "echo hello"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    assert_eq!(text(&out.stderr), "");
    // The command's own failure is its status.
    let out = exec(&[], &["sh", "-c", "exit 3"], &[]);
    assert_eq!(out.status.code(), Some(3));
    let out = exec(&[], &["/nonexistent/cmd"], &[]);
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn a_swallowed_segfault_fails_the_gate_with_the_signal_code() {
    let d = tmp("segv");
    let json = d.join("crashes.json");
    let script = format!("{} null; echo \"child died: $?\"; exit 0", crasher());
    let out = exec(
        &[
            "--json",
            json.to_str().unwrap(),
            "--junit",
            d.join("junit.xml").to_str().unwrap(),
            "--report",
            d.join("report.json").to_str().unwrap(),
        ],
        &["sh", "-c", &script],
        &[],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(112), "{err}");
    assert!(text(&out.stdout).contains("child died: 139"));
    assert!(
        err.contains("SIGSEGV") && err.contains("1 crash in the command's tree"),
        "{err}"
    );
    let lines = json_lines(&json);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["signal"]["name"], "SIGSEGV");
    assert_eq!(lines[0]["restart"], 0);
    let junit = std::fs::read_to_string(d.join("junit.xml")).unwrap();
    assert!(
        junit.contains("failures=\"1\"") && junit.contains("<failure type=\"signal\""),
        "{junit}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        (
            report["exit_code"].as_u64(),
            report["command_status"].as_u64()
        ),
        (Some(112), Some(0))
    );
    assert_eq!(report["clusters"][0]["count"], 1);
    // Passthrough keeps the command's status and still reports.
    let out = exec(&["--exit-code", "passthrough"], &["sh", "-c", &script], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("SIGSEGV"));
}

#[test]
fn a_daemon_that_double_forks_is_still_watched_and_the_host_is_not() {
    // The daemon leaves the tree (setsid, its parent gone) and crashes a second later while
    // the command still runs.
    let daemon = format!(
        "( setsid sh -c 'sleep 1; exec {} abort' & ); echo started; sleep 3",
        crasher()
    );
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let (mut child, mut out) = started(&["--json", "-", "--", "sh", "-c", &daemon], "started");
    // A crash elsewhere on the host while the command runs: not the command's.
    let elsewhere = Command::new(crasher()).arg("null").output().unwrap();
    assert_eq!(elsewhere.status.signal(), Some(libc::SIGSEGV));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let st = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    // The crasher's own facts (`pid=…`) share stdout with the JSON lines here.
    let reports: Vec<Value> = rest
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 1, "{err}");
    assert_eq!(reports[0]["signal"]["name"], "SIGABRT", "{err}");
    assert_eq!(st.code(), Some(112), "{err}");
    assert!(
        !err.contains("SIGSEGV"),
        "a crash outside the tree was reported: {err}"
    );
}

#[test]
fn signals_sent_to_exec_reach_the_command() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let (mut child, mut out) = started(
        &[
            "--",
            "sh",
            "-c",
            "trap 'echo got INT; exit 42' INT; echo ready; while :; do sleep 0.1; done",
        ],
        "ready",
    );
    let mut l = String::new();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    out.read_line(&mut l).unwrap();
    assert_eq!(l, "got INT\n");
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

#[test]
fn through_sudo_the_command_runs_as_the_invoking_user() {
    let out = exec(
        &[],
        &["id", "-u"],
        &[("SUDO_UID", "65534"), ("SUDO_GID", "65534")],
    );
    assert_eq!(text(&out.stdout), "65534\n", "{}", text(&out.stderr));
    let out = exec(
        &["--as-root"],
        &["id", "-u"],
        &[("SUDO_UID", "65534"), ("SUDO_GID", "65534")],
    );
    assert_eq!(text(&out.stdout), "0\n");
}

#[test]
fn restart_on_crash_revives_then_gives_up_on_a_loop() {
    let d = tmp("restart");
    let count = d.join("runs");
    // Crashes in its first two runs, then runs clean.
    let flaky = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -ge 2 ] || exec {} null; echo clean run",
        crasher(),
        c = count.display()
    );
    let report = d.join("report.json");
    let out = exec(
        &[
            "--restart",
            "on-crash",
            "--restart-delay-ms",
            "50",
            "--report",
            report.to_str().unwrap(),
        ],
        &["sh", "-c", &flaky],
        &[],
    );
    let err = text(&out.stderr);
    assert!(text(&out.stdout).contains("clean run"), "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        (r["runs"].as_u64(), r["gave_up"].as_bool()),
        (Some(3), Some(false)),
        "{err}"
    );
    let restarts: Vec<u64> = r["crashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["restart"].as_u64().unwrap())
        .collect();
    assert_eq!(restarts, [0, 1]);
    assert!(
        err.contains("restart 1 of 5") && err.contains("restart 2 of 5"),
        "{err}"
    );
    assert_eq!(
        out.status.code(),
        Some(112),
        "crashes happened: the gate fails"
    );
    // Always crashing: the budget is spent, exec gives up.
    let out = exec(
        &[
            "--restart",
            "on-crash",
            "--max-restarts",
            "2",
            "--restart-delay-ms",
            "20",
            "--report",
            report.to_str().unwrap(),
        ],
        &[&crasher(), "null"],
        &[],
    );
    let err = text(&out.stderr);
    assert!(err.contains("crash loop"), "{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        (r["runs"].as_u64(), r["gave_up"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(r["clusters"][0]["count"], 3);
    assert_eq!(out.status.code(), Some(112));
}

#[test]
fn go_test_panicking_in_a_goroutine_is_annotated_at_the_test_line() {
    let d = tmp("gotest");
    std::fs::write(d.join("go.mod"), "module example.com/gt\n\ngo 1.21\n").unwrap();
    let src = "package gt\n\nimport (\n\t\"testing\"\n\t\"time\"\n)\n\nfunc TestBoom(t *testing.T) {\n\tgo func() {\n\t\tpanic(\"boom: in a test goroutine\")\n\t}()\n\ttime.Sleep(2 * time.Second)\n}\n";
    std::fs::write(d.join("gt_test.go"), src).unwrap();
    let go = common::gobuild::go_tool("1.26");
    let cache = d.join("cache");
    let out = exec(
        &[],
        &[
            "sh",
            "-c",
            &format!("cd {} && {} test ./...", d.display(), go.display()),
        ],
        &[
            ("GOTOOLCHAIN", "local"),
            ("GOFLAGS", "-mod=mod"),
            ("GOCACHE", cache.to_str().unwrap()),
            ("HOME", d.to_str().unwrap()),
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(111), "{err}");
    assert!(err.contains("panic: boom: in a test goroutine"), "{err}");
    assert!(err.contains("gt.test"), "the test binary is named: {err}");
    // As GitHub Actions sees it.
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(common::agent_bin())
        .args(["exec", "--"])
        .args([
            "sh",
            "-c",
            &format!("cd {} && {} test ./...", d.display(), go.display()),
        ])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_WORKSPACE", &d)
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", &cache)
        .env("HOME", &d)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("::error "))
        .unwrap_or_else(|| panic!("no annotation: {stdout}\n{}", text(&out.stderr)));
    assert!(
        line.starts_with("::error file=gt_test.go,line=10,title=crashwatch%3A go_panic"),
        "{line}"
    );
    assert!(line.contains("boom: in a test goroutine"), "{line}");
}

#[test]
fn beside_a_pinned_agent_both_report_and_json_goes_to_a_descriptor() {
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/crashwatch-test-exec-{}",
        std::process::id()
    ));
    let uninstall = || {
        let out = Command::new(common::agent_bin())
            .args(["uninstall-bpf", "--pin-dir"])
            .arg(&pins)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    uninstall();
    let agent = common::Agent::start(&["--pin-dir", pins.to_str().unwrap()]);
    let d = tmp("beside");
    let json = d.join("fd3.json");
    // `--json fd:3`, the descriptor opened by the shell that starts exec.
    let line = format!(
        "exec {} exec --json fd:3 -- {} null 3>{}",
        common::agent_bin().display(),
        crasher(),
        json.display()
    );
    let out = {
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        Command::new("sh")
            .args(["-c", &line])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(112), "{}", text(&out.stderr));
    let lines = json_lines(&json);
    assert_eq!(lines.len(), 1, "{}", text(&out.stderr));
    let pid = lines[0]["pid"].as_u64().unwrap() as u32;
    // The host's agent saw the same crash.
    assert_eq!(agent.report_for(pid)["signal"]["name"], "SIGSEGV");
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).is_some());
    uninstall();
}
