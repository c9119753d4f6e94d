//! The dying process's address space as far as its stack needs it: which file each code
//! address belongs to and how far that file was moved (its load bias).
//!
//! Two sources, in order of trust:
//! - the mappings the agent read while the process still existed ([`Maps`]), with files
//!   opened through the process;
//! - once it is gone, the objects the kernel read from the process's memory at the fatal
//!   signal ([`Stack::modules`]): the executable is the file the kernel recorded at exec
//!   (device, inode, change time, size), found in the cache, among the files the agent holds
//!   open for other reasons (the Go prober keeps every probed binary open, opened through a
//!   process running it, so a Go binary inside a container is named after its process is
//!   gone), under the root of the process's view when the agent holds it (a container, see
//!   [`super::roots`]), or at its absolute path if that path still names that very file.
//!   Libraries are taken at their paths in the process's view: under its held root, or in
//!   the agent's view only when the process's executable proved that the process saw files
//!   where the agent does; and only if the file there is a regular file whose dynamic
//!   section sits where the process had it (`l_ld - l_addr`). That check is weaker than an
//!   identity: a rebuilt library with the same layout would pass (the kernel side cannot
//!   afford to read build ids; see the eBPF `stack` module).
use std::{fs::File, ops::Range, rc::Rc};

use super::{
    files::{FileCache, ModuleFile},
    Maps,
};
use crate::{kernel::decode::Stack, read::elf::FileId};

pub struct Placed {
    pub range: Range<u64>,
    pub bias: u64,
    /// The module's path in the process's view (for display).
    pub path: String,
    pub file: Result<Rc<ModuleFile>, &'static str>,
}

#[derive(Default)]
pub struct Space {
    pub placed: Vec<Placed>,
}

/// What the crash says about its executable.
pub struct Exe<'a> {
    pub path: &'a str,
    pub id: Option<FileId>,
    /// `mm->start_code` (0 when unknown).
    pub start_code: u64,
    /// A handle the agent already holds on the file with this identity, if any.
    pub held: &'a dyn Fn(FileId) -> Option<File>,
    /// The root of the process's view, when it is not the agent's and the agent holds it.
    pub root: Option<&'a File>,
}

impl Space {
    pub fn find(&self, addr: u64) -> Option<&Placed> {
        self.placed
            .iter()
            .find(|p| p.range.start <= addr && addr < p.range.end)
    }

    /// `addr` lies in a module the agent read, outside that module's code: no return
    /// address can be there.
    pub fn is_not_code(&self, addr: u64) -> bool {
        self.find(addr).is_some_and(|p| match &p.file {
            Ok(f) => !f.layout.is_code(addr.wrapping_sub(p.bias)),
            Err(_) => false,
        })
    }

    /// How Go's runtime steps out of the frame at `pc`, when `pc` is Go code with a table.
    pub fn go_rule(&self, pc: u64) -> Option<crate::read::gobin::pclntab::FrameRule> {
        let p = self.find(pc)?;
        let m = p.file.as_ref().ok()?;
        m.go.as_ref()?
            .frame_rule(m.bytes(), pc.wrapping_sub(p.bias))
    }

    /// Adds `other`'s modules where they overlap none of these, and in place of any of these
    /// without its file: maps read while the process tore down its memory can list the
    /// executable whose file could no longer be opened through the process, and that empty
    /// placement must not hide the kernel's, which has the file (the Go matrix in the VMs
    /// lost the stack copy's unwinding that way, now and then).
    pub fn add(&mut self, other: Space) {
        let overlap =
            |a: &Placed, b: &Placed| a.range.start < b.range.end && b.range.start < a.range.end;
        for p in other.placed {
            if p.file.is_ok() {
                self.placed.retain(|q| q.file.is_ok() || !overlap(q, &p));
            }
            if !self.placed.iter().any(|q| overlap(q, &p)) {
                self.placed.push(p);
            }
        }
    }

    pub fn of_maps(maps: &Maps, files: &mut FileCache) -> Space {
        let mut placed: Vec<Placed> = Vec::new();
        for m in maps.mappings.iter().filter(|m| m.exec) {
            if placed
                .iter()
                .any(|p| p.path == m.path && p.range.contains(&m.start))
            {
                continue;
            }
            let file = match &m.file {
                Some(f) => f
                    .try_clone()
                    .map_err(|_| "cannot duplicate the file handle")
                    .and_then(|f| files.load(f)),
                None => Err("the file could not be opened through the process"),
            };
            // The file's whole extent: from its lowest mapping to its highest.
            let same = maps
                .mappings
                .iter()
                .filter(|o| o.dev == m.dev && o.inode == m.inode);
            let lo = same.clone().map(|o| o.start).min().unwrap_or(m.start);
            let hi = same.map(|o| o.end).max().unwrap_or(m.end);
            let bias = match &file {
                Ok(f) => f.layout.mapping_bias(m.start, m.offset),
                Err(_) => None,
            };
            placed.push(Placed {
                range: lo..hi,
                bias: bias.unwrap_or(m.start.wrapping_sub(m.offset)),
                path: m.path.clone(),
                file,
            });
        }
        Space { placed }
    }

    pub fn of_modules(st: &Stack, files: &mut FileCache, exe: &Exe<'_>) -> Space {
        let mut placed = Vec::new();
        // The executable: by its exec identity.
        let exe_file = match exe.id {
            Some(id) => files.get(&id).ok_or("not read before").or_else(|_| {
                if let Some(f) = (exe.held)(id) {
                    // Held since it was opened; written to since, it is not what ran.
                    return files.load(f).and_then(|m| {
                        if m.id == id {
                            Ok(m)
                        } else {
                            Err("the file was rewritten after it ran")
                        }
                    });
                }
                if !exe.path.starts_with('/') {
                    return Err("its path is not absolute in the agent's view");
                }
                if let Some(root) = exe.root {
                    return match super::roots::open_in(root, exe.path) {
                        Some(f) => files.load(f).and_then(|m| {
                            if m.id == id {
                                Ok(m)
                            } else {
                                Err("the file at its path in its container is no longer the one it ran")
                            }
                        }),
                        None => Err("no regular file at its path in its container"),
                    };
                }
                match id.open_at(exe.path) {
                    Some(f) => files.load(f),
                    None => Err("the file at its path is no longer the one it ran"),
                }
            }),
            None => Err("its exec was not seen"),
        };
        // Whether the process saw files where the agent does: its executable is, at its path
        // here, the very file it ran.
        let same_view =
            exe.path.starts_with('/') && exe.id.is_some_and(|id| id.open_at(exe.path).is_some());
        // The kernel's `start_code` first: a static-pie program's loaded-object list names
        // it at bias 0 wherever it was loaded (seen with Debian 12's gcc -static-pie).
        let exe_bias = exe_file
            .as_ref()
            .ok()
            .filter(|_| exe.start_code != 0)
            .and_then(|f| f.layout.bias(exe.start_code))
            .or_else(|| st.modules.first().map(|m| m.bias));
        match exe_bias {
            Some(bias) => placed.push(placed_at(exe.path.to_string(), bias, exe_file)),
            // Kept unplaced, so a frame it would have held can say why.
            None => placed.push(placed_at(
                exe.path.to_string(),
                0,
                exe_file.and(Err("its load address is unknown (no loaded-object list)")),
            )),
        }
        for m in st.modules.iter().skip(1) {
            if !m.path.starts_with('/') {
                continue; // the vDSO and other objects without a file
            }
            let opened = match exe.root {
                Some(root) => Ok(super::roots::open_in(root, &m.path)),
                None if same_view => Ok(crate::read::elf::id::open_regular(&m.path)),
                None => Err("the process is gone and saw files elsewhere (a container whose root the agent did not hold)"),
            };
            let file = opened.and_then(|f| match f {
                Some(f) => files.load(f).and_then(|f| {
                    let want = m.dynamic.wrapping_sub(m.bias);
                    if f.dynamic == Some(want) {
                        Ok(f)
                    } else {
                        Err("the file at its path is laid out differently")
                    }
                }),
                None => Err("no regular file at its path"),
            });
            placed.push(placed_at(m.path.clone(), m.bias, file));
        }
        Space { placed }
    }
}

fn placed_at(path: String, bias: u64, file: Result<Rc<ModuleFile>, &'static str>) -> Placed {
    // Without the file its extent is unknown: a zero-length range places nothing.
    let range = match &file {
        Ok(f) => bias.wrapping_add(f.span.start)..bias.wrapping_add(f.span.end),
        Err(_) => bias..bias,
    };
    Placed {
        range,
        bias,
        path,
        file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(range: Range<u64>, file: Result<Rc<ModuleFile>, &'static str>) -> Placed {
        Placed {
            bias: range.start,
            range,
            path: "/x".into(),
            file,
        }
    }

    /// A placement without its file gives way to an overlapping one with it; one with its
    /// file stays, and what overlaps nothing is added.
    #[test]
    fn a_placement_with_its_file_replaces_one_without() {
        let mut cache = FileCache::new(usize::MAX);
        let f = cache.load(File::open("/bin/true").unwrap()).unwrap();
        let mut space = Space {
            placed: vec![
                placed(
                    0x1000..0x9000,
                    Err("the file could not be opened through the process"),
                ),
                placed(0x20000..0x28000, Ok(f.clone())),
            ],
        };
        space.add(Space {
            placed: vec![
                placed(0x1000..0x5000, Ok(f.clone())),
                placed(0x21000..0x22000, Ok(f.clone())),
                placed(0x40000..0x41000, Ok(f)),
            ],
        });
        let got: Vec<(u64, bool)> = space
            .placed
            .iter()
            .map(|p| (p.range.start, p.file.is_ok()))
            .collect();
        assert_eq!(got, [(0x20000, true), (0x1000, true), (0x40000, true)]);
        assert!(space.find(0x1500).unwrap().file.is_ok());
    }
}
