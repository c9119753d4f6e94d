//! The outputs besides stdout, and what is masked before any of them: the file output
//! through a `kill -9` of the agent in the middle of a crash storm and a torn last line, and
//! secrets in a command line masked on stdout, in the file and in the crash history. Needs
//! root (CI runs as root).
mod batches;
#[path = "../common/mod.rs"]
mod common;
mod endpoints;

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use common::{agent_bin, crasher_bin, state_dir, Agent, Crasher};
use endpoints::{Endpoint, HttpsEndpoint, OtlpReceiver};
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
    let acknowledged = std::sync::atomic::AtomicU64::new(0);
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
        // What the agent says it wrote to the file: none of it may be missing after the kill.
        let acked = a
            .metric(r#"crashwatch_reports_delivered_total{sink="file"}"#)
            .expect("the file output's count on /metrics");
        a.signal(libc::SIGKILL);
        a.wait_exit(Duration::from_secs(10))
            .expect("the agent died");
        acknowledged.store(acked as u64, Ordering::Relaxed);
        // Some more crashes with nobody watching, then the rest of the storm is called off.
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<usize>()
    });
    let before = lines(&file);
    let acked = acknowledged.load(Ordering::Relaxed) as usize;
    assert!(
        acked >= 300 && before.len() >= acked && before.len() <= crashed,
        "{} lines, {acked} acknowledged on /metrics before the kill",
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
fn secrets_are_masked_in_every_output() {
    let _alone = alone();
    let dir = state_dir("redact");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("crashes.jsonl");
    let (f, d) = (file.display().to_string(), dir.display().to_string());
    let (ep, rx) = (Endpoint::start(), OtlpReceiver::start(&dir));
    let (hook, otlp) = (
        format!("http://127.0.0.1:{}/", ep.port),
        format!("http://127.0.0.1:{}", rx.server.port),
    );
    let a = Agent::start(&[
        "--output-file",
        &f,
        "--state-dir",
        &d,
        "--redact",
        r"card-[0-9]{4}",
        "--webhook",
        &hook,
        "--otlp-endpoint",
        &otlp,
        "--otlp-cmdline",
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
    wait_until("the webhook's report", || {
        ep.pids().contains(&(c.pid as u64))
    });
    let bodies: String = ep
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|g| g.body.clone())
        .collect();
    clean("the webhook", &bodies);
    wait_until("the OTLP record", || {
        rx.records()
            .iter()
            .any(|r| r["attributes"]["process.pid"] == c.pid)
    });
    let records = std::fs::read_to_string(&rx.got).unwrap();
    clean("OTLP", &records);
    assert!(
        records.contains("db?user=app&password=[REDACTED]"),
        "{records}"
    );
    ep.take_down();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webhook that cannot be reached is named in the agent's log (start, failure, stop), its
/// credentials masked as `--print-config` masks them.
#[test]
fn a_failing_webhook_is_named_in_the_log_with_its_secrets_masked() {
    let _alone = alone();
    let dir = state_dir("webhook-named");
    let d = dir.display().to_string();
    // A port nothing listens on: every attempt is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://alice:pa55word@127.0.0.1:{port}/hooks/T0/SECRETPATH?token=t0ken");
    let a = Agent::start(&["--state-dir", &d, "--webhook", &url]);
    let c = Crasher::run("null");
    a.report_for(c.pid);
    a.wait_log("not delivered");
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(30))
        .expect("the agent stops");
    let log = a.log();
    let shown = format!("http://***@127.0.0.1:{port}/***");
    for said in ["reports also go to", "not delivered", "left in the spool"] {
        let line = log
            .lines()
            .find(|l| l.contains(said))
            .unwrap_or_else(|| panic!("no {said:?} line: {log}"));
        assert!(
            line.contains(&shown),
            "{said:?} does not name {shown}: {line}"
        );
    }
    for secret in ["alice", "pa55word", "SECRETPATH", "t0ken"] {
        assert!(!log.contains(secret), "the log holds {secret}: {log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_webhook_down_for_30_s_and_an_agent_restart_lose_and_reorder_nothing() {
    let _alone = alone();
    let dir = state_dir("webhook");
    let d = dir.display().to_string();
    let ep = Endpoint::start();
    let url = format!("http://127.0.0.1:{}/hook", ep.port);
    let args = [
        "--state-dir",
        &d,
        "--webhook",
        &url,
        "--webhook-header",
        "X-Test: yes",
        "--webhook-retry-max",
        "2",
    ];
    let a = Agent::start(&args);
    let mut crashed = Vec::new();
    let mut crash = |agent: &Agent| {
        let c = Crasher::run("null");
        agent.report_for(c.pid);
        crashed.push(c.pid as u64);
    };
    for _ in 0..3 {
        crash(&a);
    }
    wait_until("3 reports at the endpoint", || ep.pids().len() == 3);

    ep.take_down();
    let down = Instant::now();
    for _ in 0..4 {
        crash(&a);
    }
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(30))
        .expect("the agent stops");
    assert!(a.log().contains("left in the spool"), "{}", a.log());
    let b = Agent::start(&args);
    for _ in 0..3 {
        crash(&b);
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    assert_eq!(
        ep.pids().len(),
        3,
        "nothing delivered while the endpoint was down"
    );
    ep.bring_up();
    wait_until("all 10 reports at the endpoint", || ep.pids().len() >= 10);
    std::thread::sleep(Duration::from_secs(1));
    // This test's crashes (a crash elsewhere on the host reaches the endpoint too).
    let mine: Vec<u64> = ep
        .pids()
        .into_iter()
        .filter(|p| crashed.contains(p))
        .collect();
    assert_eq!(
        mine, crashed,
        "every report once, in the order of the crashes"
    );
    let got = ep.got.lock().unwrap().clone();
    let mut keys: Vec<&String> = got.iter().map(|g| &g.key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 10, "an idempotency key per report");
    assert!(
        got.iter().all(|g| g.header == "yes"),
        "the configured header on every request"
    );
    ep.take_down();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_webhooks_trust_the_given_ca_and_refuse_an_unknown_one() {
    let _alone = alone();
    let dir = state_dir("https");
    std::fs::create_dir_all(&dir).unwrap();
    let ep = HttpsEndpoint::start(&dir);
    let url = format!("https://127.0.0.1:{}/hook", ep.server.port);
    let ca = ep.ca.display().to_string();
    // The private CA given: delivered, in Slack's format.
    let a = Agent::start(&[
        "--webhook",
        &url,
        "--webhook-ca",
        &ca,
        "--webhook-format",
        "slack",
    ]);
    let c = Crasher::run("null");
    a.report_for(c.pid);
    wait_until("the report over https", || {
        std::fs::read_to_string(&ep.got).is_ok_and(|t| t.contains(&format!("(pid {})", c.pid)))
    });
    let line = std::fs::read_to_string(&ep.got).unwrap();
    let v: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .starts_with("crashwatch: signal on "),
        "{v}"
    );
    // The system's CA store does not know it: not delivered, kept and retried. (The first
    // agent stops first: it would deliver this crash too.)
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(30))
        .expect("the agent stops");
    let b = Agent::start(&["--webhook", &url]);
    let c2 = Crasher::run("null");
    b.report_for(c2.pid);
    b.wait_log("not delivered");
    assert!(
        !std::fs::read_to_string(&ep.got)
            .unwrap()
            .contains(&format!("(pid {})", c2.pid)),
        "delivered to an endpoint whose certificate nobody trusted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_otlp_receiver_gets_one_fatal_log_record_per_crash() {
    let _alone = alone();
    let dir = state_dir("otlp");
    std::fs::create_dir_all(&dir).unwrap();
    let rx = OtlpReceiver::start(&dir);
    let endpoint = format!("http://127.0.0.1:{}", rx.server.port);
    let a = Agent::start(&["--otlp-endpoint", &endpoint]);
    let mut cmd = Crasher::command("null");
    cmd.arg("token=t0ps3cret");
    let c = Crasher::finish(common::spawn(&mut cmd));
    let rep = a.report_for(c.pid);
    wait_until("the log record", || {
        rx.records()
            .iter()
            .any(|r| r["attributes"]["process.pid"] == c.pid)
    });
    let all = rx.records();
    let r = all
        .iter()
        .find(|r| r["attributes"]["process.pid"] == c.pid)
        .unwrap();
    assert_eq!(r["path"], "/v1/logs");
    // Counted as OTLP's own, not as a webhook's.
    wait_until("the OTLP delivery on /metrics", || {
        a.metric(r#"crashwatch_reports_delivered_total{sink="otlp"}"#)
            .is_some_and(|n| n >= 1.0)
    });
    assert_eq!(
        a.metric(r#"crashwatch_reports_delivered_total{sink="webhook"}"#),
        None
    );
    assert_eq!(r["content_type"], "application/x-protobuf");
    assert_eq!(
        (r["severity_number"].as_u64(), r["severity_text"].as_str()),
        (Some(21), Some("FATAL"))
    );
    assert_eq!(r["body"], "SIGSEGV (SEGV_MAPERR)");
    assert_eq!(r["resource"]["service.name"], "crashwatch");
    assert_eq!(r["resource"]["host.name"], rep["host"]);
    let at = &r["attributes"];
    assert_eq!(at["exception.type"], "SIGSEGV");
    assert_eq!(at["exception.message"], "SEGV_MAPERR");
    assert!(
        at["exception.stacktrace"]
            .as_str()
            .unwrap()
            .contains("null_write"),
        "{}",
        at["exception.stacktrace"]
    );
    assert_eq!(at["process.parent_pid"], rep["ppid"]);
    assert_eq!(at["process.executable.path"], rep["exe"]);
    assert_eq!(at["crashwatch.kind"], "signal");
    assert_eq!(at["crashwatch.fingerprint"], rep["fingerprint"]);
    assert_eq!(at["crashwatch.cluster.count"], rep["cluster"]["count"]);
    assert!(
        at["process.executable.build_id.gnu"]
            .as_str()
            .is_some_and(|b| b.len() == 40),
        "{at}"
    );
    assert!(
        at.get("process.command_args").is_none(),
        "no command line without --otlp-cmdline"
    );
    // The report's own time of death, not the time it was sent.
    assert_eq!(r["time_unix_nano"].as_u64().unwrap() / 1000, {
        let t = rep["time"].as_str().unwrap();
        let secs = std::process::Command::new("date")
            .args(["-u", "-d", t, "+%s%6N"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&secs.stdout)
            .trim()
            .parse::<u64>()
            .unwrap()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_sinks_tries_each_output_once() {
    let _alone = alone();
    let dir = state_dir("check-sinks");
    std::fs::create_dir_all(&dir).unwrap();
    let (ep, rx) = (Endpoint::start(), OtlpReceiver::start(&dir));
    let file = dir.join("out/crashes.jsonl");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let check = |extra: &[&str]| {
        let out = Command::new(agent_bin())
            .args(["check", "--sinks", "--state-dir"])
            .arg(&dir)
            .args(["--output-file"])
            .arg(&file)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let hook = format!("http://127.0.0.1:{}/", ep.port);
    let otlp = format!("http://127.0.0.1:{}", rx.server.port);
    let (ok, text) = check(&["--webhook", &hook, "--otlp-endpoint", &otlp]);
    assert!(ok, "{text}");
    for l in [
        "ok   crash history",
        "ok   file",
        "ok   webhook",
        "ok   otlp",
        "ok   listen",
        "ok   crash page",
        "every output works",
    ] {
        assert!(text.contains(l), "{l:?} missing:\n{text}");
    }
    // A token file that holds no token fails the check, said.
    let short = dir.join("token");
    std::fs::write(&short, "short\n").unwrap();
    let (ok, text) = check(&["--listen-token-file", short.to_str().unwrap()]);
    assert!(!ok && text.contains("FAIL crash page"), "{text}");
    assert!(!file.exists(), "the check writes no report");
    assert_eq!(ep.pids(), [0], "one test message at the webhook");
    // An endpoint nobody listens on fails the check, with the cause.
    ep.take_down();
    let (ok, text) = check(&["--webhook", &hook]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL webhook") && text.contains("some outputs do not work"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
