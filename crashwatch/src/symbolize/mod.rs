//! Symbolize: turns the user stack captured at the fatal signal into frames with a module, a
//! file offset in that module, and a function name where the module's own ELF symbol table
//! (`.symtab`, else `.dynsym`) has one.
//!
//! The process is usually dead by the time a report is built, so the mappings are captured
//! when the signal record arrives ([`Maps::capture`]); failing that, the main executable's text
//! range the kernel recorded (`mm->start_code`) still places its frames in a binary the
//! symbolizer already read under the same identity. DWARF, CFI unwinding and Go's pclntab come
//! later; frames keep `module` + `offset` so a later symbolizer can take over.
//!
//! Files are opened through the dying process's own view (`/proc/<pid>/exe`,
//! `/proc/<pid>/root/<path>` checked against the inode its maps name). Once the process is
//! gone, its executable's absolute path is used only if the file there has exactly the
//! identity the kernel recorded at exec (device, inode, change time, size): a relative or a
//! container path in the agent's view names some other file, and its symbols would put
//! someone else's function names on the stack.
use std::{collections::HashMap, fs::File, sync::Arc};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use serde::Serialize;

use crate::{
    assemble::Crash,
    elf::{FileId, Mapped},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
    /// The mapped file's device (kernel encoding) and inode, as the process's maps name them.
    pub dev: u64,
    pub inode: u64,
}

/// A dying process's file mappings and an open handle on its executable.
#[derive(Debug)]
pub struct Maps {
    pub pid: u32,
    pub mappings: Vec<Mapping>,
    exe: Option<File>,
}

impl Maps {
    /// Reads /proc/<pid>/maps and opens /proc/<pid>/exe; None once the process is gone.
    pub fn capture(pid: u32) -> Option<Maps> {
        let proc = procfs::process::Process::new(pid as i32).ok()?;
        let exe = File::open(format!("/proc/{pid}/exe")).ok();
        let mappings = proc
            .maps()
            .ok()?
            .into_iter()
            .filter_map(|m| match m.pathname {
                procfs::process::MMapPath::Path(p) => Some(Mapping {
                    start: m.address.0,
                    end: m.address.1,
                    offset: m.offset,
                    path: p.to_string_lossy().into_owned(),
                    dev: crate::elf::id::mkdev(m.dev.0 as u64, m.dev.1 as u64),
                    inode: m.inode,
                }),
                _ => None,
            })
            .collect::<Vec<_>>();
        // A process past exit_mm() has an empty maps file: no better than nothing.
        if mappings.is_empty() {
            return None;
        }
        Some(Maps { pid, mappings, exe })
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Frame {
    #[serde(serialize_with = "crate::report::hex")]
    pub ip: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Byte offset of `ip` in the module's file.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::report::hex_opt"
    )]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Bytes from the function's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_offset: Option<u64>,
}

/// Where a stack was captured: the addresses and what places them.
struct At<'a> {
    stack: &'a [u64],
    maps: Option<&'a Maps>,
    start: u64,
    end: u64,
}

/// Symbol tables of the ELF files seen, keyed by file identity.
#[derive(Default)]
pub struct Symbolizer {
    cache: HashMap<FileId, Option<Arc<ElfSyms>>>,
    /// Bytes the cached symbol tables hold.
    cached_bytes: usize,
}

/// What the cache may hold: a few large binaries' symbols.
const CACHE_BYTES: usize = 64 << 20;
/// Symbol tables larger than this are not read (a 200 MB Go binary's is ~15 MB).
const SYMTAB_MAX: u64 = 256 << 20;

impl Symbolizer {
    /// The crash's stack: the faulting thread's at the signal, else the Go runtime's at its
    /// fatal path.
    pub fn frames(&mut self, crash: &Crash) -> Vec<Frame> {
        let at = match (&crash.signal, &crash.go) {
            (Some(s), _) => At {
                stack: &s.stack,
                maps: s.maps.as_deref(),
                start: s.start_code,
                end: s.end_code,
            },
            // Without end_code the segment table still bounds the executable's range.
            (None, Some(g)) => At {
                stack: &g.stack,
                maps: g.maps.as_deref(),
                start: g.start_code,
                end: u64::MAX,
            },
            _ => return Vec::new(),
        };
        let exe_path = crash
            .proc
            .as_ref()
            .and_then(|p| p.exe.clone())
            .unwrap_or_default();
        let exe_id = crash.proc.as_ref().and_then(|p| p.file);
        at.stack
            .iter()
            .map(|&ip| {
                let mut f = Frame {
                    ip,
                    ..Default::default()
                };
                let Some((path, syms, file_off)) = self.place(ip, &at, &exe_path, exe_id) else {
                    return f;
                };
                f.module = Some(path);
                f.offset = Some(file_off);
                if let Some((name, off)) = syms.and_then(|s| {
                    s.lookup_file_offset(file_off)
                        .map(|(n, o)| (n.to_string(), o))
                }) {
                    f.function = Some(name);
                    f.function_offset = Some(off);
                }
                f
            })
            .collect()
    }

    /// Module path, its symbols and the file offset of `ip`.
    fn place(
        &mut self,
        ip: u64,
        at: &At<'_>,
        exe_path: &str,
        exe_id: Option<FileId>,
    ) -> Option<(String, Option<Arc<ElfSyms>>, u64)> {
        if let Some(maps) = at.maps {
            let m = maps.mappings.iter().find(|m| m.start <= ip && ip < m.end)?;
            let is_exe =
                m.path == exe_path || maps.mappings.first().is_some_and(|f| f.path == m.path);
            let file = if is_exe {
                maps.exe.as_ref().and_then(|f| f.try_clone().ok())
            } else {
                None
            }
            .or_else(|| open_in_process(maps.pid, m));
            let syms = file.and_then(|f| self.load(f));
            return Some((m.path.clone(), syms, ip - m.start + m.offset));
        }
        // No mappings: the executable's text range from the kernel still places its frames,
        // in the file the kernel recorded at exec: one read already, or the absolute path the
        // process had, if what it names now is that very file.
        if ip < at.start || ip >= at.end {
            return None;
        }
        let id = exe_id?;
        let syms = match self.cache.get(&id) {
            Some(hit) => hit.clone()?,
            None => {
                if !exe_path.starts_with('/') {
                    return None;
                }
                self.load(id.open_at(exe_path)?)?
            }
        };
        let bias = syms.layout.bias(at.start)?;
        let off = syms.layout.vaddr_to_offset(ip - bias)?;
        let module = Some(exe_path.to_string()).filter(|p| !p.is_empty());
        Some((module.unwrap_or_default(), Some(syms), off))
    }

    fn load(&mut self, f: File) -> Option<Arc<ElfSyms>> {
        let key = FileId::of(&f.metadata().ok()?);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let map = Mapped::new(&f).ok()?;
        let parsed = ElfSyms::parse(map.bytes()).filter(|_| !map.damaged());
        let size = parsed.as_ref().map_or(64, |p| p.bytes);
        if self.cached_bytes + size > CACHE_BYTES {
            self.cache.clear();
            self.cached_bytes = 0;
        }
        let parsed = parsed.map(Arc::new);
        self.cached_bytes += size;
        self.cache.insert(key, parsed.clone());
        parsed
    }
}

/// A library (or the executable) the process mapped: through its own root, checked to be the
/// inode its maps name; else (no CAP_SYS_PTRACE: the maps are readable with CAP_PERFMON, the
/// root is not) at that path in our view, if it is the very device and inode the maps name.
fn open_in_process(pid: u32, m: &Mapping) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    if !m.path.starts_with('/') {
        return None;
    }
    if let Ok(f) = File::open(format!("/proc/{pid}/root{}", m.path)) {
        return (f.metadata().ok()?.ino() == m.inode).then_some(f);
    }
    let f = File::open(&m.path).ok()?;
    let id = FileId::of(&f.metadata().ok()?);
    (id.ino == m.inode && id.dev == m.dev).then_some(f)
}

/// The parts of an ELF file the symbolizer needs; the file's bytes are not kept.
pub struct ElfSyms {
    layout: crate::elf::Layout,
    /// (vaddr, size, name), sorted by vaddr.
    symbols: Vec<(u64, u64, String)>,
    /// Heap bytes held, roughly.
    bytes: usize,
}

impl ElfSyms {
    /// None for anything that is not a readable ELF file (truncated, not ELF, ...).
    pub fn parse(bytes: &[u8]) -> Option<ElfSyms> {
        let obj = object::File::parse(bytes).ok()?;
        if !matches!(obj, object::File::Elf64(_)) {
            return None;
        }
        let too_big = [".symtab", ".dynsym"].iter().any(|n| {
            obj.section_by_name(n)
                .is_some_and(|s| s.size() > SYMTAB_MAX)
        });
        if too_big {
            return None;
        }
        let mut symbols: Vec<(u64, u64, String)> = obj
            .symbols()
            .chain(obj.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .collect();
        if symbols.is_empty() {
            // Stripped Go binaries keep their function table in .gopclntab.
            symbols = crate::gobin::functions(&obj, bytes).unwrap_or_default();
        }
        symbols.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
        symbols.dedup_by_key(|s| s.0);
        let bytes = symbols.iter().map(|s| 40 + s.2.len()).sum();
        Some(ElfSyms {
            layout: crate::elf::Layout::of(&obj),
            symbols,
            bytes,
        })
    }

    /// The function containing file offset `off`, and the distance from its start.
    pub fn lookup_file_offset(&self, off: u64) -> Option<(&str, u64)> {
        let vaddr = self.layout.offset_to_vaddr(off)?;
        let i = self
            .symbols
            .partition_point(|s| s.0 <= vaddr)
            .checked_sub(1)?;
        let (start, size, name) = &self.symbols[i];
        // Size 0 (hand-written assembly) is accepted: the next symbol bounds it.
        if *size != 0 && vaddr >= start + size {
            return None;
        }
        Some((name, vaddr - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_test_binary_symbolizes_a_known_function() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let syms = ElfSyms::parse(&bytes).expect("the test binary is ELF");
        let (addr, _, name) = syms
            .symbols
            .iter()
            .find(|s| s.2.contains("own_test_binary_symbolizes"))
            .expect("the test function is in .symtab")
            .clone();
        let off = syms.layout.vaddr_to_offset(addr + 1).unwrap();
        assert_eq!(syms.lookup_file_offset(off), Some((name.as_str(), 1)));
    }

    #[test]
    fn truncated_or_foreign_files_are_not_elf() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(ElfSyms::parse(&bytes[..64]).is_none());
        assert!(ElfSyms::parse(b"#!/bin/sh\necho hi\n").is_none());
    }
}
