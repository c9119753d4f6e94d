//! Container and pod identity for a report: which container a process ran in (from its
//! cgroup path, [`super::cgroup`]), and its name, image and Kubernetes pod from the
//! runtime's own files on the host, with no API call (the agent must work with every
//! runtime down, and a call per crash would put a socket round trip on the report path).
//!
//! Read once per container, at the first sight of its cgroup (a process's first crash sign
//! or a sent exec, on the record loop, while the container still exists), and kept in a
//! bounded table, so a container removed before its report is built (`podman run --rm`, a
//! pod deleted right after a crash) keeps its name, image and pod.
//!
//! Sources ([`Sources`]: each root configurable), under `--host-root` (for a DaemonSet that
//! mounts the host's paths elsewhere):
//! - the OCI bundle's `config.json` annotations: containerd
//!   (`run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/`), CRI-O
//!   (`run/containers/storage/overlay-containers/<id>/userdata/`) and rootful podman
//!   (`var/lib/containers/storage/overlay-containers/<id>/userdata/`): the CRI's and the
//!   kubelet's `io.kubernetes.*` names;
//! - podman's container list (`…/overlay-containers/containers.json`: name, image name);
//! - docker's `var/lib/docker/containers/<id>/config.v2.json` (name, image);
//! - for a pod the bundle does not name, its uid from the cgroup path and the names the
//!   kubelet's log tree gives it (`var/log/pods/<namespace>_<pod>_<uid>/<container>/`,
//!   `var/log/containers/<pod>_<namespace>_<container>-<id>.log`).
//!
//! Every file is root's, but what it holds came from whoever started the container: each is
//! read only up to a size bound, only for a well-formed 64-hex id (never a path made of
//! anything else), and every string kept is bounded.
pub use crate::model::container::{ContainerInfo, K8sInfo};
use std::{
    collections::{HashMap, VecDeque},
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::Value;

use super::cgroup::{self, is_hex_id, Runtime};

/// Containers remembered; the oldest seen goes first.
const REMEMBERED: usize = 4096;
/// Bytes read of a bundle's config.json or docker's config.v2.json.
const CONFIG_MAX: u64 = 4 << 20;
/// Bytes read of podman's container list (about 1 KiB per container).
const LIST_MAX: u64 = 64 << 20;
/// Bytes kept of any one name.
const NAME_MAX: usize = 512;
/// Directory entries looked at in the kubelet's log tree.
const LOG_DIR_MAX: usize = 100_000;

/// What was found for one cgroup path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub container: Option<ContainerInfo>,
    pub k8s: Option<K8sInfo>,
}

/// Where the runtimes keep their files: absolute paths on the host, read under
/// `--host-root`. The defaults are the runtimes' own; a node that moved one
/// (containers-storage's `graphroot`/`runroot`, docker's `data-root`, containerd's `state`,
/// the kubelet's `--pod-log-dir` equivalents) says where.
#[derive(Clone, Debug)]
pub struct Sources {
    /// containers/storage roots (podman's, CRI-O's): bundles and `containers.json`.
    pub containers_storage: Vec<PathBuf>,
    /// containerd's state directory: `io.containerd.runtime.v2.task/<namespace>/<id>/`.
    pub containerd_state: PathBuf,
    /// docker's data root: `containers/<id>/config.v2.json`.
    pub docker_root: PathBuf,
    /// The kubelet's pod log tree and its per-container links.
    pub pod_logs: PathBuf,
    pub container_logs: PathBuf,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            containers_storage: vec![
                "/var/lib/containers/storage".into(),
                "/run/containers/storage".into(),
            ],
            containerd_state: "/run/containerd".into(),
            docker_root: "/var/lib/docker".into(),
            pod_logs: "/var/log/pods".into(),
            container_logs: "/var/log/containers".into(),
        }
    }
}

/// The table of containers seen, shared by the record loop (which notes) and the report
/// thread (which reads).
pub struct Containers {
    host_root: PathBuf,
    sources: Sources,
    node: String,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_path: HashMap<String, Arc<Identity>>,
    order: VecDeque<String>,
}

impl Containers {
    pub fn new(host_root: PathBuf, sources: Sources, node: String) -> Containers {
        Containers {
            host_root,
            sources,
            node,
            seen: Mutex::default(),
        }
    }

    /// The identity of a cgroup path, read from the host the first time the path is seen.
    pub fn note(&self, cgroup_path: &str) -> Option<Arc<Identity>> {
        let place = cgroup::placement(cgroup_path);
        if place.container.is_none() && place.pod_uid.is_none() {
            return None;
        }
        if let Some(found) = self.lock().by_path.get(cgroup_path) {
            return Some(found.clone());
        }
        let found = Arc::new(self.read(&place));
        let mut seen = self.lock();
        if seen.by_path.len() >= REMEMBERED {
            if let Some(old) = seen.order.pop_front() {
                seen.by_path.remove(&old);
            }
        }
        seen.order.push_back(cgroup_path.to_string());
        seen.by_path.insert(cgroup_path.to_string(), found.clone());
        Some(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, place: &cgroup::Placement) -> Identity {
        let mut k8s = K8sInfo {
            pod_uid: place.pod_uid.clone(),
            node: self.node.clone(),
            ..K8sInfo::default()
        };
        let container = place.container.as_ref().map(|(id, runtime)| {
            let mut c = ContainerInfo {
                id: id.clone(),
                runtime: *runtime,
                name: None,
                image: None,
            };
            if is_hex_id(id) {
                self.read_bundle(&mut c, &mut k8s);
                if c.name.is_none() || c.image.is_none() {
                    match c.runtime {
                        Runtime::Podman | Runtime::CriO => self.read_podman_list(&mut c),
                        Runtime::Docker => self.read_docker(&mut c),
                        Runtime::Containerd => {}
                    }
                }
            }
            c
        });
        if let (Some(uid), true) = (&k8s.pod_uid, k8s.pod.is_none()) {
            self.read_pod_logs(uid.clone(), container.as_ref(), &mut k8s);
        }
        let in_pod = k8s.pod.is_some() || k8s.pod_uid.is_some() || k8s.namespace.is_some();
        Identity {
            container,
            k8s: in_pod.then_some(k8s),
        }
    }

    /// Host path `base`/`rel` under the host root.
    fn path(&self, base: &Path, rel: &str) -> PathBuf {
        let base = base.strip_prefix("/").unwrap_or(base);
        let p = self.host_root.join(base);
        if rel.is_empty() {
            p
        } else {
            p.join(rel)
        }
    }

    /// The OCI bundle's annotations, wherever a runtime keeps it.
    fn read_bundle(&self, c: &mut ContainerInfo, k8s: &mut K8sInfo) {
        let id = &c.id;
        let src = &self.sources;
        let mut places: Vec<PathBuf> = src
            .containers_storage
            .iter()
            .map(|root| {
                self.path(
                    root,
                    &format!("overlay-containers/{id}/userdata/config.json"),
                )
            })
            .collect();
        for ns in ["k8s.io", "moby", "default"] {
            places.push(self.path(
                &src.containerd_state,
                &format!("io.containerd.runtime.v2.task/{ns}/{id}/config.json"),
            ));
        }
        let Some(config) = places.iter().find_map(|p| read_json(p, CONFIG_MAX)) else {
            return;
        };
        let Some(a) = config.get("annotations").and_then(Value::as_object) else {
            return;
        };
        let get = |keys: &[&str]| keys.iter().find_map(|k| a.get(*k)?.as_str().map(bounded));
        c.name = get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ])
        .or(c.name.take());
        c.image = get(&[
            "io.kubernetes.cri.image-name",
            "io.kubernetes.cri-o.ImageName",
            "io.kubernetes.cri-o.Image",
        ])
        .or(c.image.take());
        k8s.pod = get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]);
        k8s.namespace = get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]);
        if let Some(uid) = get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]) {
            k8s.pod_uid = Some(uid);
        }
        k8s.container = get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]);
    }

    /// containers/storage's list (podman; CRI-O shares the library): name and image name.
    fn read_podman_list(&self, c: &mut ContainerInfo) {
        for root in &self.sources.containers_storage {
            let list = self.path(root, "overlay-containers/containers.json");
            let Some(Value::Array(all)) = read_json(&list, LIST_MAX) else {
                continue;
            };
            let Some(me) = all
                .iter()
                .find(|e| e.get("id").and_then(Value::as_str) == Some(c.id.as_str()))
            else {
                continue;
            };
            let meta: Option<Value> = me
                .get("metadata")
                .and_then(Value::as_str)
                .and_then(|m| serde_json::from_str(m).ok());
            let name = me
                .get("names")
                .and_then(|n| n.get(0))
                .and_then(Value::as_str)
                .or_else(|| meta.as_ref()?.get("name")?.as_str());
            c.name = c.name.take().or(name.map(bounded));
            let image = meta.as_ref().and_then(|m| m.get("image-name")?.as_str());
            c.image = c.image.take().or(image.map(bounded));
            return;
        }
    }

    fn read_docker(&self, c: &mut ContainerInfo) {
        let p = self.path(
            &self.sources.docker_root,
            &format!("containers/{}/config.v2.json", c.id),
        );
        let Some(v) = read_json(&p, CONFIG_MAX) else {
            return;
        };
        let name = v.get("Name").and_then(Value::as_str);
        c.name = c
            .name
            .take()
            .or(name.map(|n| bounded(n.trim_start_matches('/'))));
        let image = v
            .get("Config")
            .and_then(|c| c.get("Image"))
            .and_then(Value::as_str);
        c.image = c.image.take().or(image.map(bounded));
    }

    /// The kubelet's log tree: `var/log/pods/<namespace>_<pod>_<uid>/<container>/`, and
    /// `var/log/containers/<pod>_<namespace>_<container>-<id>.log` for which container.
    fn read_pod_logs(&self, uid: String, c: Option<&ContainerInfo>, k8s: &mut K8sInfo) {
        let Ok(dir) = std::fs::read_dir(self.path(&self.sources.pod_logs, "")) else {
            return;
        };
        let suffix = format!("_{uid}");
        let Some(name) = dir
            .take(LOG_DIR_MAX)
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.ends_with(&suffix))
        else {
            return;
        };
        let Some((ns, pod)) = name[..name.len() - suffix.len()].split_once('_') else {
            return;
        };
        k8s.namespace = Some(bounded(ns));
        k8s.pod = Some(bounded(pod));
        let Some(c) = c else {
            return;
        };
        // Names may hold '-' but not '_': the container name runs from the second '_' to
        // the '-' before the id.
        let want = format!("{pod}_{ns}_");
        let tail = format!("-{}.log", c.id);
        if let Ok(dir) = std::fs::read_dir(self.path(&self.sources.container_logs, "")) {
            let found = dir
                .take(LOG_DIR_MAX)
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .find_map(|n| {
                    let rest = n.strip_prefix(&want)?.strip_suffix(&tail)?;
                    (!rest.is_empty()).then(|| rest.to_string())
                });
            if let Some(name) = found {
                k8s.container = Some(bounded(&name));
            }
        }
    }
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(NAME_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A JSON file of at most `max` bytes; None when missing, larger or malformed.
fn read_json(p: &Path, max: u64) -> Option<Value> {
    let f = std::fs::File::open(p).ok()?;
    if f.metadata().ok()?.len() > max {
        tracing::info!(
            "not reading {}: larger than {max} bytes",
            crate::util::escape::Esc(&p.display().to_string())
        );
        return None;
    }
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

/// This node's name: `NODE_NAME` (the DaemonSet sets it from the downward API), else the
/// host name.
pub fn node_name(host: &str) -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .map(|n| bounded(&n))
        .unwrap_or_else(|| host.to_string())
}

#[cfg(test)]
mod tests;
