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

/// One request a test endpoint took.
#[derive(Clone)]
struct Hit {
    key: String,
    /// The `X-Test` header.
    header: String,
    pid: u64,
    body: String,
}

/// A webhook endpoint: records each request's idempotency key, a test header and the
/// report's pid; can be taken down (connections refused) and brought back on its port.
struct Endpoint {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Hit>>>,
    up: std::sync::Arc<AtomicBool>,
}

impl Endpoint {
    fn start() -> Endpoint {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = Endpoint {
            port,
            got: Default::default(),
            up: std::sync::Arc::new(AtomicBool::new(false)),
        };
        e.bring_up();
        e
    }

    /// Serves on the port until taken down.
    fn bring_up(&self) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        l.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (got, up) = (self.got.clone(), self.up.clone());
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let (mut len, mut key, mut test) = (0usize, String::new(), String::new());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    let l = line.trim_end().to_string();
                    line.clear();
                    if let Some((k, v)) = l.split_once(": ") {
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.parse().unwrap(),
                            "idempotency-key" => key = v.to_string(),
                            "x-test" => test = v.to_string(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let v: Value = serde_json::from_slice(&body).unwrap();
                // `check --sinks` sends a test message without one.
                let pid = v["pid"].as_u64().unwrap_or(0);
                let text = String::from_utf8_lossy(&body).into_owned();
                got.lock().unwrap().push(Hit {
                    key,
                    header: test,
                    pid,
                    body: text,
                });
                let _ = (&s).write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
    }

    fn take_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }

    fn pids(&self) -> Vec<u64> {
        self.got.lock().unwrap().iter().map(|g| g.pid).collect()
    }
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
    assert_eq!(
        ep.pids(),
        crashed,
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

/// A Python program serving on a free loopback port (its first argument), in `dir`; killed
/// on drop.
struct PyServer {
    child: std::process::Child,
    port: u16,
}

impl PyServer {
    /// `-S` and `pythonpath`: only the modules setup.sh installed there, not the host's.
    fn start(dir: &Path, script: &str, pythonpath: Option<&str>) -> PyServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("python3");
        if let Some(p) = pythonpath {
            cmd.arg("-S").env("PYTHONPATH", p);
        }
        let child = cmd
            .args(["-c", script, &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the Python server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        PyServer { child, port }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA, and an https endpoint (Python's http.server behind ssl) whose certificate
/// it signed for 127.0.0.1; the endpoint appends each body to `got`.
struct HttpsEndpoint {
    server: PyServer,
    ca: std::path::PathBuf,
    got: std::path::PathBuf,
}

impl HttpsEndpoint {
    fn start(dir: &Path) -> HttpsEndpoint {
        let sh = |script: &str| {
            let st = Command::new("sh")
                .arg("-ec")
                .arg(script)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "{script}");
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=crashwatch-test-ca
            openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1
            printf 'subjectAltName=IP:127.0.0.1\\n' > ext
            openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 1 -extfile ext");
        let server = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        with open('got', 'ab') as f:
            f.write(body + b'\n')
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain('srv.pem', 'srv.key')
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;
        HttpsEndpoint {
            server: PyServer::start(dir, server, None),
            ca: dir.join("ca.pem"),
            got: dir.join("got"),
        }
    }
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

/// An OTLP/HTTP logs receiver: Python's http.server decoding each request with
/// OpenTelemetry's own protobuf definitions (PyPI's opentelemetry-proto, installed by
/// scripts/setup.sh) and writing each LogRecord as a JSON line.
struct OtlpReceiver {
    server: PyServer,
    got: std::path::PathBuf,
}

impl OtlpReceiver {
    fn start(dir: &Path) -> OtlpReceiver {
        let server = r#"
import http.server, json, sys
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
def value(v):
    kind = v.WhichOneof('value')
    if kind == 'array_value':
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        req = ExportLogsServiceRequest()
        req.ParseFromString(self.rfile.read(int(self.headers['Content-Length'])))
        with open('got', 'a') as f:
            for rl in req.resource_logs:
                res = {a.key: value(a.value) for a in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        f.write(json.dumps({
                            'path': self.path,
                            'content_type': self.headers['Content-Type'],
                            'resource': res,
                            'severity_number': r.severity_number,
                            'severity_text': r.severity_text,
                            'time_unix_nano': r.time_unix_nano,
                            'body': value(r.body),
                            'attributes': {a.key: value(a.value) for a in r.attributes},
                        }) + '\n')
        self.send_response(200)
        self.send_header('Content-Type', 'application/x-protobuf')
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;
        OtlpReceiver {
            server: PyServer::start(dir, server, Some("/opt/crashwatch-py/otlp")),
            got: dir.join("got"),
        }
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.got)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
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
        "every output works",
    ] {
        assert!(text.contains(l), "{l:?} missing:\n{text}");
    }
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
