//! `crashwatch analyze` on logs made from real runs: Go panics (nested too), fatal errors,
//! GOTRACEBACK=all dumps, a SIGQUIT dump, gctrace lines and a Python traceback, between a
//! program's ordinary lines, written as plain text, CRI, docker json-file and journal JSON,
//! each also gzip-compressed. Checks what is found, its line range, message and cluster, and
//! that a crash's fingerprint is the one the agent gave the same crash.
mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use common::gobuild::{self, Flavour};
use serde_json::{json, Value};

const GO: &str = "1.26";
const PROGRAM: &str = "example.com/gocrash";

struct Expect {
    first: u64,
    last: u64,
    kind: &'static str,
    headline: &'static str,
}

struct Log {
    /// Each run's stderr lines with the run's pid, and ordinary lines between.
    lines: Vec<(u32, String)>,
    expect: Vec<Expect>,
    gc_lines: usize,
}

fn go(mode: &str, env: &[(&str, &str)]) -> (u32, String) {
    let mut cmd = Command::new(gobuild::build(GO, Flavour::Static));
    cmd.arg(mode).envs(env.iter().copied());
    finish(cmd, mode == "sleep")
}

/// Runs `cmd`; `quit`: it waits, and is sent SIGQUIT once it has printed its pid.
fn finish(mut cmd: Command, quit: bool) -> (u32, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    if quit {
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut l = String::new();
        std::io::BufRead::read_line(&mut out, &mut l).unwrap();
        assert!(l.starts_with("pid="), "{l}");
        unsafe { libc::kill(pid as i32, libc::SIGQUIT) };
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    (pid, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn python(dir: &Path) -> (u32, String) {
    let py = dir.join("job.py");
    std::fs::write(
        &py,
        "def load(row):\n    return {'id': 1}[row]\n\ndef main():\n    try:\n        load('id-17')\n    except KeyError as e:\n        raise ValueError('bad row 17') from e\n\nmain()\n",
    )
    .unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(&py);
    finish(cmd, false)
}

fn tmp() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("analyze-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The runs, once per test binary.
fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let all = [("GOTRACEBACK", "all")];
        let runs: Vec<((u32, String), &'static str, &'static str)> = vec![
            (go("string", &[]), "go_panic", "panic: boom: a string"),
            (go("string", &[]), "go_panic", "panic: boom: a string"),
            (
                go("nested", &[]),
                "go_panic",
                "panic: boom: connection reset",
            ),
            (
                go("mapwrite", &[]),
                "go_fatal",
                "fatal error: concurrent map writes",
            ),
            (
                go("deadlock", &all),
                "go_fatal",
                "fatal error: all goroutines are asleep - deadlock!",
            ),
            (
                go("goroutine", &all),
                "go_panic",
                "panic: boom: in a goroutine",
            ),
            (
                go("churn", &[("GODEBUG", "gctrace=1")]),
                "go_panic",
                "panic: boom: after churn",
            ),
            (go("sleep", &[]), "go_fatal", "SIGQUIT: quit"),
            (python(&tmp()), "runtime_error", "ValueError: bad row 17"),
        ];
        let mut log = Log {
            lines: Vec::new(),
            expect: Vec::new(),
            gc_lines: 0,
        };
        for (i, ((pid, err), kind, headline)) in runs.into_iter().enumerate() {
            log.lines
                .push((1, format!("INFO request {i} served in 3ms")));
            let base = log.lines.len() as u64;
            let mut first = None;
            let mut last = 0;
            for (k, l) in err.lines().enumerate() {
                let n = base + k as u64 + 1;
                if l.starts_with("gc ") {
                    log.gc_lines += 1;
                } else if first.is_none() {
                    first = Some(n);
                }
                if !l.is_empty() {
                    last = n;
                }
                log.lines.push((pid, l.to_string()));
            }
            log.expect.push(Expect {
                first: first.unwrap(),
                last,
                kind,
                headline,
            });
        }
        log.lines.push((1, "INFO shutting down".into()));
        log
    })
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Plain,
    Cri,
    Docker,
    Journal,
}

/// The log written as `format`: the program's ordinary lines on stdout, the runs' on
/// stderr, long lines split the way the kubelet and docker split them.
fn write(format: Format, lines: &[(u32, String)]) -> Vec<u8> {
    let mut out = String::new();
    for (i, (pid, l)) in lines.iter().enumerate() {
        let time = format!("2026-12-03T07:{:02}:{:02}.123456789Z", i / 60 % 60, i % 60);
        let stream = if *pid == 1 { "stdout" } else { "stderr" };
        let cut = l.len().min(12);
        let cut = (0..=cut).rev().find(|&c| l.is_char_boundary(c)).unwrap();
        let (a, b) = l.split_at(cut);
        match format {
            Format::Plain => out.push_str(&format!("{l}\n")),
            Format::Cri if b.is_empty() => out.push_str(&format!("{time} {stream} F {l}\n")),
            Format::Cri => {
                out.push_str(&format!("{time} {stream} P {a}\n{time} {stream} F {b}\n"));
            }
            Format::Docker => {
                for (piece, end) in [(a, ""), (b, "\n")] {
                    if piece.is_empty() && end.is_empty() {
                        continue;
                    }
                    let j = json!({"log": format!("{piece}{end}"), "stream": stream, "time": time});
                    out.push_str(&format!("{j}\n"));
                }
            }
            Format::Journal => {
                let j = json!({"__CURSOR": format!("s=1;i={i}"), "MESSAGE": l,
                    "_PID": pid.to_string(), "__REALTIME_TIMESTAMP": "1764745200000000"});
                out.push_str(&format!("{j}\n"));
            }
        }
    }
    out.into_bytes()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(b).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// `crashwatch analyze --json` on files: the document and the exit code.
fn analyze(args: &[&str], files: &[&Path]) -> (Value, i32) {
    let out = Command::new(common::agent_bin())
        .arg("analyze")
        .arg("--json")
        .args(args)
        .args(files)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (doc, out.status.code().unwrap())
}

fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tmp().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn plain_text_crashes_ranges_messages_clusters_and_gc() {
    let log = log();
    let p = file("plain.log", &write(Format::Plain, &log.lines));
    let (a, code) = analyze(&["--program", PROGRAM], &[&p]);
    assert_eq!(code, 1, "crashes found");
    let crashes = a["crashes"].as_array().unwrap();
    let got: Vec<(u64, u64, &str, &str)> = crashes
        .iter()
        .map(|c| {
            (
                c["first_line"].as_u64().unwrap(),
                c["last_line"].as_u64().unwrap(),
                c["kind"].as_str().unwrap(),
                c["headline"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, &str, &str)> = log
        .expect
        .iter()
        .map(|e| (e.first, e.last, e.kind, e.headline))
        .collect();
    assert_eq!(got, want);
    // The two runs of one panic are one cluster; the rest one each.
    assert_eq!(a["clusters"].as_array().unwrap().len(), 8);
    assert_eq!(a["clusters"][0]["count"], 2);
    assert_eq!(crashes[0]["fingerprint"], crashes[1]["fingerprint"]);
    assert_eq!(a["clusters"][0]["fingerprint"], crashes[0]["fingerprint"]);
    assert!(
        crashes[0]["top_frame"]
            .as_str()
            .unwrap()
            .starts_with("main.main (/"),
        "{}",
        crashes[0]["top_frame"]
    );
    // The nested panic's chain: the first value, then the one raised while it unwound.
    let chain: Vec<&str> = crashes[2]["error"]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["boom: connection reset", "boom: cleanup failed"]);
    // GOTRACEBACK=all: the deadlocked program's goroutines, its main the culprit.
    let g = &crashes[4]["goroutines"];
    assert_eq!(g["deadlock"], true, "{g}");
    assert_eq!(
        g["likely_culprits"][0]["top"]["function"], "main.main",
        "{g}"
    );
    let g = &crashes[5]["goroutines"];
    assert!(g["goroutines"].as_u64().unwrap() >= 2, "{g}");
    assert_eq!(g["by_wait_reason"]["chan receive"], 1, "{g}");
    assert!(crashes[7]["goroutines"]["goroutines"].as_u64().unwrap() >= 1);
    assert_eq!(crashes[8]["error"]["type"], "ValueError");
    assert_eq!(crashes[8]["error"]["chain"].as_array().unwrap().len(), 2);
    // The churning run's collections, one run of them.
    assert!(
        log.gc_lines >= 3,
        "the churn made only {} GCs",
        log.gc_lines
    );
    let gc = a["gc"].as_array().unwrap();
    assert_eq!(gc.len(), 1);
    assert_eq!(gc[0]["collections"], log.gc_lines as u64);
    assert!(
        gc[0]["heap_live_max_mb"].as_f64().unwrap() >= 10.0,
        "{}",
        gc[0]
    );
    assert!(gc[0]["pause_max_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn every_format_and_gzip_give_what_plain_text_gives() {
    let log = log();
    let (plain, _) = analyze(
        &["--program", PROGRAM],
        &[&file("same.log", &write(Format::Plain, &log.lines))],
    );
    let summary = |a: &Value| -> Vec<(String, String, String)> {
        a["crashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["fingerprint"].as_str().unwrap().to_string(),
                    c["headline"].as_str().unwrap().to_string(),
                    c["error"]["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for (format, name) in [
        (Format::Cri, "cri"),
        (Format::Docker, "docker"),
        (Format::Journal, "journal"),
    ] {
        let bytes = write(format, &log.lines);
        for (path, gz) in [
            (file(&format!("{name}.log"), &bytes), false),
            (file(&format!("{name}.log.gz"), &gzip(&bytes)), true),
        ] {
            let (a, code) = analyze(&["--program", PROGRAM], &[&path]);
            assert_eq!(code, 1, "{format:?}");
            assert_eq!(a["inputs"][0]["format"], name, "{format:?}");
            assert_eq!(a["inputs"][0]["gzip"], gz);
            assert_eq!(a["inputs"][0]["foreign_records"], 0);
            assert_eq!(summary(&a), summary(&plain), "{format:?} gzip={gz}");
            assert_eq!(a["gc"][0]["collections"], log.gc_lines as u64);
            // Ranges are the format's own lines, in order, within the file.
            let mut at = 0;
            for c in a["crashes"].as_array().unwrap() {
                let (f, l) = (
                    c["first_line"].as_u64().unwrap(),
                    c["last_line"].as_u64().unwrap(),
                );
                assert!(at < f && f < l, "{format:?}: {c}");
                at = l;
            }
        }
    }
    // Forcing a format that is not the file's reads it as text and says so.
    let (a, _) = analyze(
        &["--format", "cri"],
        &[&file("forced.log", &write(Format::Plain, &log.lines))],
    );
    assert!(a["inputs"][0]["foreign_records"].as_u64().unwrap() > 0);
    assert_eq!(a["crashes_found"], 9);
}

#[test]
fn a_clean_log_exits_zero_and_a_missing_file_two() {
    let p = file(
        "clean.log",
        b"INFO up\nINFO a panic: word in a sentence\nINFO down\n",
    );
    let (a, code) = analyze(&[], &[&p]);
    assert_eq!((code, a["crashes_found"].as_u64()), (0, Some(0)));
    let (a, code) = analyze(&[], &[&p, Path::new("/nonexistent/x.log")]);
    assert_eq!(code, 2);
    assert!(a["inputs"][1]["error"]
        .as_str()
        .unwrap()
        .contains("No such file"));
    // stdin, as `kubectl logs --previous POD | crashwatch analyze -`.
    let mut child = Command::new(common::agent_bin())
        .args(["analyze", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The two runs of one panic, up to the third run's first line.
    let lines = &log().lines;
    let end = lines
        .iter()
        .position(|l| l.1.starts_with("INFO request 2 "))
        .unwrap();
    let text = write(Format::Plain, &lines[..end]);
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("panic: boom: a string"), "{text}");
    assert!(text.contains("Clusters (1):"), "{text}");
}

/// An input that cannot be read is said once, on stderr; the text names it as not read.
#[test]
fn a_missing_file_is_said_once() {
    let p = file("present.log", b"INFO up\n");
    let out = Command::new(common::agent_bin())
        .args(["analyze", "/nonexistent/missing.log"])
        .arg(&p)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let said = format!("{stdout}{stderr}").matches("No such file").count();
    assert_eq!(said, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("/nonexistent/missing.log: No such file"),
        "{stderr}"
    );
    assert!(
        stdout.contains("/nonexistent/missing.log: not read"),
        "{stdout}"
    );
}

#[test]
fn a_crash_in_a_log_has_the_fingerprint_the_agent_gave_it() {
    let agent = common::agent();
    for (mode, program) in [("string", PROGRAM), ("goroutine", PROGRAM)] {
        let (pid, err) = go(mode, &[]);
        let r = agent.report_for(pid);
        let p = file(&format!("agent-{mode}.log"), err.as_bytes());
        let (a, _) = analyze(&["--program", program], &[&p]);
        assert_eq!(
            a["crashes"][0]["fingerprint"], r["fingerprint"],
            "{mode}: the agent's report: {r:#}\nanalyze: {a:#}"
        );
    }
    let (pid, err) = python(&tmp());
    let r = agent.report_for(pid);
    let exe = r["exe"].as_str().unwrap();
    let program = exe.rsplit('/').next().unwrap();
    let p = file("agent-python.log", err.as_bytes());
    let (a, _) = analyze(&["--program", program], &[&p]);
    assert_eq!(a["crashes"][0]["fingerprint"], r["fingerprint"]);
    assert_eq!(a["crashes"][0]["kind"], r["kind"]);
}
