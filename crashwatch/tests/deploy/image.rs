//! The image (`cargo xtask image`: the static binary FROM scratch) run by podman the way the
//! DaemonSet runs it: the podman flags are read from the rendered DaemonSet itself (host PID
//! namespace, its capabilities and no others, read-only root, its seccomp setting, every
//! hostPath mount, the ConfigMap at /etc/crashwatch, NODE_NAME), so the manifest and the
//! test cannot disagree. It must get ready, report a crash on the host and one in another
//! podman container with that container's identity, answer /healthz, and stop within 10 s
//! of SIGTERM.
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

#[test]
fn the_image_runs_as_the_daemonset_says() {
    let tag = build_image();
    let port = free_port();
    // Pinned where this test can remove it afterwards, not where a real agent would be.
    let pin_dir = format!("/sys/fs/bpf/crashwatch-image-test-{}", std::process::id());
    let _unpin = Unpin(pin_dir.clone());
    let docs = documents(&render(&[
        "--set",
        &format!("port={port}"),
        "--set",
        &format!("image.repository={}", tag.split(':').next().unwrap()),
        "--set",
        &format!("config.pin-dir={pin_dir}"),
    ]));
    let ds = kind(&docs, "DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        tag.as_str(),
        "the chart names the image xtask built"
    );
    let dir = state_dir("image");
    let node = format!("node-{}", std::process::id());
    let name = format!("cw-daemonset-{}", std::process::id());
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), format!("--name={name}")];
    args.extend(podman_options(&docs, &dir, &node));
    // Every exec read as if its process were gone already (a crasher that dies on its first
    // instruction often is): host processes are in a view other than the agent's, found
    // through the mount namespace the kernel recorded.
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
    let _agent = Container {
        id: id.clone(),
        pid: 0,
    };
    let addr = format!("127.0.0.1:{port}");
    let logs = || podman(&["logs", &id]);
    while http_get(&addr, "/readyz").is_none_or(|(status, _)| !status.contains("200")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready in 60 s: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("image: ready {:?} after podman run", started.elapsed());
    // The agent's own messages: podman gives the container's stderr on its stderr.
    let said = Command::new("podman")
        .args(common::podman::GLOBAL)
        .args(["logs", &id])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&said.stderr);
    assert!(
        said.contains(&format!("kernel state pinned under {pin_dir}")),
        "the host's /sys/fs/bpf serves the pins: {said}"
    );

    let report = |pred: &dyn Fn(&Value) -> bool| -> Value {
        let t = Instant::now();
        loop {
            let found = logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| pred(r));
            if let Some(r) = found {
                return r;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no such report: {}",
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // A host process.
    let host = Crasher::run("null");
    let r = report(&|r| r["pid"] == host.pid);
    assert_eq!(r["signal"]["name"], "SIGSEGV");
    assert!(r["stack"][0]["function"].is_string(), "named frames: {r}");

    // A process in another container.
    let img = Image::of_program("ds-victim", crasher_bin(), "/crasher");
    let victim = Container::run_with(
        &img,
        &["--name", &format!("cw-victim-{}", std::process::id())],
        &["/crasher", "null"],
    );
    assert_eq!(victim.wait(), "139");
    let r = report(&|r| r["container"]["id"] == victim.id.as_str());
    assert_eq!(r["container"]["runtime"], "podman");
    assert_eq!(r["container"]["image"], img.name.as_str());

    let (status, body) = http_get(&addr, "/healthz").expect("/healthz");
    assert!(status.contains("200"), "{status} {body}");
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(metrics.contains("crashwatch_build_info"), "{metrics}");

    let t = Instant::now();
    podman(&["stop", "--time=10", &id]);
    let stopped = t.elapsed();
    let code = podman(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert!(
        stopped < Duration::from_secs(10),
        "SIGTERM took {stopped:?}"
    );
    assert_eq!(code, "0", "clean stop: {}", logs());
    eprintln!("image: stopped {stopped:?} after SIGTERM");
}
