//! Finds the Go binaries processes run and attaches the Go runtime probes to each binary once.
//!
//! Binaries are keyed by file identity (the kernel's device number and inode), never by path:
//! the same path in two containers is two binaries, and one binary run by a thousand processes
//! is probed once. A binary is opened through `/proc/<pid>/exe`, which reaches into containers
//! and survives the file's deletion; a non-Go binary costs one look at its section table.
use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result};
use object::{Object, ObjectSection};

use super::Probe;
use crate::gobin::{self, GoBinary};

/// (device as the kernel encodes it, inode).
pub type FileId = (u64, u64);

#[derive(Default)]
pub struct GoProber {
    seen: HashMap<FileId, Option<Arc<GoBinary>>>,
}

/// The kernel's `MKDEV(major, minor)` from a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let (major, minor) = (libc::major(st_dev) as u64, libc::minor(st_dev) as u64);
    (major << 20) | minor
}

impl GoProber {
    /// The Go binary `pid` runs, probing it first if it is new. `id` is the identity the
    /// kernel saw at exec; `path` is where to look when the process is already gone.
    pub fn probe(
        &mut self,
        probe: &mut Probe,
        pid: u32,
        id: Option<FileId>,
        path: &str,
    ) -> Option<Arc<GoBinary>> {
        if let Some(hit) = id.and_then(|id| self.seen.get(&id)) {
            return hit.clone();
        }
        // Gone with nothing left to open: try again on the binary's next exec.
        let (file, target) = open(pid, path)?;
        let md = file.metadata().ok()?;
        let found = (kernel_dev(md.dev()), md.ino());
        if id.is_some_and(|id| id != found) {
            return None; // a different file by now (replaced, or pid reused)
        }
        if let Some(hit) = self.seen.get(&found) {
            return hit.clone();
        }
        let t0 = Instant::now();
        let result = match inspect(file, &target, probe) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("crashwatch: not probing {}: {e:#}", target.display());
                None
            }
        };
        if let Some(g) = &result {
            eprintln!(
                "crashwatch: probing Go binary {path} ({}, {} uprobes{}) in {} ms",
                g.version,
                g.probes.len(),
                if g.from_pclntab {
                    ", stripped: offsets from .gopclntab"
                } else {
                    ""
                },
                t0.elapsed().as_millis()
            );
        }
        self.seen.insert(found, result.clone());
        result
    }

    pub fn binaries(&self) -> usize {
        self.seen.values().filter(|g| g.is_some()).count()
    }
}

/// Opens the running binary: through /proc while the process lives, else by path.
fn open(pid: u32, path: &str) -> Option<(File, PathBuf)> {
    let proc_exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if let Ok(f) = File::open(&proc_exe) {
        return Some((f, proc_exe));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return File::open(p).ok().map(|f| (f, p.to_path_buf()));
    }
    None
}

/// One quick look for Go's sections; then the full read and the attach for Go binaries.
fn inspect(file: File, target: &Path, probe: &mut Probe) -> Result<Option<Arc<GoBinary>>> {
    let is_go = {
        let cache = object::read::ReadCache::new(file.try_clone()?);
        match object::File::parse(&cache) {
            Ok(obj) => obj.sections().any(|s| {
                matches!(
                    s.name(),
                    Ok(".gopclntab" | ".data.rel.ro.gopclntab" | ".go.buildinfo")
                )
            }),
            Err(_) => false, // scripts, non-ELF: nothing to probe
        }
    };
    if !is_go {
        return Ok(None);
    }
    // Read and attach through the descriptor we hold: the process may be gone by now (and
    // its /proc/<pid>/exe with it), the file is not.
    let mut bytes = Vec::new();
    // The section check moved the shared offset.
    (&file)
        .seek(SeekFrom::Start(0))
        .and_then(|_| (&file).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", target.display()))?;
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let Some(g) = gobin::parse(&bytes, Some(file))? else {
        return Ok(None);
    };
    probe
        .attach_go(&fd_path, &g.probes)
        .with_context(|| format!("probing {}", target.display()))?;
    Ok(Some(Arc::new(g)))
}
