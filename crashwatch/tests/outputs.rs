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

/// A webhook endpoint: records each request's idempotency key, a test header and the
/// report's pid; can be taken down (connections refused) and brought back on its port.
struct Endpoint {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u64)>>>,
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
                got.lock()
                    .unwrap()
                    .push((key, test, v["pid"].as_u64().unwrap()));
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
        self.got.lock().unwrap().iter().map(|g| g.2).collect()
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
    let mut keys: Vec<&String> = got.iter().map(|g| &g.0).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 10, "an idempotency key per report");
    assert!(
        got.iter().all(|g| g.1 == "yes"),
        "the configured header on every request"
    );
    ep.take_down();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A private CA, and an https endpoint (Python's http.server behind ssl) whose certificate
/// it signed for 127.0.0.1; the endpoint appends each body to `got`.
struct HttpsEndpoint {
    child: std::process::Child,
    port: u16,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
        let child = Command::new("python3")
            .args(["-c", server, &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the https endpoint", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        HttpsEndpoint {
            child,
            port,
            ca: dir.join("ca.pem"),
            got: dir.join("got"),
        }
    }
}

impl Drop for HttpsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_webhooks_trust_the_given_ca_and_refuse_an_unknown_one() {
    let _alone = alone();
    let dir = state_dir("https");
    std::fs::create_dir_all(&dir).unwrap();
    let ep = HttpsEndpoint::start(&dir);
    let url = format!("https://127.0.0.1:{}/hook", ep.port);
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
