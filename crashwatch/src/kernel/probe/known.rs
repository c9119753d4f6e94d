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

use crate::{kernel::decode::Exec, read::elf::FileId};

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
        let until_ns = crate::model::clock::monotonic_ns() + KNOWN_TTL.as_nanos() as u64;
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

    /// A running process's file, found by the scan at start.
    pub fn remember(&mut self, id: FileId, path: &str) {
        if self.paths.len() < PATHS_MAX {
            self.paths.insert(id, path.to_string());
        }
    }

    /// Writes the paths to `file` (JSON lines) for the next agent: with pinned programs, a
    /// process that dies while no agent runs is reported by the next one, which never saw it
    /// run. Returns how many.
    pub fn save(&self, file: &std::path::Path) -> std::io::Result<usize> {
        use std::io::Write;
        let tmp = file.with_extension("tmp");
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for (id, path) in &self.paths {
            let line = serde_json::json!({
                "dev": id.dev, "ino": id.ino, "ctime_ns": id.ctime_ns, "size": id.size, "path": path,
            });
            writeln!(w, "{line}")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, file)?;
        Ok(self.paths.len())
    }

    /// Reads what [`save`](Self::save) wrote; a missing or damaged file gives what it can.
    /// Only names: a binary is opened at its path only when the file there is still the one
    /// the kernel named (device, inode, change time, size).
    pub fn load(&mut self, file: &std::path::Path) -> usize {
        use std::io::{BufRead, Read};
        let Ok(f) = std::fs::File::open(file) else {
            return 0;
        };
        // Bounded by what save can write: PATHS_MAX lines of a path each.
        let reader = std::io::BufReader::new(f.take((PATHS_MAX as u64) * 4200));
        let mut n = 0;
        for line in reader.lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let num = |k: &str| v[k].as_u64();
            let (Some(dev), Some(ino), Some(ctime_ns), Some(size), Some(path)) = (
                num("dev"),
                num("ino"),
                num("ctime_ns"),
                num("size"),
                v["path"].as_str(),
            ) else {
                continue;
            };
            if self.paths.len() >= PATHS_MAX || !path.starts_with('/') || path.len() > 4096 {
                continue;
            }
            self.paths
                .entry(FileId {
                    dev,
                    ino,
                    ctime_ns,
                    size,
                })
                .or_insert_with(|| {
                    n += 1;
                    path.to_string()
                });
        }
        n
    }

    /// Where file `id` was when a process last exec'd it.
    pub fn path_of(&self, id: FileId) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }
}
