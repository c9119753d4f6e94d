//! The test endpoints the outputs talk to: a webhook endpoint in this process that can be
//! taken down and brought back, an https endpoint behind a private CA and an OTLP receiver
//! (both Python's http.server, the latter decoding with OpenTelemetry's own protobuf
//! definitions).
use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde_json::Value;

use super::wait_until;

/// One report a test endpoint took (a request's body, or one element of its JSON array).
#[derive(Clone)]
pub struct Hit {
    pub key: String,
    /// The `X-Test` header.
    pub header: String,
    pub pid: u64,
    pub body: String,
    /// Which connection (0, 1, … in accept order) and which request (in arrival order)
    /// brought it, and how many reports that request carried.
    pub conn: usize,
    pub request: usize,
    pub in_request: usize,
}

/// A webhook endpoint: records each report's idempotency key, a test header and pid, and
/// the connection and request it came in; keeps connections alive as HTTP/1.1 does; can be
/// taken down (connections refused, open ones closed) and brought back on its port.
pub struct Endpoint {
    pub port: u16,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Hit>>>,
    pub up: std::sync::Arc<AtomicBool>,
    /// Connections accepted and requests answered so far.
    counts: std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>,
}

impl Endpoint {
    pub fn start() -> Endpoint {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = Endpoint {
            port,
            got: Default::default(),
            up: std::sync::Arc::new(AtomicBool::new(false)),
            counts: Default::default(),
        };
        e.bring_up();
        e
    }

    /// Serves on the port until taken down, each connection on a thread of its own.
    pub fn bring_up(&self) {
        let l = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        l.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (got, up, counts) = (self.got.clone(), self.up.clone(), self.counts.clone());
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let conn = counts[0].fetch_add(1, Ordering::SeqCst);
                let (got, up, counts) = (got.clone(), up.clone(), counts.clone());
                std::thread::spawn(move || serve(s, conn, &got, &up, &counts[1]));
            }
        });
    }

    pub fn take_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }

    pub fn pids(&self) -> Vec<u64> {
        self.got.lock().unwrap().iter().map(|g| g.pid).collect()
    }
}

/// One connection's requests until the client closes it or the endpoint is taken down.
fn serve(
    s: std::net::TcpStream,
    conn: usize,
    got: &std::sync::Mutex<Vec<Hit>>,
    up: &AtomicBool,
    requests: &std::sync::atomic::AtomicUsize,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    loop {
        // Waiting for the next request on a kept connection, until the endpoint goes down.
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) if up.load(Ordering::SeqCst) && line.is_empty() => continue,
            Err(_) => return,
        }
        if !up.load(Ordering::SeqCst) {
            return;
        }
        s.set_read_timeout(None).unwrap();
        let (mut len, mut key, mut test) = (0usize, String::new(), String::new());
        line.clear();
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
        let request = requests.fetch_add(1, Ordering::SeqCst);
        let v: Value = serde_json::from_slice(&body).unwrap();
        // A batch is an array of reports; `check --sinks` sends a test message without pid.
        let reports = match v {
            Value::Array(a) => a,
            one => vec![one],
        };
        let n = reports.len();
        got.lock().unwrap().extend(reports.into_iter().map(|v| Hit {
            key: key.clone(),
            header: test.clone(),
            pid: v["pid"].as_u64().unwrap_or(0),
            body: if n == 1 {
                String::from_utf8_lossy(&body).into_owned()
            } else {
                v.to_string()
            },
            conn,
            request,
            in_request: n,
        }));
        if (&s)
            // An answer with a body, as collectors and Sentry give: a client that leaves
            // it unread cannot reuse the connection.
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
            .is_err()
        {
            return;
        }
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
    }
}

pub use super::common::free_port;

/// A Python program serving on a free loopback port (its first argument), in `dir`; killed
/// on drop.
pub struct PyServer {
    pub child: std::process::Child,
    pub port: u16,
}

impl PyServer {
    /// `-S` and `pythonpath`: only the modules setup.sh installed there, not the host's.
    pub fn start(dir: &Path, script: &str, pythonpath: Option<&str>) -> PyServer {
        Self::start_on(dir, script, pythonpath, free_port())
    }

    pub fn start_on(dir: &Path, script: &str, pythonpath: Option<&str>, port: u16) -> PyServer {
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
pub struct HttpsEndpoint {
    pub server: PyServer,
    pub ca: std::path::PathBuf,
    pub got: std::path::PathBuf,
}

impl HttpsEndpoint {
    pub fn start(dir: &Path) -> HttpsEndpoint {
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

/// An OTLP/HTTP logs receiver: Python's http.server decoding each request with
/// OpenTelemetry's own protobuf definitions (PyPI's opentelemetry-proto, installed by
/// scripts/setup.sh) and writing each LogRecord as a JSON line.
pub struct OtlpReceiver {
    pub server: PyServer,
    pub got: std::path::PathBuf,
}

impl OtlpReceiver {
    pub fn start(dir: &Path) -> OtlpReceiver {
        Self::start_on(dir, free_port())
    }

    /// On `port` (an output that waited for it finds it there).
    pub fn start_on(dir: &Path, port: u16) -> OtlpReceiver {
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
        n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
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
                            'in_request': n,
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
            server: PyServer::start_on(dir, server, Some("/opt/crashwatch-py/otlp"), port),
            got: dir.join("got"),
        }
    }

    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.got)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
