//! Which container and pod a crash happened in, with real podman containers (cgroupfs, as on
//! this host): id and runtime from the cgroup path, name and image from podman's own files,
//! the pod from CRI-O-style `io.kubernetes.*` annotations in the bundle, and all of it kept
//! for a container removed as soon as it died. Needs root and podman (scripts/setup.sh).
mod common;

use common::{
    crasher_bin,
    podman::{podman, Container, Image},
    Agent, Setup,
};
use serde_json::Value;

/// An image of the crasher; `tag` keeps the tests' image builds apart.
fn image(tag: &str) -> Image {
    Image::of_program(tag, crasher_bin(), "/crasher")
}

/// The first report from inside container `id` (its first process may be the one).
fn report_in(a: &Agent, id: &str) -> Value {
    a.wait_for(|| a.reports().into_iter().find(|r| r["container"]["id"] == id))
        .unwrap_or_else(|| panic!("no report from container {id}; agent log:\n{}", a.log()))
}

#[test]
fn a_crash_in_a_podman_container_names_the_container_and_its_image() {
    let a = Agent::start(&[]);
    let img = image("ctx-name");
    let name = format!("cw-ctx-{}", std::process::id());
    let ctr = Container::run_with(&img, &["--name", &name], &["/crasher", "null"]);
    assert_eq!(ctr.wait(), "139", "SIGSEGV");
    let rep = report_in(&a, &ctr.id);
    assert_eq!(rep["kind"], "signal");
    assert_eq!(rep["signal"]["name"], "SIGSEGV");
    assert_eq!(rep["container"]["runtime"], "podman");
    assert_eq!(rep["container"]["name"], name.as_str());
    assert_eq!(rep["container"]["image"], img.name.as_str());
    assert!(
        rep["cgroup"]
            .as_str()
            .is_some_and(|c| c.contains(&format!("libpod-{}", ctr.id))),
        "the id comes from the cgroup path: {}",
        rep["cgroup"]
    );
    assert!(rep.get("k8s").is_none(), "not in a pod: {}", rep["k8s"]);
}

#[test]
fn a_container_with_kubernetes_annotations_names_its_pod() {
    let node = format!("node-{}", std::process::id());
    let a = Agent::start_with(
        &[],
        Setup {
            wrap: vec!["env".into(), format!("NODE_NAME={node}")],
            ..Setup::default()
        },
    );
    let img = image("ctx-pod");
    let uid = "0b7c5a0e-2f4d-4c8e-9a61-5d3e7f9b1c24";
    let ann = |k: &str, v: &str| format!("{k}={v}");
    let (pod, ns, cname) = ("checkout-7d9f6", "shop", "api");
    let opts = [
        ann("io.kubernetes.pod.name", pod),
        ann("io.kubernetes.pod.namespace", ns),
        ann("io.kubernetes.pod.uid", uid),
        ann("io.kubernetes.container.name", cname),
    ];
    let mut args = Vec::new();
    for o in &opts {
        args.extend(["--annotation", o.as_str()]);
    }
    let ctr = Container::run_with(&img, &args, &["/crasher", "null"]);
    assert_eq!(ctr.wait(), "139", "SIGSEGV");
    let rep = report_in(&a, &ctr.id);
    assert_eq!(rep["signal"]["name"], "SIGSEGV");
    assert_eq!(rep["k8s"]["namespace"], ns);
    assert_eq!(rep["k8s"]["pod"], pod);
    assert_eq!(rep["k8s"]["pod_uid"], uid);
    assert_eq!(rep["k8s"]["container"], cname);
    assert_eq!(rep["k8s"]["node"], node.as_str());
    // The bundle names the container; podman's list still gives the image.
    assert_eq!(rep["container"]["name"], cname);
    assert_eq!(rep["container"]["image"], img.name.as_str());
}

/// `podman run --rm`: the container and its files are gone moments after the crash, most
/// likely before the report is built; what was read at the first crash sign stays.
#[test]
fn a_container_removed_right_after_its_crash_keeps_its_name() {
    let a = Agent::start(&[]);
    let img = image("ctx-rm");
    let name = format!("cw-rm-{}", std::process::id());
    // Attached (no -d): podman returns once the container is gone.
    let out = std::process::Command::new("podman")
        .args([
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            "run",
            "--rm",
        ])
        .args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ])
        .args(["--name", &name, &img.name, "/crasher", "fpe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(136), "SIGFPE: {out:?}");
    let gone = podman(&["ps", "-a", "--filter", &format!("name={name}"), "-q"]);
    assert!(gone.is_empty(), "podman kept the container: {gone}");
    let rep = a
        .wait_for(|| {
            a.reports()
                .into_iter()
                .find(|r| r["container"]["name"] == name.as_str())
        })
        .unwrap_or_else(|| panic!("no report naming {name}; agent log:\n{}", a.log()));
    assert_eq!(rep["signal"]["name"], "SIGFPE");
    assert_eq!(rep["container"]["image"], img.name.as_str());
    assert_eq!(rep["container"]["id"].as_str().map(str::len), Some(64));
}

/// A container as the kubelet lays one out with the cgroupfs driver: plain runc, its cgroup
/// at `/kubepods/besteffort/pod<uid>/<id>`, its bundle nowhere the agent looks (as with a
/// CRI whose state it cannot read), and the kubelet's log tree, which the test builds in a
/// directory of its own and points the agent at (`--pod-log-dir`, `--container-log-dir`).
struct KubeletStyle {
    dir: std::path::PathBuf,
    id: String,
    uid: String,
}

impl KubeletStyle {
    fn new() -> KubeletStyle {
        let n = std::process::id();
        let dir = common::state_dir("runc");
        let rootfs = dir.join("bundle/rootfs");
        for d in ["usr", "proc", "dev", "tmp", "sys"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        for (link, to) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(to, rootfs.join(link)).unwrap();
        }
        std::fs::copy(crasher_bin(), rootfs.join("crasher")).unwrap();
        KubeletStyle {
            dir,
            id: format!("{n:08x}{}", "c".repeat(56)),
            uid: format!("{n:08x}-8a3b-4c1d-9e7f-0123456789ab"),
        }
    }

    /// Runs the crasher in `mode` under runc; its exit status as the shell shows it.
    fn run(&self, mode: &str) -> Option<i32> {
        let bundle = self.dir.join("bundle");
        let st = std::process::Command::new("runc")
            .args(["spec", "-b"])
            .arg(&bundle)
            .status()
            .expect("runc (scripts/setup.sh installs it)");
        assert!(st.success());
        let path = bundle.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        c["process"]["terminal"] = false.into();
        c["process"]["args"] = serde_json::json!(["/crasher", mode]);
        c["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}
        ));
        c["linux"]["cgroupsPath"] =
            format!("/kubepods/besteffort/pod{}/{}", self.uid, self.id).into();
        std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
        let out = std::process::Command::new("runc")
            .args(["run", "-b"])
            .arg(&bundle)
            .arg(&self.id)
            .output()
            .unwrap();
        out.status.code()
    }

    /// The kubelet's log tree for this container: `pods/<ns>_<pod>_<uid>/<container>/0.log`
    /// and `containers/<pod>_<ns>_<container>-<id>.log`.
    fn logs(&self, ns: &str, pod: &str, container: &str) -> (String, String) {
        let pods = self.dir.join("log/pods");
        let dir = pods.join(format!("{ns}_{pod}_{}/{container}", self.uid));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.log"), "").unwrap();
        let links = self.dir.join("log/containers");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(
            dir.join("0.log"),
            links.join(format!("{pod}_{ns}_{container}-{}.log", self.id)),
        )
        .unwrap();
        (pods.display().to_string(), links.display().to_string())
    }
}

impl Drop for KubeletStyle {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runc")
            .args(["delete", "-f", &self.id])
            .output();
        // runc leaves the parents it made in every hierarchy; the pod's are this test's, and
        // the qos and kubepods levels go only when empty (rmdir refuses otherwise).
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let kubepods = h.path().join("kubepods");
            let pod = kubepods.join(format!("besteffort/pod{}", self.uid));
            for d in [
                pod.join(&self.id),
                pod,
                kubepods.join("besteffort"),
                kubepods,
            ] {
                let _ = std::fs::remove_dir(d);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_runc_container_under_a_kubelet_cgroup_path_names_its_pod_from_the_log_tree() {
    let k = KubeletStyle::new();
    let (pods, links) = k.logs("batch", "report-29", "worker");
    let node = format!("node-runc-{}", std::process::id());
    let a = Agent::start_with(
        &["--pod-log-dir", &pods, "--container-log-dir", &links],
        Setup {
            wrap: vec!["env".into(), format!("NODE_NAME={node}")],
            ..Setup::default()
        },
    );
    assert_eq!(k.run("null"), Some(139), "SIGSEGV");
    let rep = report_in(&a, &k.id);
    assert_eq!(rep["signal"]["name"], "SIGSEGV");
    assert_eq!(
        rep["container"]["runtime"], "containerd",
        "a bare id under a pod"
    );
    assert_eq!(
        rep["container"]["name"],
        Value::Null,
        "no bundle to name it"
    );
    assert_eq!(
        rep["cgroup"].as_str(),
        Some(format!("/kubepods/besteffort/pod{}/{}", k.uid, k.id).as_str())
    );
    assert_eq!(rep["k8s"]["pod_uid"], k.uid.as_str());
    assert_eq!(rep["k8s"]["namespace"], "batch");
    assert_eq!(rep["k8s"]["pod"], "report-29");
    assert_eq!(rep["k8s"]["container"], "worker");
    assert_eq!(rep["k8s"]["node"], node.as_str());
}
