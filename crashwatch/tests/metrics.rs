//! Prometheus metrics, read by the real thing: Debian's `prometheus` scrapes the agent every
//! second, and the test asks Prometheus's HTTP API for `crashwatch_crashes_total` before and
//! after crashes it caused. Needs root and prometheus (scripts/setup.sh).
mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{http_get as get, state_dir, Agent, Crasher};
use serde_json::Value;

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's Prometheus, scraping `target` every second, in a directory of its own.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = state_dir("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: crashwatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/setup.sh installs Debian's)");
        let p = Prometheus { child, addr, dir };
        p.until("Prometheus ready", || {
            get(&p.addr, "/-/ready").is_some_and(|(h, _)| h.contains(" 200 "))
        });
        p
    }

    /// The value of an instant query returning one series, None when it returns none.
    fn value(&self, query: &str) -> Option<f64> {
        self.query(query)["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// An instant query's answer; the test fails on anything but success.
    fn query(&self, query: &str) -> Value {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let (_, body) = get(&self.addr, &path).expect("Prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{query}: {body}");
        v
    }

    fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_the_crashes_this_test_caused() {
    let a = Agent::start(&[]);
    let addr = a.metrics_addr().expect("the agent says where /metrics is");
    let (head, body) = get(&addr, "/metrics").expect("GET /metrics");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for name in [
        "crashwatch_build_info{version=",
        "crashwatch_crash_loops ",
        "crashwatch_go_binaries_probed ",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }

    // The probes a kubelet would ask.
    for (path, answer) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let (head, body) = get(&addr, path).unwrap();
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{path}: {head}"
        );
        assert_eq!(body, answer);
    }
    // The version and the revision it was built from, on /metrics and --version alike.
    let version = std::process::Command::new(common::agent_bin())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let revision = version
        .split("(revision ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no revision in {version:?}"));
    assert!(
        body.contains(&format!("revision=\"{revision}\"")),
        "{revision} not in crashwatch_build_info:\n{body}"
    );

    let prom = Prometheus::start(&addr);
    prom.until("a first scrape of the agent", || {
        prom.value(r#"up{job="crashwatch"}"#) == Some(1.0)
    });
    // SIGBUS: nothing else on a test machine dies of it, so every one counted is ours.
    let query = r#"sum(crashwatch_crashes_total{kind="signal",signal="SIGBUS",namespace=""})"#;
    let before = prom.value(query).unwrap_or(0.0);
    for _ in 0..3 {
        let c = Crasher::run("bus");
        assert_eq!(a.report_for(c.pid)["signal"]["name"], "SIGBUS");
    }
    prom.until("3 more SIGBUS crashes in Prometheus", || {
        prom.value(query).unwrap_or(0.0) >= before + 3.0
    });
    // A few scrapes later still exactly 3: nothing was counted twice.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prom.value(query), Some(before + 3.0));
    assert_eq!(prom.value("crashwatch_crash_loops"), Some(0.0));

    // Every panel of the Grafana dashboard, with Grafana's variables as a dashboard set to
    // "All" would send them, is a query Prometheus accepts; the crash panels show ours.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/crashwatch.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", "crashwatch")
                .replace("$namespace", ".*");
            assert!(!expr.contains('$'), "a variable left in {expr}");
            let v = prom.query(&expr);
            let result = v["data"]["result"].as_array().unwrap();
            if p["title"].as_str().unwrap().starts_with("Crashes by") {
                assert!(!result.is_empty(), "{}: no series for {expr}", p["title"]);
            }
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        let Some(def) = var["definition"].as_str() else {
            continue;
        };
        // label_values(metric, label)
        let (metric, label) = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .and_then(|d| d.split_once(", "))
            .unwrap_or_else(|| panic!("{def}"));
        let (_, body) = get(
            &prom.addr,
            &format!(
                "/api/v1/label/{label}/values?match[]={}",
                url_encode(metric)
            ),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{def}: {body}");
        if label == "job" {
            assert_eq!(v["data"], serde_json::json!(["crashwatch"]), "{def}");
        }
    }
}
