//! Which container and which Kubernetes pod a cgroup path names: a pure function of the
//! path, shared by the agent and anything that reads paths after the fact.
//!
//! Own code: no crate knows the runtimes' naming. Every runtime names the container's cgroup
//! after the container id, in a handful of shapes that depend on the runtime and on its
//! cgroup driver (systemd or cgroupfs); the same shapes appear under cgroup v1, v2 and hybrid
//! hierarchies, only the path's ancestors differ:
//!
//! | runtime | systemd driver | cgroupfs driver |
//! |---|---|---|
//! | docker | `…/docker-<id>.scope` | `/docker/<id>` |
//! | containerd (CRI) | `…/cri-containerd-<id>.scope`, `…:cri-containerd:<id>` | `/kubepods/<qos>/pod<uid>/<id>` |
//! | CRI-O | `…/crio-<id>.scope`, `…:crio:<id>` | `…/crio-<id>` |
//! | podman | `…/libpod-<id>.scope`, `…/libpod-<id>.scope/container` | `/libpod_parent/libpod-<id>` |
//!
//! The innermost match wins (a container nested in another is the one that ran). The
//! runtimes' own helper processes (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not the
//! container. A pod's uid comes from its `pod<uid>` component, where the systemd driver
//! writes the uid's dashes as underscores (`kubepods-besteffort-pod<uid>.slice`).
pub use crate::model::container::Runtime;

/// What a cgroup path says about where a process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The container id and the runtime that named it.
    pub container: Option<(String, Runtime)>,
    /// The Kubernetes pod's uid, with dashes.
    pub pod_uid: Option<String>,
}

/// Prefixes of a component that name a container (`<prefix><id>`, `.scope` stripped).
const PREFIXED: [(&str, Runtime); 4] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("libpod-", Runtime::Podman),
];
/// The systemd driver's names under cgroupfs: `<slice>:<prefix>:<id>`.
const COLON: [(&str, Runtime); 3] = [
    ("cri-containerd", Runtime::Containerd),
    ("crio", Runtime::CriO),
    ("docker", Runtime::Docker),
];

/// Reads a cgroup path (`/kubepods.slice/…/cri-containerd-<id>.scope`).
pub fn placement(path: &str) -> Placement {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut out = Placement::default();
    for (i, part) in parts.iter().enumerate().rev() {
        if out.container.is_none() {
            let parent = i.checked_sub(1).map(|p| parts[p]);
            out.container = container(part, parent);
        }
        if out.pod_uid.is_none() {
            out.pod_uid = pod_uid(part);
        }
    }
    // A pod uid without a container: the pod's own cgroup (its pause process, or a
    // process the kubelet put there); a container found outside any pod is still one.
    out
}

fn container(part: &str, parent: Option<&str>) -> Option<(String, Runtime)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if let Some((_, rest)) = name.split_once(':') {
        let (prefix, id) = rest.split_once(':')?;
        let rt = COLON.iter().find(|(p, _)| *p == prefix)?.1;
        return valid_id(id).then(|| (id.to_string(), rt));
    }
    for (prefix, rt) in PREFIXED {
        if let Some(id) = name.strip_prefix(prefix) {
            if id.starts_with("conmon-") {
                return None;
            }
            return valid_id(id).then(|| (id.to_string(), rt));
        }
    }
    // Bare ids: docker's and containerd's cgroupfs layouts.
    if is_hex_id(name) {
        let parent = parent?;
        if parent == "docker" {
            return Some((name.to_string(), Runtime::Docker));
        }
        if pod_uid(parent).is_some() {
            return Some((name.to_string(), Runtime::Containerd));
        }
    }
    None
}

/// A runtime's container id: 64 hex digits from docker, podman, CRI-O and the CRI; other
/// containerd namespaces take names, so a prefixed id may be any short plain name (never
/// `.` or `..`: only 64-hex ids are ever looked up as files, but a report should not carry
/// one either).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A 64-hex container id: the only kind ever looked up as a file.
pub fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd). A uid
/// is a UUID, or 32 hex digits for a static pod (a hash of its manifest).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let at = if name.starts_with("pod") {
        0
    } else {
        name.rfind("-pod")? + 1
    };
    let uid = name[at + 3..].replace('_', "-");
    let uuid = crate::model::hex::is_uuid(&uid);
    let hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    (uuid || hash).then(|| uid.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1d6b0c2e5a4b7d9c8e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e";
    const UID: &str = "6f0d4f2e-8a3b-4c1d-9e7f-0123456789ab";

    fn c(path: &str) -> Option<(String, Runtime)> {
        placement(path).container
    }

    #[test]
    fn each_runtime_and_driver() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            (
                format!("/system.slice/containerd.service/kubepods-burstable-pod{uid_}.slice:cri-containerd:{ID}"),
                Runtime::Containerd,
            ),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Runtime::Containerd),
            (format!("/kubepods/pod{UID}/{ID}"), Runtime::Containerd),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
                Runtime::CriO,
            ),
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), Runtime::CriO),
            (
                format!("/kubepods-burstable-pod{uid_}.slice:crio:{ID}"),
                Runtime::CriO,
            ),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
            ),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                Runtime::Podman,
            ),
        ];
        for (path, rt) in cases {
            assert_eq!(c(&path), Some((ID.to_string(), rt)), "{path}");
        }
    }

    #[test]
    fn pod_uids_with_dashes_or_underscores() {
        let uid_ = UID.replace('-', "_");
        for path in [
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
            format!("/kubepods/burstable/pod{UID}"),
        ] {
            assert_eq!(placement(&path).pod_uid.as_deref(), Some(UID), "{path}");
        }
        let static_pod = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            placement(&format!("/kubepods/pod{static_pod}/{ID}"))
                .pod_uid
                .as_deref(),
            Some(static_pod)
        );
    }

    #[test]
    fn not_containers() {
        for path in [
            "/",
            "",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/process_api/c17c708ec92445ec2a1bf3ae30db3596",
            // conmon watches the container; it is not in it.
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/kubepods.slice/crio-conmon-{ID}.scope"),
            // A bare id needs a parent that says whose it is.
            &format!("/{ID}"),
            &format!("/some/{ID}"),
            "/system.slice/docker-.scope",
            "/system.slice/docker-...scope",
            "/docker-..",
            "/x.slice:unknown:abc",
            "/podnotauid/abc",
        ] {
            assert_eq!(c(path), None, "{path}");
        }
        assert_eq!(placement("/podnotauid").pod_uid, None);
    }

    #[test]
    fn innermost_container_wins() {
        let inner = "a".repeat(64);
        let p = placement(&format!("/docker/{ID}/docker/{inner}"));
        assert_eq!(p.container, Some((inner, Runtime::Docker)));
    }

    #[test]
    fn hostile_paths_do_not_panic() {
        for path in [
            "/pod",
            "/-pod",
            "/kubepods-pod",
            ":",
            "::",
            "/a:b",
            "/a:b:",
            "/docker/",
            "/ü-podé",
            "/libpod-ü.scope",
        ] {
            let _ = placement(path);
        }
        let long = "/docker-".to_string() + &"a".repeat(10_000) + ".scope";
        assert_eq!(c(&long), None);
    }
}
