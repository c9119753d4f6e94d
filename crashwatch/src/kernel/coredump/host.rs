//! The core handler from inside a container (the DaemonSet): what the kernel needs to find
//! in the host's view, and writing `core_pattern` as the host.
//!
//! The kernel resolves a coredump socket's path from init's root, runs a pipe helper by its
//! path on the host, and accepts an `@` pattern only from a writer in the initial mount
//! namespace (fs/coredump.c, `check_coredump_socket`). An agent in a container (host PID
//! namespace, privileged) therefore
//! - checks that its socket, and the helper it names, are the very files the host sees at
//!   those paths (a hostPath volume mounted at the same path, as the chart does), looking
//!   through the root of `kthreadd` (`/proc/2/root`), never guessing;
//! - names a copy of its own binary in the socket's directory as the pipe helper when its
//!   executable is not the host's file at that path (the kernel would otherwise run
//!   whatever the host has there, as root);
//! - writes `core_pattern` from a thread of its own that joined init's mount namespace
//!   (`unshare(CLONE_FS)`, then `setns`: only that thread moves).
//!
//! The host's view is taken from PID 2, `kthreadd`, not PID 1: a kernel thread has the very
//! namespaces and root the kernel checks against (`init_task`'s), whatever PID 1 did to its
//! own, and some sandboxes refuse any look into PID 1.
//!
//! On the host itself (init's mount namespace) all of this is a no-op.
use std::{
    io::Write,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

const KTHREADD: &str = "/proc/2";

/// Whether the agent runs in a mount namespace other than init's (a container). Without the
/// host's PID namespace there is no `kthreadd` to look through: then this says "no" and the
/// kernel's own check refuses a socket pattern, which the caller says.
pub fn outside() -> bool {
    let ns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let kthreadd = std::fs::read_to_string(format!("{KTHREADD}/comm"))
        .is_ok_and(|c| c.trim_end() == "kthreadd");
    match (ns("/proc/self/ns/mnt"), ns(&format!("{KTHREADD}/ns/mnt"))) {
        (Ok(a), Ok(b)) => kthreadd && a != b,
        _ => false,
    }
}

/// `path` in the host's view (through init's root).
fn on_host(path: &Path) -> PathBuf {
    Path::new(KTHREADD)
        .join("root")
        .join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether `path` is the same file in the agent's view and the host's.
fn same_on_host(path: &Path) -> bool {
    let id = |p: &Path| std::fs::symlink_metadata(p).map(|m| (m.dev(), m.ino()));
    matches!((id(path), id(&on_host(path))), (Ok(a), Ok(b)) if a == b)
}

/// Refuses a socket the kernel would not find: `socket` (bound by the agent) must be the
/// host's file at that path.
pub fn check_socket(socket: &Path) -> Result<()> {
    if !outside() || same_on_host(socket) {
        return Ok(());
    }
    let dir = socket.parent().unwrap_or(Path::new("/"));
    bail!(
        "the kernel looks for the dump socket {} in the host's mount namespace, and the agent's is not there: mount the host's {} at the same path in the container (a hostPath volume; the chart's dumps.enabled does)",
        socket.display(),
        dir.display()
    )
}

/// The pipe helper's path on the host: this binary where the host sees it at the same path,
/// else a copy of it beside `socket` (whose directory is the host's, [`check_socket`]).
pub fn helper_exe(socket: &Path) -> Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe").context("reading /proc/self/exe")?;
    if !outside() || same_on_host(&exe) {
        return Ok(exe);
    }
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let copy = dir.join("crashwatch");
    let part = dir.join(".crashwatch.part");
    let copied = (|| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut from = std::fs::File::open("/proc/self/exe")?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&part)?;
        std::io::copy(&mut from, &mut to)?;
        to.flush()?;
        to.sync_all()?;
        std::fs::rename(&part, &copy)
    })();
    copied.with_context(|| {
        format!(
            "copying the agent to {} for the pipe helper",
            copy.display()
        )
    })?;
    if !same_on_host(&copy) {
        bail!(
            "the pipe helper {} is not the host's file at that path",
            copy.display()
        );
    }
    Ok(copy)
}

/// Writes `pattern` to the sysctl file `file`; when the agent is outside init's mount
/// namespace, as a thread that joined it, through the host's `/proc` (a container's
/// `/proc/sys` is read-only).
pub fn write_pattern(file: &str, pattern: &str) -> Result<()> {
    let write = |p: &str| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
        f.write_all(p.as_bytes())
    };
    if !outside() {
        return write(pattern).with_context(|| format!("writing {file}"));
    }
    let ns = std::fs::File::open(format!("{KTHREADD}/ns/mnt"))
        .context("opening init's mount namespace")?;
    let joined = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("core-pattern".into())
            .spawn_scoped(scope, || -> std::io::Result<()> {
                // SAFETY: unshare and setns with these flags change only this thread's
                // filesystem attributes and mount namespace; the thread ends after the write.
                unsafe {
                    if libc::unshare(libc::CLONE_FS) != 0
                        || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                write(pattern)
            })
            .map(|t| t.join())
    })
    .context("starting a thread to write core_pattern")?;
    match joined {
        Ok(r) => r.with_context(|| {
            format!("writing {file} from the host's mount namespace (the pod needs CAP_SYS_ADMIN and CAP_SYS_CHROOT: the chart's dumps.enabled adds them)")
        }),
        Err(_) => bail!("the thread writing {file} panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_looked_up_through_inits_root() {
        assert_eq!(
            on_host(Path::new("/run/x.sock")),
            Path::new("/proc/2/root/run/x.sock")
        );
        // In init's mount namespace (a host, a VM) every path is the host's.
        if !outside() {
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            assert!(same_on_host(&exe));
            check_socket(Path::new("/nonexistent/socket")).unwrap();
            assert_eq!(helper_exe(Path::new("/run/x.sock")).unwrap(), exe);
        }
    }
}
