//! The root directories of the views other than the agent's own (containers), held open while
//! a process runs in them, so that a container's libraries are still named after its process
//! is gone.
//!
//! A file is never opened at a path from another process's view as it stands in the agent's
//! view. While the process lives, its files are opened through it (`/proc/<pid>/root/...`, see
//! `maps`); once it is gone, that way is closed, and the only handle left on its view is one
//! taken earlier. So at exec the agent notes each process's root (one `stat` of
//! `/proc/<pid>/root`), and the first time it meets a root other than its own it keeps an
//! `O_PATH` handle on it (opens nothing; through `/proc/<pid>/root`, so the directory is the
//! process's). Paths the kernel read from the dead process's memory are then resolved under
//! that handle with `openat2(RESOLVE_IN_ROOT)`, which keeps `..` and absolute symlinks inside
//! the container, and still opened only if they are regular files (see `elf::id`).
//!
//! A process can be gone before its exec record is read (one that crashes on its first
//! instruction): then its root cannot be stat'ed, and the kernel's record names its mount
//! namespace instead. A root already met in that namespace is used, else that of its parent
//! or of pid 1 when either is in that namespace still (a view is shared by everything in
//! one namespace unless a process chroots; the executable's identity check catches that).
//! This matters most when the agent itself runs in a container: every host process is then
//! in a view other than the agent's.
//!
//! Held roots are bounded ([`ROOTS_MAX`]) and let go once no process has run in them for
//! [`RELEASE_AFTER`] (a sweep of `/proc` every few seconds). A handle pins the container's root
//! mount the way an open file inside it would, nothing more: the runtime can still unmount and
//! remove it.
use crate::model::process::RootKey;
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Roots held at once; past it, new containers' libraries are not named once their process
/// is gone (counted).
pub const ROOTS_MAX: usize = 1024;
/// How long a root is kept after the last process seen in it.
pub const RELEASE_AFTER: Duration = Duration::from_secs(60);

struct Held {
    dir: Arc<File>,
    last_seen: Instant,
}

#[derive(Default)]
struct Inner {
    held: HashMap<RootKey, Held>,
    /// Mount namespace → the root met in it, for held roots only (noted when the root is
    /// first held).
    by_ns: HashMap<u32, RootKey>,
    /// Roots not held because [`ROOTS_MAX`] were.
    over_limit: u64,
}

/// Shared by the record loop (which notes roots at exec) and the report thread (which opens
/// files under them).
pub struct Roots {
    /// The agent's own root: processes there need nothing held.
    ours: Option<RootKey>,
    /// The agent's own mount namespace.
    our_ns: Option<u32>,
    /// Fault injection for the tests (`CRASHWATCH_FAILPOINT_EXEC_READ_LATE`): every process
    /// is taken as gone when its exec is read, as a fast crasher's is.
    late: bool,
    inner: Mutex<Inner>,
}

/// What `/proc/<pid>/root` showed.
enum Seen {
    Ours,
    Other(RootKey),
    Gone,
}

/// The mount namespace of `pid` (the inode number of its `ns/mnt`).
fn ns_of(pid: &str) -> Option<u32> {
    let md = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok()?;
    u32::try_from(md.ino()).ok()
}

fn key_of(md: &std::fs::Metadata) -> RootKey {
    (md.dev(), md.ino())
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            ours: std::fs::metadata("/").ok().map(|m| key_of(&m)),
            our_ns: ns_of("self"),
            late: std::env::var_os("CRASHWATCH_FAILPOINT_EXEC_READ_LATE").is_some(),
            inner: Mutex::default(),
        }
    }
}

impl Roots {
    /// Process `pid`'s root when it is not the agent's own, held from now on.
    pub fn note(&self, pid: u32) -> Option<RootKey> {
        match self.look(pid) {
            Seen::Other(key) => Some(key),
            Seen::Ours | Seen::Gone => None,
        }
    }

    /// [`Roots::note`] for a process the kernel saw in mount namespace `mnt_ns` (0: unknown)
    /// with parent `ppid`: when the process is gone already, the root of that namespace.
    pub fn note_exec(&self, pid: u32, ppid: u32, mnt_ns: u32) -> Option<RootKey> {
        let seen = if self.late {
            Seen::Gone
        } else {
            self.look(pid)
        };
        match seen {
            Seen::Other(key) => return Some(key),
            Seen::Ours => return None,
            Seen::Gone => {}
        }
        if mnt_ns == 0 || Some(mnt_ns) == self.our_ns {
            return None;
        }
        if let Some(&key) = self.inner.lock().unwrap().by_ns.get(&mnt_ns) {
            return Some(key);
        }
        for other in [ppid, 1] {
            if other != 0 && ns_of(&other.to_string()) == Some(mnt_ns) {
                match self.look(other) {
                    Seen::Other(key) => return Some(key),
                    Seen::Ours => return None,
                    Seen::Gone => {}
                }
            }
        }
        None
    }

    fn look(&self, pid: u32) -> Seen {
        let path = format!("/proc/{pid}/root");
        let Some(key) = std::fs::metadata(&path).ok().map(|m| key_of(&m)) else {
            return Seen::Gone;
        };
        if Some(key) == self.ours {
            return Seen::Ours;
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(h) = inner.held.get_mut(&key) {
            h.last_seen = Instant::now();
            return Seen::Other(key);
        }
        if inner.held.len() >= ROOTS_MAX {
            inner.over_limit += 1;
            return Seen::Other(key);
        }
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path);
        // The pid may have exited and been reused between the stat and the open.
        match dir {
            Ok(dir) if dir.metadata().ok().map(|m| key_of(&m)) == Some(key) => {
                inner.held.insert(
                    key,
                    Held {
                        dir: Arc::new(dir),
                        last_seen: Instant::now(),
                    },
                );
                // Its namespace, read once per root held (not per exec): at most one entry
                // per held root.
                if let Some(ns) = ns_of(&pid.to_string()) {
                    inner.by_ns.insert(ns, key);
                }
                Seen::Other(key)
            }
            Ok(_) => Seen::Other(key),
            Err(_) => Seen::Gone,
        }
    }

    pub fn get(&self, key: RootKey) -> Option<Arc<File>> {
        let inner = self.inner.lock().unwrap();
        inner.held.get(&key).map(|h| h.dir.clone())
    }

    /// Lets go of roots no process has run in for [`RELEASE_AFTER`]. Walks `/proc`.
    pub fn sweep(&self) {
        if self.inner.lock().unwrap().held.is_empty() {
            return;
        }
        let live: HashSet<RootKey> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .filter_map(|e| std::fs::metadata(e.path().join("root")).ok())
            .map(|m| key_of(&m))
            .collect();
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        inner.held.retain(|k, h| {
            if live.contains(k) {
                h.last_seen = now;
            }
            now.duration_since(h.last_seen) < RELEASE_AFTER
        });
        let Inner { held, by_ns, .. } = &mut *inner;
        by_ns.retain(|_, k| held.contains_key(k));
    }

    /// (roots held now, roots left unheld over [`ROOTS_MAX`] so far).
    pub fn stats(&self) -> (usize, u64) {
        let inner = self.inner.lock().unwrap();
        (inner.held.len(), inner.over_limit)
    }
}

/// The regular file at `path` (absolute, in the view `root` is the root of), resolved without
/// leaving that view.
pub fn open_in(root: &File, path: &str) -> Option<File> {
    let rel = std::ffi::CString::new(path.trim_start_matches('/')).ok()?;
    // SAFETY: open_how is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid descriptor, NUL-terminated path, and `how` with its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor the kernel just returned, owned by nothing else.
    let handle = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    crate::read::elf::id::reopen_regular(&handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `..` and absolute symlinks stay inside the root; device nodes are never opened.
    #[test]
    fn paths_resolve_inside_the_root_only() {
        let dir = std::env::temp_dir().join(format!("cw-roots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib/libc.so.6"), b"inside").unwrap();
        std::os::unix::fs::symlink("/lib/libc.so.6", dir.join("lib/link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("lib/escape")).unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.join("lib/dev")).unwrap();
        let root = File::open(&dir).unwrap();
        let read = |p: &str| {
            open_in(&root, p).map(|mut f| {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut f, &mut s).unwrap();
                s
            })
        };
        assert_eq!(read("/lib/libc.so.6").as_deref(), Some("inside"));
        assert_eq!(read("/lib/link").as_deref(), Some("inside"));
        assert_eq!(read("/../../lib/libc.so.6").as_deref(), Some("inside"));
        assert_eq!(
            read("/lib/escape"),
            None,
            "resolved inside: no /etc/hostname there"
        );
        assert_eq!(read("/lib/dev"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An agent in a container sees host processes in a view other than its own; one that
    /// is gone before its exec is read is placed through its parent in the same namespace.
    #[test]
    fn a_process_gone_before_its_exec_is_read_gets_its_namespaces_root() {
        let roots = Roots {
            // As if the agent's own root were elsewhere (a container's).
            ours: Some((u64::MAX, u64::MAX)),
            our_ns: None,
            late: false,
            inner: Mutex::default(),
        };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(roots.note(pid), None, "gone: nothing to stat");
        let ns = ns_of("self").unwrap();
        let me = std::process::id();
        assert_eq!(roots.note_exec(pid, me, ns ^ 1), None, "another namespace");
        let ours = key_of(&std::fs::metadata("/").unwrap());
        assert_eq!(roots.note_exec(pid, me, ns), Some(ours));
        assert!(roots.get(ours).is_some(), "held");
        // Met once, the namespace names its root without asking the parent again.
        assert_eq!(roots.note_exec(pid, 0, ns), Some(ours));
    }

    #[test]
    fn the_agents_own_root_is_not_held() {
        let roots = Roots::default();
        assert_eq!(roots.note(std::process::id()), None);
        assert_eq!(roots.stats(), (0, 0));
    }
}
