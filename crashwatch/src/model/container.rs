//! Where a process ran, as reports say it: its container (`container`) and its Kubernetes pod
//! (`k8s`). The enrich stage finds them from the cgroup path and the runtimes' files.
use serde::Serialize;

/// The container runtime that named the cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

/// `container` in a report.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub runtime: Runtime,
    pub name: Option<String>,
    pub image: Option<String>,
}

/// `k8s` in a report.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct K8sInfo {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub node: String,
}

/// The workload a pod belongs to, from its name as the controllers make it: a Deployment's
/// pod is `NAME-<pod-template-hash>-<5>`, a DaemonSet's and a Job's `NAME-<5>`, a
/// StatefulSet's `NAME-<ordinal>`; a name of no such shape is its own workload (a bare pod).
/// The generated parts use Kubernetes' safe alphabet (`bcdfghjklmnpqrstvwxz2456789`), so a
/// word such as `-redis` is not taken for one.
pub fn workload(pod: &str) -> &str {
    fn generated(s: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
        lengths.contains(&s.len())
            && s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    }
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if rest.is_empty() {
        return pod;
    }
    // A Deployment's first: its random suffix may be digits alone, which would read as a
    // StatefulSet's ordinal.
    if generated(last, 5..=5) {
        if let Some((name, hash)) = rest.rsplit_once('-') {
            if !name.is_empty() && generated(hash, 6..=10) {
                return name;
            }
        }
        return rest;
    }
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return rest;
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::workload;

    #[test]
    fn a_pods_workload_is_its_controllers_name() {
        for (pod, w) in [
            ("api-7c9f8d6b5-x2k4q", "api"),
            // A random suffix of safe digits only is still a Deployment's (found by
            // `cargo xtask fleet-sim`: 1 pod in ~800 read as a StatefulSet's).
            ("checkout-6z4bbbbbb-24567", "checkout"),
            ("node-exporter-24567", "node-exporter"),
            ("checkout-api-5d4f7b8c9d-7xkzp", "checkout-api"),
            ("node-exporter-8xk2z", "node-exporter"),
            ("postgres-0", "postgres"),
            ("web-12", "web"),
            ("migrate-db-2q7wf", "migrate-db"),
            ("my-redis", "my-redis"),
            ("standalone", "standalone"),
            ("-0", "-0"),
        ] {
            assert_eq!(workload(pod), w, "{pod}");
        }
    }
}
