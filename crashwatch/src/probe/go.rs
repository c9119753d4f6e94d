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
    sync::{mpsc, Mutex},
    time::Instant,
};

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result};
use object::{Object, ObjectSection};

use super::Probe;
use crate::gobin::{self, GoBinary};

/// (device as the kernel encodes it, inode).
pub type FileId = (u64, u64);

/// What is known about a binary.
enum State {
    /// Asked for; the prober thread has not finished with it.
    Pending,
    Go(Arc<GoBinary>),
    NotGo,
}

type Known = Arc<Mutex<HashMap<FileId, State>>>;

struct Request {
    pid: u32,
    id: FileId,
    path: String,
}

/// The record loop's side: asks for new binaries to be probed and finds probed ones, never
/// waiting. Attaching uprobes takes milliseconds, and seconds on a loaded host (the kernel
/// waits for RCU grace periods), so it happens on the prober thread, which owns the programs.
pub struct GoProbes {
    known: Known,
    tx: mpsc::Sender<Request>,
}

/// The kernel's `MKDEV(major, minor)` from a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let (major, minor) = (libc::major(st_dev) as u64, libc::minor(st_dev) as u64);
    (major << 20) | minor
}

/// The identity of the binary `pid` runs now.
pub fn file_id_of(pid: u32) -> Option<FileId> {
    let md = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((kernel_dev(md.dev()), md.ino()))
}

impl GoProbes {
    /// Starts the prober thread; it owns `probe` from now on.
    pub fn start(mut probe: Probe) -> GoProbes {
        let known: Known = Arc::default();
        let (tx, rx) = mpsc::channel::<Request>();
        let k = known.clone();
        std::thread::Builder::new()
            .name("go-prober".into())
            .spawn(move || {
                for req in rx {
                    let state = probe_one(&mut probe, &req);
                    let mut known = k.lock().unwrap();
                    match state {
                        Some(s) => known.insert(req.id, s),
                        // Nothing to open (gone): forget it so its next exec tries again.
                        None => known.remove(&req.id),
                    };
                }
            })
            .expect("spawning the Go prober thread");
        GoProbes { known, tx }
    }

    /// `pid` runs binary `id` (found at `path`): probe it unless already known or asked for.
    pub fn request(&self, pid: u32, id: FileId, path: &str) {
        let mut known = self.known.lock().unwrap();
        if known.contains_key(&id) {
            return;
        }
        known.insert(id, State::Pending);
        let _ = self.tx.send(Request {
            pid,
            id,
            path: path.to_string(),
        });
    }

    /// The Go binary with identity `id`, once probed.
    pub fn lookup(&self, id: FileId) -> Option<Arc<GoBinary>> {
        match self.known.lock().unwrap().get(&id) {
            Some(State::Go(g)) => Some(g.clone()),
            _ => None,
        }
    }
}

/// Opens, inspects and (for Go) attaches; None when there was nothing to open.
fn probe_one(probe: &mut Probe, req: &Request) -> Option<State> {
    let (file, target) = open(req.pid, &req.path)?;
    let md = file.metadata().ok()?;
    if (kernel_dev(md.dev()), md.ino()) != req.id {
        return None; // a different file by now (replaced, or the pid was reused)
    }
    let t0 = Instant::now();
    match inspect(file, &target, probe) {
        Ok(Some(g)) => {
            eprintln!(
                "crashwatch: probing Go binary {} ({}, {} uprobes{}) in {} ms",
                req.path,
                g.version,
                g.probes.len(),
                if g.from_pclntab {
                    ", stripped: offsets from .gopclntab"
                } else {
                    ""
                },
                t0.elapsed().as_millis()
            );
            Some(State::Go(g))
        }
        Ok(None) => Some(State::NotGo),
        Err(e) => {
            eprintln!("crashwatch: not probing {}: {e:#}", req.path);
            Some(State::NotGo)
        }
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
