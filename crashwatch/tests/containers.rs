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
