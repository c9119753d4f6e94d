//! The agent's side of the known-files map: which executables it has classified, so the
//! kernel stops sending their execs, and where each was found, so a crash of a process whose
//! exec was never sent still names its executable.
//!
//! A file is marked known once the Go prober has an answer for it: "not Go" marks it quiet
//! for [`KNOWN_TTL`] (then the next exec is sent and the answer asked again, as the prober's
//! own "not Go" expires); a Go binary is never marked, so every exec of it is sent and its
//! probes follow its processes. Marking costs one map update per new file, never per exec.
use std::collections::HashMap;

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use crashwatch_common::{FileKey, KnownFile, KNOWN_QUIET};

use crate::{decode::Exec, elf::FileId};

/// How long a "not Go" answer keeps a file's execs quiet.
pub const KNOWN_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// Paths remembered (one per file identity); past this the table starts over.
const PATHS_MAX: usize = 1 << 16;

pub struct KnownFiles {
    map: BpfHashMap<MapData, FileKey, KnownFile>,
    /// Absolute path of each file seen at exec, in the view of the process that ran it.
    paths: HashMap<FileId, String>,
    /// Files marked quiet, and map updates the kernel refused.
    pub marked: u64,
    pub mark_errors: u64,
}

pub fn key_of(id: FileId) -> FileKey {
    FileKey {
        dev: id.dev as u32,
        _pad: 0,
        ino: id.ino,
        ctime_ns: id.ctime_ns,
        size: id.size,
    }
}

impl KnownFiles {
    pub fn new(map: aya::maps::Map) -> Result<KnownFiles> {
        Ok(KnownFiles {
            map: BpfHashMap::try_from(map).context("the KNOWN map")?,
            paths: HashMap::new(),
            marked: 0,
            mark_errors: 0,
        })
    }

    /// An exec record arrived for `e` (its `exe` resolved); `is_go` is the prober's answer,
    /// `None` while it has none.
    pub fn learn(&mut self, e: &Exec, is_go: Option<bool>) {
        if let Some(exe) = &e.exe {
            if self.paths.len() >= PATHS_MAX && !self.paths.contains_key(&e.file) {
                self.paths.clear();
            }
            self.paths.insert(e.file, exe.clone());
        }
        if is_go != Some(false) {
            return;
        }
        let until_ns = crate::context::monotonic_ns() + KNOWN_TTL.as_nanos() as u64;
        let v = KnownFile {
            flags: KNOWN_QUIET,
            _pad: 0,
            until_ns,
        };
        match self.map.insert(key_of(e.file), v, 0) {
            Ok(()) => self.marked += 1,
            Err(_) => self.mark_errors += 1,
        }
    }

    /// Where file `id` was when a process last exec'd it.
    pub fn path_of(&self, id: FileId) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }
}
