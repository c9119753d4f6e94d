//! What reports say: no borrowed frames, escaped text, senders, long command lines, no
//! blame for a runtime's routine faults, and a report sent even when building it fails.
use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    agent, alone,
    common::{
        crasher_bin,
        gobuild::{self, Flavour},
        spawn, Agent, Crasher, Setup,
    },
    corpus, frames, run,
};

/// 4. A crash run as `./bin/crash` from another directory: the agent, whose own working
///    directory has a different `bin/crash`, must never name frames from that file.
#[test]
fn a_relative_exec_path_never_names_the_agents_own_files() {
    let _alone = alone();
    let (here, there) = (corpus::dir("rel-proc"), corpus::dir("rel-agent"));
    fs::create_dir_all(here.join("bin")).unwrap();
    fs::create_dir_all(there.join("bin")).unwrap();
    fs::copy(crasher_bin(), here.join("bin/crash")).unwrap();
    corpus::imposter(
        crasher_bin(),
        &there.join("bin/crash"),
        &["null_write", "main"],
    );
    let cwd = there.clone();
    let a = Agent::start_with(
        &[],
        Setup {
            command: Some(Box::new(move |cmd| {
                cmd.current_dir(&cwd);
            })),
            ..Setup::default()
        },
    );
    // The agent reads the records only after every process is gone and reaped: nothing of
    // them is left to resolve in /proc.
    a.signal(libc::SIGSTOP);
    let pids: Vec<u32> = (0..40)
        .map(|_| {
            let mut cmd = Command::new("./bin/crash");
            cmd.arg("null").current_dir(&here);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let mut child = spawn(&mut cmd);
            let pid = child.id();
            child.wait().unwrap();
            pid
        })
        .collect();
    a.signal(libc::SIGCONT);
    let mut named = 0;
    for pid in pids {
        let r = a.report_for(pid);
        if let Some(exe) = r["exe"].as_str() {
            assert!(exe.starts_with('/'), "exe {exe:?} is not absolute");
            assert!(!exe.starts_with(there.to_str().unwrap()), "exe {exe}");
        }
        let f = frames(&r);
        assert!(
            f.iter().all(|n| !n.starts_with("imposter_")),
            "pid {pid}: frames named from the agent's own ./bin/crash: {f:?}"
        );
        named += f.len();
    }
    println!("{named} frames named across 40 reports of processes gone before the agent looked");

    // Run by a shell from that directory: the relative path is the shell's, and the very file
    // the kernel ran is found there, so the crash gets its exe and its names.
    // The shell outlives the crash, as an interactive one does.
    a.signal(libc::SIGSTOP);
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!(
            "cd '{}' && ./bin/crash null; echo crashed; sleep 30",
            here.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sh = sh.spawn().unwrap();
    let mut pid = 0;
    for line in std::io::BufRead::lines(std::io::BufReader::new(sh.stdout.take().unwrap())) {
        let line = line.unwrap();
        if let Some(p) = line.strip_prefix("pid=") {
            pid = p.parse().unwrap();
        }
        if line == "crashed" {
            break;
        }
    }
    a.signal(libc::SIGCONT);
    let r = a.report_for(pid);
    let _ = sh.kill();
    let _ = sh.wait();
    let want = here.join("bin/crash");
    assert_eq!(r["exe"].as_str(), want.to_str(), "{r:#}");
    assert_eq!(frames(&r).first().map(String::as_str), Some("null_write"));
}

/// 8. A process named with escape sequences and a newline, with escapes in its arguments:
///    the readable output and the agent's log show them, escaped, and forge nothing.
#[test]
fn escape_sequences_in_names_and_paths_reach_no_terminal() {
    let a = Agent::start_with(
        &["--output", "pretty"],
        Setup {
            text: true,
            ..Setup::default()
        },
    );
    let d = corpus::dir("escape");
    let evil = d.join("\x1b]0;owned\x07\nFAKE report line");
    fs::copy(crasher_bin(), &evil).unwrap();
    let mut cmd = Crasher::command_of(&evil, "null");
    cmd.arg("\x1b[2J\u{9b}31m\u{202e}");
    let c = Crasher::finish(spawn(&mut cmd));
    // A Go binary with the same kind of name gets logged when probed.
    let go_evil = d.join("go\x1b[31m\nFAKE log line");
    fs::copy(gobuild::build("1.27", Flavour::Static), &go_evil).unwrap();
    assert!(run(&go_evil, &["noop"]).2.success());
    let header = format!("pid {} tid", c.pid);
    let printed = a.wait_for(|| {
        let text = a.text.lock().unwrap();
        text.iter()
            .any(|l| l.contains(&header))
            .then(|| text.join("\n"))
    });
    let out = printed.expect("no readable report");
    assert!(
        a.wait_log_count("FAKE log line", 1, Duration::from_secs(60)),
        "the Go binary was never logged: {}",
        a.log()
    );
    let log = a.log();
    for (what, text) in [("report", &out), ("log", &log)] {
        for bad in ['\x1b', '\x07', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(bad), "{what} holds a raw {bad:?}:\n{text}");
        }
        assert!(
            !text.lines().any(|l| l.starts_with("FAKE")),
            "{what} has a forged line:\n{text}"
        );
    }
    assert!(
        out.contains("\\x1b]0;owned\\x07\\nFAKE"),
        "escaped, visible: {out}"
    );
}

/// 9a. A fault-class signal sent by another process carries its sender, not an address.
#[test]
fn a_signal_sent_by_another_process_names_the_sender() {
    let a = agent();
    for (how, code) in [("kill", "SI_USER"), ("tgkill", "SI_TKILL")] {
        let child = Crasher::spawn_started(Crasher::command("sleep"));
        let pid = child.id() as i32;
        unsafe {
            if how == "kill" {
                libc::kill(pid, libc::SIGSEGV);
            } else {
                libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGSEGV);
            }
        }
        let c = Crasher::finish(child);
        assert_eq!(c.signal, Some(11));
        let s = a.report_for(c.pid)["signal"].clone();
        assert_eq!(s["code_name"], code, "{how}: {s:#}");
        assert!(
            s["addr"].is_null(),
            "{how}: a sender's pid is no address: {s:#}"
        );
        assert_eq!(s["sender"]["pid"], std::process::id(), "{how}: {s:#}");
        assert_eq!(s["sender"]["uid"], 0, "{how}");
    }
    // A real fault keeps its address and has no sender.
    let c = Crasher::run("null");
    let s = a.report_for(c.pid)["signal"].clone();
    assert_eq!(
        (s["addr"].as_str(), s["sender"].is_null()),
        (Some("0x10"), true)
    );
}

/// 9b. A long command line is kept up to the cap and said to be cut.
#[test]
fn a_long_command_line_is_marked_truncated() {
    let a = agent();
    let mut cmd = Crasher::command("null");
    cmd.arg("x".repeat(10_000));
    let c = Crasher::finish(spawn(&mut cmd));
    let r = a.report_for(c.pid);
    assert_eq!(r["cmdline_truncated"], true);
    assert_eq!(r["cmdline"][1], "null");
    let kept: usize = r["cmdline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().len() + 1)
        .sum();
    assert!(kept > 3000, "kept {kept} bytes of the command line");
    let c = Crasher::run("null");
    assert_eq!(a.report_for(c.pid)["cmdline_truncated"], false);
}

/// 10. A JVM takes SIGSEGV on purpose (its CPU-feature probe); an uncaught exception then
///     ends it with exit 1. That is the exception (its last words say so), not a segfault.
#[test]
fn a_jvm_exiting_after_an_uncaught_exception_is_not_a_segfault() {
    let a = agent(); // --exits nonzero: the exit itself is reported
    let d = corpus::dir("jvm");
    fs::write(
        d.join("Crash.java"),
        "public class Crash { public static void main(String[] a) { throw new IllegalStateException(\"boom\"); } }\n",
    )
    .unwrap();
    let child = Command::new("java")
        .arg("Crash.java")
        .current_dir(&d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("java (scripts/setup.sh installs openjdk-17-jdk-headless)");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = a.report_for(pid);
    assert_eq!(r["kind"], "runtime_error", "{r:#}");
    assert_eq!(
        r["error"]["type"], "java.lang.IllegalStateException",
        "{r:#}"
    );
    assert!(
        r.get("signal").is_none(),
        "blamed on a routine fault: {r:#}"
    );
}

/// A report whose building panics (here by the agent's fault-injection point; in the wild, a
/// parser meeting a binary it did not expect) is still sent, without its stack and saying
/// why, and the next crash gets its full report: the report thread lives on.
#[test]
fn a_report_that_cannot_be_built_is_sent_degraded_and_the_agent_goes_on() {
    let doomed = "cw-doomed";
    let a = Agent::start_with(
        &[],
        Setup {
            wrap: vec![
                "env".into(),
                format!("CRASHWATCH_FAILPOINT_REPORT_PANIC={doomed}"),
            ],
            ..Setup::default()
        },
    );
    let dir = std::env::temp_dir().join(format!("cw-doomed-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let bin = dir.join(doomed);
    fs::copy(crasher_bin(), &bin).unwrap();
    let c = Crasher::finish(spawn(&mut Crasher::command_of(&bin, "null")));
    let r = a.report_for(c.pid);
    assert_eq!(r["signal"]["name"], "SIGSEGV", "what was known: {r}");
    assert_eq!(r["stack"].as_array().map(Vec::len), Some(0));
    assert!(
        r["report_error"]
            .as_str()
            .is_some_and(|e| e.contains("failpoint")),
        "{r}"
    );
    assert!(a.log().contains("panicked"), "{}", a.log());
    let next = Crasher::run("null");
    let full = a.report_for(next.pid);
    assert!(full.get("report_error").is_none(), "{full}");
    assert!(
        full["stack"][0]["function"]
            .as_str()
            .is_some_and(|f| f.starts_with("null_write")),
        "{full}"
    );
    let _ = fs::remove_dir_all(&dir);
}
