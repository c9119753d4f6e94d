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
