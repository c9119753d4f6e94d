//! The runtimes' files as each writes them (shapes taken from this host's podman and from
//! containerd's, CRI-O's, docker's and the kubelet's layouts), under a host root of the
//! test's own.
use std::{fs, path::PathBuf};

use super::*;

const ID: &str = "6ae7f57553fb7079c01dc35f28c25522b5056e4884bc125c1b8752c667df611f";
const UID: &str = "6f0d4f2e-8a3b-4c1d-9e7f-0123456789ab";

struct Root(PathBuf);

impl Root {
    fn new(tag: &str) -> Root {
        let p = std::env::temp_dir().join(format!("crashwatch-ctx-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Root(p)
    }

    fn put(&self, rel: &str, text: &str) {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn containers(&self) -> Containers {
        self.containers_with(Sources::default())
    }

    fn containers_with(&self, sources: Sources) -> Containers {
        Containers::new(self.0.clone(), sources, "node-7".into())
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn note(c: &Containers, path: &str) -> Identity {
    (*c.note(path).expect("a container or pod")).clone()
}

#[test]
fn podman_name_and_image_from_its_container_list() {
    let r = Root::new("podman");
    r.put(
        "var/lib/containers/storage/overlay-containers/containers.json",
        &format!(
            r#"[{{"id":"{}","names":["other"],"metadata":"{{}}"}},
               {{"id":"{ID}","names":["cwprobe"],"image":"eebc","metadata":"{{\"image-name\":\"localhost/cwtest:1\",\"name\":\"cwprobe\"}}"}}]"#,
            "b".repeat(64)
        ),
    );
    r.put(
        &format!("var/lib/containers/storage/overlay-containers/{ID}/userdata/config.json"),
        r#"{"annotations":{"io.container.manager":"libpod"}}"#,
    );
    let id = note(&r.containers(), &format!("/libpod_parent/libpod-{ID}"));
    assert_eq!(
        id.container,
        Some(ContainerInfo {
            id: ID.into(),
            runtime: Runtime::Podman,
            name: Some("cwprobe".into()),
            image: Some("localhost/cwtest:1".into()),
        })
    );
    assert_eq!(id.k8s, None);
}

#[test]
fn containerd_pod_from_the_cri_annotations() {
    let r = Root::new("containerd");
    r.put(
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
        &format!(
            r#"{{"ociVersion":"1.1.0","annotations":{{
                "io.kubernetes.cri.container-type":"container",
                "io.kubernetes.cri.container-name":"api",
                "io.kubernetes.cri.image-name":"registry.example/api:1.4",
                "io.kubernetes.cri.sandbox-name":"api-7d9f",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.sandbox-uid":"{UID}"}}}}"#
        ),
    );
    let path = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
        UID.replace('-', "_")
    );
    let id = note(&r.containers(), &path);
    let c = id.container.unwrap();
    assert_eq!(
        (c.runtime, c.name.as_deref(), c.image.as_deref()),
        (
            Runtime::Containerd,
            Some("api"),
            Some("registry.example/api:1.4")
        )
    );
    assert_eq!(
        id.k8s,
        Some(K8sInfo {
            namespace: Some("shop".into()),
            pod: Some("api-7d9f".into()),
            pod_uid: Some(UID.into()),
            container: Some("api".into()),
            node: "node-7".into(),
        })
    );
}

#[test]
fn crio_pod_from_the_kubelet_annotations() {
    let r = Root::new("crio");
    r.put(
        &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
        &format!(
            r#"{{"annotations":{{"io.kubernetes.pod.name":"web-1","io.kubernetes.pod.namespace":"prod",
               "io.kubernetes.pod.uid":"{UID}","io.kubernetes.container.name":"nginx",
               "io.kubernetes.cri-o.ImageName":"docker.io/library/nginx:1.27"}}}}"#
        ),
    );
    let id = note(
        &r.containers(),
        &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
    );
    let k = id.k8s.unwrap();
    assert_eq!(
        (
            k.namespace.as_deref(),
            k.pod.as_deref(),
            k.container.as_deref()
        ),
        (Some("prod"), Some("web-1"), Some("nginx"))
    );
    assert_eq!(
        id.container.unwrap().image.as_deref(),
        Some("docker.io/library/nginx:1.27")
    );
}

#[test]
fn docker_name_and_image() {
    let r = Root::new("docker");
    r.put(
        &format!("var/lib/docker/containers/{ID}/config.v2.json"),
        r#"{"Name":"/happy_turing","Config":{"Image":"alpine:3.20"}}"#,
    );
    let c = note(&r.containers(), &format!("/system.slice/docker-{ID}.scope"))
        .container
        .unwrap();
    assert_eq!(
        (c.name.as_deref(), c.image.as_deref()),
        (Some("happy_turing"), Some("alpine:3.20"))
    );
}

#[test]
fn pod_names_from_the_kubelet_log_tree_when_no_bundle_names_them() {
    let r = Root::new("logs");
    r.put(
        &format!("var/log/pods/batch_report-29_{UID}/worker/0.log"),
        "",
    );
    r.put(
        &format!("var/log/pods/other_x_{}/c/0.log", "0".repeat(32)),
        "",
    );
    r.put(
        &format!("var/log/containers/report-29_batch_worker-{ID}.log"),
        "",
    );
    let id = note(
        &r.containers(),
        &format!("/kubepods/besteffort/pod{UID}/{ID}"),
    );
    assert_eq!(id.container.as_ref().unwrap().runtime, Runtime::Containerd);
    assert_eq!(
        id.k8s,
        Some(K8sInfo {
            namespace: Some("batch".into()),
            pod: Some("report-29".into()),
            pod_uid: Some(UID.into()),
            container: Some("worker".into()),
            node: "node-7".into(),
        })
    );
}

#[test]
fn what_was_seen_survives_the_files_going() {
    let r = Root::new("gone");
    let list = "var/lib/containers/storage/overlay-containers/containers.json";
    r.put(
        list,
        &format!(r#"[{{"id":"{ID}","names":["short-lived"],"metadata":"{{}}"}}]"#),
    );
    let c = r.containers();
    let path = format!("/libpod_parent/libpod-{ID}");
    assert!(c.note(&path).is_some());
    fs::remove_file(r.0.join(list)).unwrap();
    let again = note(&c, &path);
    assert_eq!(
        again.container.unwrap().name.as_deref(),
        Some("short-lived")
    );
}

#[test]
fn bad_files_give_the_id_alone() {
    let r = Root::new("bad");
    r.put(
        "var/lib/containers/storage/overlay-containers/containers.json",
        "{not json",
    );
    r.put(
        &format!("var/lib/containers/storage/overlay-containers/{ID}/userdata/config.json"),
        r#"{"annotations":{"io.kubernetes.pod.name":12,"io.kubernetes.container.name":["x"]}}"#,
    );
    let id = note(
        &r.containers(),
        &format!("/machine.slice/libpod-{ID}.scope"),
    );
    assert_eq!(
        id.container,
        Some(ContainerInfo {
            id: ID.into(),
            runtime: Runtime::Podman,
            name: None,
            image: None
        })
    );
    // Not a container, not a pod: nothing to say.
    assert!(r.containers().note("/user.slice/session-2.scope").is_none());
}

#[test]
fn only_hex_ids_become_paths() {
    let r = Root::new("paths");
    r.put("etc/config.v2.json", r#"{"Name":"/evil"}"#);
    let c = r.containers();
    // A cgroup anyone with a delegated subtree could name is never a path component.
    assert!(c.note("/docker-...scope").is_none());
    assert!(c.note("/docker-..").is_none());
    let id = note(&c, "/system.slice/docker-x.y.scope")
        .container
        .unwrap();
    assert_eq!((id.id.as_str(), id.name), ("x.y", None));
}

#[test]
fn the_table_is_bounded() {
    let r = Root::new("bounded");
    let c = r.containers();
    for i in 0..REMEMBERED + 10 {
        c.note(&format!("/docker/{i:064x}"));
    }
    assert_eq!(c.lock().by_path.len(), REMEMBERED);
    assert_eq!(c.lock().order.len(), REMEMBERED);
}

#[test]
fn names_are_bounded() {
    assert_eq!(bounded(&"é".repeat(1000)).len(), NAME_MAX);
    assert_eq!(bounded("short"), "short");
}

#[test]
fn runtimes_whose_roots_moved_are_found_where_they_are_said_to_be() {
    let r = Root::new("moved");
    // k3s keeps containerd's state in /run/k3s/containerd; a storage.conf moved graphroot.
    r.put(
        &format!("run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
        r#"{"annotations":{"io.kubernetes.cri.container-name":"api",
            "io.kubernetes.cri.sandbox-name":"api-1","io.kubernetes.cri.sandbox-namespace":"k3s"}}"#,
    );
    r.put(
        "data/storage/overlay-containers/containers.json",
        &format!(
            r#"[{{"id":"{}","names":["moved-podman"]}}]"#,
            "d".repeat(64)
        ),
    );
    r.put(&format!("logs/pods/batch_job-1_{UID}/worker/0.log"), "");
    let moved = Sources {
        containers_storage: vec!["/data/storage".into()],
        containerd_state: "/run/k3s/containerd".into(),
        pod_logs: "/logs/pods".into(),
        ..Sources::default()
    };
    let path = format!("/kubepods/besteffort/pod{UID}/{ID}");
    let k8s = note(&r.containers_with(moved.clone()), &path).k8s.unwrap();
    assert_eq!(
        (
            k8s.namespace.as_deref(),
            k8s.pod.as_deref(),
            k8s.container.as_deref()
        ),
        (Some("k3s"), Some("api-1"), Some("api"))
    );
    // Not at the defaults.
    assert_eq!(note(&r.containers(), &path).k8s.unwrap().pod, None);
    let podman = note(
        &r.containers_with(moved.clone()),
        &format!("/libpod_parent/libpod-{}", "d".repeat(64)),
    );
    assert_eq!(
        podman.container.unwrap().name.as_deref(),
        Some("moved-podman")
    );
    // A pod without a bundle: names from the moved log tree.
    let other = format!("/kubepods/burstable/pod{UID}/{}", "e".repeat(64));
    let k8s = note(&r.containers_with(moved), &other).k8s.unwrap();
    assert_eq!(
        (k8s.namespace.as_deref(), k8s.pod.as_deref()),
        (Some("batch"), Some("job-1"))
    );
}
