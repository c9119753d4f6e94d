//! The image (`cargo xtask image`: the static binary FROM scratch) run by podman the way the
//! DaemonSet runs it: the podman flags are read from the rendered DaemonSet itself (host PID
//! namespace, its capabilities and no others, read-only root, its seccomp setting, every
//! hostPath mount, the ConfigMap at /etc/crashwatch, NODE_NAME), so the manifest and the
//! test cannot disagree. It must get ready, report a crash on the host and one in another
//! podman container with that container's identity, answer /healthz, and stop within 10 s
//! of SIGTERM. With the chart's `dumps.enabled` it is the node's core handler from inside its
//! container: the host's `core_pattern` names its socket while it runs, each crash's report
//! has its threads from the core, and the previous pattern is back after the stop.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{common, documents, kind, render, root, Unpin};
use common::{
    crasher_bin, free_port, http_get,
    podman::{podman, Container, Image},
    state_dir, Crasher,
};

/// Builds the image with the xtask (a nested cargo: the static build shares the VM tests'
/// target directory) and returns its tag.
fn build_image() -> String {
    let out = Command::new(env!("CARGO"))
        .args(["xtask", "image"])
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo xtask image: {err}");
    err.lines()
        .find_map(|l| {
            l.strip_prefix("xtask: image ")?
                .split(':')
                .take(2)
                .collect::<Vec<_>>()
                .join(":")
                .into()
        })
        .unwrap_or_else(|| panic!("no image tag in: {err}"))
}

/// `podman run` options equal to the DaemonSet's pod spec; `dir` receives the ConfigMap and
/// stands in for host paths this host lacks (the kubelet's `type: ""` mounts them anyway).
fn podman_options(docs: &[Value], dir: &std::path::Path, node: &str) -> Vec<String> {
    let ds = kind(docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let mut o: Vec<String> = vec![
        "--ulimit=nofile=20000:20000".into(),
        "--ulimit=nproc=32768:32768".into(),
    ];
    if pod["hostPID"] == true {
        o.push("--pid=host".into());
    }
    // Pod networking is not this test's subject; the listener binds the port it is given.
    o.push("--network=host".into());
    if sc["readOnlyRootFilesystem"] == true {
        o.push("--read-only".into());
    }
    if sc["privileged"] == true {
        o.push("--privileged".into());
    }
    for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        o.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        o.push(format!("--cap-add={}", cap.as_str().unwrap()));
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        o.push("--security-opt=seccomp=unconfined".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        o.push("--security-opt=no-new-privileges".into());
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("spec.nodeName") => o.push(format!("--env={name}={node}")),
            Some(other) => panic!("the test does not know fieldRef {other}"),
            None => o.push(format!("--env={name}={}", e["value"].as_str().unwrap())),
        }
    }
    let volumes = pod["volumes"].as_array().unwrap();
    for m in c["volumeMounts"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let at = m["mountPath"].as_str().unwrap();
        let v = volumes.iter().find(|v| v["name"] == name).unwrap();
        let source = if let Some(cm) = v["configMap"]["name"].as_str() {
            let cm_doc = docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm)
                .unwrap();
            let d = dir.join("configmap");
            std::fs::create_dir_all(&d).unwrap();
            for (k, text) in cm_doc["data"].as_object().unwrap() {
                std::fs::write(d.join(k), text.as_str().unwrap()).unwrap();
            }
            d
        } else if let Some(p) = v["hostPath"]["path"].as_str() {
            let path = if at == "/var/lib/crashwatch" {
                // The state directory: this test's own, not the host's.
                dir.join("state")
            } else {
                PathBuf::from(p)
            };
            if v["hostPath"]["type"] == "DirectoryOrCreate" {
                std::fs::create_dir_all(&path).unwrap();
            }
            if !path.exists() {
                let stand_in = dir.join("empty").join(name);
                std::fs::create_dir_all(&stand_in).unwrap();
                stand_in
            } else {
                path
            }
        } else {
            panic!("the test does not know volume {v}");
        };
        std::fs::create_dir_all(&source).unwrap();
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        o.push(format!("--volume={}:{at}{ro}", source.display()));
    }
    o
}

/// The image running as the DaemonSet rendered with `sets` says, ready.
struct Running {
    id: String,
    addr: String,
    /// The agent's own messages until ready.
    said: String,
    pin_dir: String,
    _agent: Container,
    _unpin: Unpin,
}

impl Running {
    fn start(what: &str, sets: &[&str]) -> Running {
        let tag = build_image();
        let port = free_port();
        // Pinned where this test can remove it afterwards, not where a real agent would be.
        let pin_dir = format!("/sys/fs/bpf/crashwatch-{what}-{}", std::process::id());
        let unpin = Unpin(pin_dir.clone());
        let mut all = vec![
            format!("port={port}"),
            format!("image.repository={}", tag.split(':').next().unwrap()),
            format!("config.pin-dir={pin_dir}"),
        ];
        all.extend(sets.iter().map(|s| s.to_string()));
        let args: Vec<String> = all
            .iter()
            .flat_map(|s| ["--set".into(), s.clone()])
            .collect();
        let docs = documents(&render(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        let ds = kind(&docs, "DaemonSet");
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["image"],
            tag.as_str(),
            "the chart names the image xtask built"
        );
        let dir = state_dir(what);
        let node = format!("node-{}", std::process::id());
        let name = format!("cw-{what}-{}", std::process::id());
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), format!("--name={name}")];
        args.extend(podman_options(&docs, &dir, &node));
        // Every exec read as if its process were gone already (a crasher that dies on its
        // first instruction often is): host processes are in a view other than the agent's,
        // found through the mount namespace the kernel recorded.
        args.push("--env=CRASHWATCH_FAILPOINT_EXEC_READ_LATE=1".into());
        args.push(tag.clone());
        args.extend(
            c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string()),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let id = podman(&argv);
        let agent = Container {
            id: id.clone(),
            pid: 0,
        };
        let addr = format!("127.0.0.1:{port}");
        while http_get(&addr, "/readyz").is_none_or(|(status, _)| !status.contains("200")) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not ready in 60 s: {}",
                podman(&["logs", &id])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{what}: ready {:?} after podman run", started.elapsed());
        // The agent's own messages: podman gives the container's stderr on its stderr.
        let said = Command::new("podman")
            .args(common::podman::GLOBAL)
            .args(["logs", &id])
            .output()
            .unwrap();
        Running {
            said: String::from_utf8_lossy(&said.stderr).into_owned(),
            id,
            addr,
            pin_dir,
            _agent: agent,
            _unpin: unpin,
        }
    }

    /// The report on the container's stdout that `pred` picks.
    fn report(&self, pred: &dyn Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let found = podman(&["logs", &self.id])
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| pred(r));
            if let Some(r) = found {
                return r;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no such report: {}",
                podman(&["logs", &self.id])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops it as the kubelet does (SIGTERM, 10 s of grace): clean and in time.
    fn stop(&self) {
        let t = Instant::now();
        podman(&["stop", "--time=10", &self.id]);
        let stopped = t.elapsed();
        let code = podman(&["inspect", "-f", "{{.State.ExitCode}}", &self.id]);
        assert!(
            stopped < Duration::from_secs(10),
            "SIGTERM took {stopped:?}"
        );
        assert_eq!(code, "0", "clean stop: {}", podman(&["logs", &self.id]));
        eprintln!("stopped {stopped:?} after SIGTERM");
    }
}

#[test]
fn the_image_runs_as_the_daemonset_says() {
    let pattern = PatternBack::save();
    let a = Running::start("image", &["dumps.enabled=true"]);
    let (addr, said, pin_dir) = (&a.addr, &a.said, &a.pin_dir);
    assert!(
        said.contains(&format!("kernel state pinned under {pin_dir}")),
        "the host's /sys/fs/bpf serves the pins: {said}"
    );
    assert!(
        said.contains("dumps: the kernel hands cores to"),
        "the core handler from the container: {said}"
    );
    let ours = std::fs::read_to_string(CORE_PATTERN).unwrap();
    assert!(
        ours.starts_with("@") && ours.contains("/run/crashwatch/coredump.sock"),
        "the host's core_pattern names the agent's socket: {ours}"
    );

    // A host process.
    let host = Crasher::run("null");
    let r = a.report(&|r| r["pid"] == host.pid);
    assert_eq!(r["signal"]["name"], "SIGSEGV");
    assert!(r["stack"][0]["function"].is_string(), "named frames: {r}");
    // Its core went to the agent in the container: the crashed thread from the dump.
    assert!(r["dump"]["bytes"].as_u64().unwrap_or(0) > 0, "a dump: {r}");
    assert_eq!(r["threads"][0]["crashed"], true, "{r}");
    assert_eq!(r["threads"][0]["tid"], r["tid"], "{r}");

    // A process in another container.
    let img = Image::of_program("ds-victim", crasher_bin(), "/crasher");
    let victim = Container::run_with(
        &img,
        &["--name", &format!("cw-victim-{}", std::process::id())],
        &["/crasher", "null"],
    );
    assert_eq!(victim.wait(), "139");
    let r = a.report(&|r| r["container"]["id"] == victim.id.as_str());
    assert_eq!(r["container"]["runtime"], "podman");
    assert_eq!(r["container"]["image"], img.name.as_str());

    let (status, body) = http_get(addr, "/healthz").expect("/healthz");
    assert!(status.contains("200"), "{status} {body}");
    let (_, metrics) = http_get(addr, "/metrics").unwrap();
    let dumps: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("crashwatch_dumps_read_total ")?.parse().ok())
        .unwrap_or(0.0);
    assert!(dumps >= 2.0, "both crashes' cores read: {metrics}");
    a.stop();
    assert_eq!(
        std::fs::read_to_string(CORE_PATTERN).unwrap(),
        pattern.before,
        "the previous core_pattern is back"
    );
}

/// On kernels before 6.16 the kernel runs a pipe helper from the node's root, where the
/// image's binary is not: the agent names a copy of itself in the socket's directory, which
/// the chart mounts from the node.
#[test]
fn from_the_daemonset_the_pipe_helper_is_the_agents_own_copy_on_the_node() {
    let pattern = PatternBack::save();
    let a = Running::start("pipe", &["dumps.enabled=true", "config.dump-via=pipe"]);
    let ours = std::fs::read_to_string(CORE_PATTERN).unwrap();
    assert!(
        ours.starts_with(
            "|/run/crashwatch/crashwatch core-helper -s /run/crashwatch/coredump.sock "
        ),
        "{ours}\n{}",
        a.said
    );
    let host = Crasher::run("null");
    let r = a.report(&|r| r["pid"] == host.pid);
    assert!(r["dump"]["bytes"].as_u64().unwrap_or(0) > 0, "a dump: {r}");
    assert_eq!(r["threads"][0]["tid"], r["tid"], "{r}");
    a.stop();
    assert_eq!(
        std::fs::read_to_string(CORE_PATTERN).unwrap(),
        pattern.before
    );
}

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// The host's core_pattern before the test, written back when it ends, passed or not; one
/// test at a time holds it.
struct PatternBack {
    before: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl PatternBack {
    fn save() -> PatternBack {
        PatternBack {
            _one: ONE.lock().unwrap_or_else(|e| e.into_inner()),
            before: std::fs::read_to_string(CORE_PATTERN).unwrap(),
        }
    }
}

impl Drop for PatternBack {
    fn drop(&mut self) {
        let _ = std::fs::write(CORE_PATTERN, &self.before);
    }
}
