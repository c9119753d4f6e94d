//! The outputs besides stdout, and what is masked before any of them: the file output
//! through a `kill -9` of the agent in the middle of a crash storm and a torn last line, and
//! secrets in a command line masked on stdout, in the file and in the crash history. Needs
//! root (CI runs as root).
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use common::{agent_bin, crasher_bin, state_dir, Agent, Crasher};
use serde_json::Value;

/// Every agent sees every crash on the host: one test at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every line of the file, each parsed (a line that is not a whole report fails the test).
fn lines(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {} is not a whole report ({e}): {l}", i + 1))
        })
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_file_holds_whole_reports_through_a_kill_9_and_a_torn_tail() {
    let _alone = alone();
    let dir = state_dir("file-out");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("crashes.jsonl");
    let f = file.display().to_string();
    let a = Agent::start(&["--output-file", &f]);

    // A storm of 2,000 crashes; the agent is killed with SIGKILL once a few hundred are in.
    let stop = AtomicBool::new(false);
    let crashed = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while n < 1000 && !stop.load(Ordering::Relaxed) {
                        let _ = Command::new(crasher_bin())
                            .arg("null")
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        wait_until("300 reports in the file", || {
            std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) >= 300
        });
        a.signal(libc::SIGKILL);
        a.wait_exit(Duration::from_secs(10))
            .expect("the agent died");
        // Some more crashes with nobody watching, then the rest of the storm is called off.
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<usize>()
    });
    let before = lines(&file);
    assert!(
        before.len() >= 300 && before.len() <= crashed,
        "{} lines",
        before.len()
    );
    let mut pids: Vec<u64> = before.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), before.len(), "each report once");

    // A power cut in the middle of a line: the next agent cuts it off and appends after.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(br#"{"time":"2026-12-02T13:00:00Z","pi"#)
        .unwrap();
    let b = Agent::start(&["--output-file", &f]);
    assert!(b.log().contains("cut off a torn last line"), "{}", b.log());
    let c = Crasher::run("null");
    b.report_for(c.pid);
    wait_until("the new report in the file", || {
        lines(&file).last().is_some_and(|r| r["pid"] == c.pid)
    });
    assert_eq!(lines(&file).len(), before.len() + 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secrets_are_masked_on_stdout_in_the_file_and_in_the_history() {
    let _alone = alone();
    let dir = state_dir("redact");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("crashes.jsonl");
    let (f, d) = (file.display().to_string(), dir.display().to_string());
    let a = Agent::start(&[
        "--output-file",
        &f,
        "--state-dir",
        &d,
        "--redact",
        r"card-[0-9]{4}",
    ]);
    let args = [
        "null",
        "--password",
        "hunter2",
        "db?user=app&password=s3cret",
        "Authorization: Bearer abc123",
        "paid with card-4242",
    ];
    let mut cmd = Crasher::command(args[0]);
    cmd.args(&args[1..]);
    let c = Crasher::finish(common::spawn(&mut cmd));
    let rep = a.report_for(c.pid);
    let masked = [
        "--password",
        "[REDACTED]",
        "db?user=app&password=[REDACTED]",
        "Authorization: [REDACTED]",
        "paid with [REDACTED]",
    ];
    assert_eq!(
        rep["cmdline"].as_array().unwrap()[2..],
        masked.map(Value::from),
        "{}",
        rep["cmdline"]
    );
    let secrets = ["hunter2", "s3cret", "abc123", "4242"];
    let clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} holds {s}: {text}");
        }
    };
    clean("stdout", &rep.to_string());
    wait_until("the report in the file", || {
        lines(&file).iter().any(|r| r["pid"] == c.pid)
    });
    clean("the file", &std::fs::read_to_string(&file).unwrap());
    let cluster = rep["cluster"]["id"].to_string();
    let mut history = String::new();
    wait_until("the report in the history", || {
        let out = Command::new(agent_bin())
            .args(["report", "--state-dir", &d, &cluster, "--json"])
            .output()
            .unwrap();
        history = String::from_utf8_lossy(&out.stdout).into_owned();
        history.contains(&format!("\"pid\": {}", c.pid))
    });
    clean("the crash history", &history);
    assert!(history.contains("password=[REDACTED]"), "{history}");
    let _ = std::fs::remove_dir_all(&dir);
}
