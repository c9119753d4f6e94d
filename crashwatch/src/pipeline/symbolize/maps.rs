//! A dying process's mappings, read while it still exists, with its code files opened through
//! its own view (`/proc/<pid>/exe`, `/proc/<pid>/root/<path>` checked against the inode its
//! maps name) before the process and its view go away.
use std::{fs::File, sync::Arc};

use crate::{
    model::process::{Mapping, Maps},
    read::elf::FileId,
};

/// Code mappings whose files are opened at capture; a process maps a few dozen at most in
/// practice, and each open costs a path walk.
const OPEN_MAX: usize = 256;

/// A file the process mapped: through its own root, checked to be the inode its maps name;
/// else (no CAP_SYS_PTRACE: the maps are readable with CAP_PERFMON, the root is not) at that
/// path in our view, if it is the very device and inode the maps name.
pub fn open_in_process(pid: u32, m: &Mapping) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    if !m.path.starts_with('/') {
        return None;
    }
    if let Ok(f) = File::open(format!("/proc/{pid}/root{}", m.path)) {
        return (f.metadata().ok()?.ino() == m.inode).then_some(f);
    }
    let f = crate::read::elf::id::open_regular(&m.path)?;
    let id = FileId::of(&f.metadata().ok()?);
    (id.ino == m.inode && id.dev == m.dev).then_some(f)
}

impl Maps {
    /// Reads /proc/<pid>/maps and opens the files of its code mappings; None once the process
    /// is gone (or past `exit_mm`, whose maps are empty).
    pub fn capture(pid: u32) -> Option<Maps> {
        let proc = procfs::process::Process::new(pid as i32).ok()?;
        let exe = File::open(format!("/proc/{pid}/exe")).ok().map(Arc::new);
        let exe_id = exe
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| FileId::of(&m));
        let mut mappings = proc
            .maps()
            .ok()?
            .into_iter()
            .filter_map(|m| match m.pathname {
                procfs::process::MMapPath::Path(p) => Some(Mapping {
                    start: m.address.0,
                    end: m.address.1,
                    offset: m.offset,
                    path: p.to_string_lossy().into_owned(),
                    dev: crate::read::elf::id::mkdev(m.dev.0 as u64, m.dev.1 as u64),
                    inode: m.inode,
                    exec: m.perms.contains(procfs::process::MMPermissions::EXECUTE),
                    file: None,
                }),
                _ => None,
            })
            .collect::<Vec<_>>();
        if mappings.is_empty() {
            return None;
        }
        let mut opened: Vec<(u64, u64, Arc<File>)> = Vec::new();
        for m in mappings.iter_mut() {
            if opened.len() >= OPEN_MAX {
                break;
            }
            if let Some((_, _, f)) = opened.iter().find(|(d, i, _)| *d == m.dev && *i == m.inode) {
                m.file = Some(f.clone());
                continue;
            }
            let is_exe = exe_id.is_some_and(|id| id.ino == m.inode && id.dev == m.dev);
            let f = if is_exe {
                exe.clone()
            } else if m.exec {
                open_in_process(pid, m).map(Arc::new)
            } else {
                None
            };
            if let Some(f) = f {
                opened.push((m.dev, m.inode, f.clone()));
                m.file = Some(f);
            }
        }
        // Data mappings of a file whose code mapping was opened share its handle: the load
        // bias is computed from the lowest mapping of the file.
        for m in mappings.iter_mut().filter(|m| m.file.is_none()) {
            if let Some((_, _, f)) = opened.iter().find(|(d, i, _)| *d == m.dev && *i == m.inode) {
                m.file = Some(f.clone());
            }
        }
        Some(Maps { mappings })
    }
}
