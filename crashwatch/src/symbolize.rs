//! Symbolize: turns the user stack captured at the fatal signal into frames with a module, a
//! file offset in that module, and a function name where the module's own ELF symbol table
//! (`.symtab`, else `.dynsym`) has one.
//!
//! The process is usually dead by the time a report is built, so the mappings are captured
//! when the signal record arrives ([`Maps::capture`]); failing that, the main executable's text
//! range the kernel recorded (`mm->start_code`) still places its frames. DWARF, CFI unwinding and
//! Go's pclntab come later; frames keep `module` + `offset` so a later symbolizer can take over.
use std::{collections::HashMap, fs::File, io::Read, os::unix::fs::MetadataExt, sync::Arc};

use object::{Object, ObjectSymbol, SymbolKind};
use serde::Serialize;

use crate::assemble::Crash;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
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

/// Symbol tables of the ELF files seen, keyed by file identity (device, inode).
#[derive(Default)]
pub struct Symbolizer {
    cache: HashMap<(u64, u64), Option<Arc<ElfSyms>>>,
}

const CACHE_MAX: usize = 256;

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
            .map(|p| p.exe.clone())
            .unwrap_or_default();
        at.stack
            .iter()
            .map(|&ip| {
                let mut f = Frame {
                    ip,
                    ..Default::default()
                };
                let Some((path, syms, file_off)) = self.place(ip, &at, &exe_path) else {
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
    ) -> Option<(String, Option<Arc<ElfSyms>>, u64)> {
        if let Some(maps) = at.maps {
            let m = maps.mappings.iter().find(|m| m.start <= ip && ip < m.end)?;
            let file =
                if m.path == exe_path || maps.mappings.first().is_some_and(|f| f.path == m.path) {
                    maps.exe.as_ref().and_then(|f| f.try_clone().ok())
                } else {
                    None
                }
                .or_else(|| File::open(format!("/proc/{}/root{}", maps.pid, m.path)).ok())
                .or_else(|| File::open(&m.path).ok());
            let syms = file.and_then(|f| self.load(f));
            return Some((m.path.clone(), syms, ip - m.start + m.offset));
        }
        // No mappings: the executable's text range from the kernel still places its frames.
        if exe_path.is_empty() || ip < at.start || ip >= at.end {
            return None;
        }
        let syms = File::open(exe_path).ok().and_then(|f| self.load(f))?;
        let bias = syms.layout.bias(at.start)?;
        let off = syms.layout.vaddr_to_offset(ip - bias)?;
        Some((exe_path.to_string(), Some(syms), off))
    }

    fn load(&mut self, mut f: File) -> Option<Arc<ElfSyms>> {
        let md = f.metadata().ok()?;
        let key = (md.dev(), md.ino());
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let mut bytes = Vec::new();
        let parsed = f
            .read_to_end(&mut bytes)
            .ok()
            .and_then(|_| ElfSyms::parse(&bytes))
            .map(Arc::new);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(key, parsed.clone());
        parsed
    }
}

/// The parts of an ELF file the symbolizer needs; the file's bytes are not kept.
pub struct ElfSyms {
    layout: crate::elf::Layout,
    /// (vaddr, size, name), sorted by vaddr.
    symbols: Vec<(u64, u64, String)>,
}

impl ElfSyms {
    /// None for anything that is not a readable ELF file (truncated, not ELF, ...).
    pub fn parse(bytes: &[u8]) -> Option<ElfSyms> {
        let obj = object::File::parse(bytes).ok()?;
        if !matches!(obj, object::File::Elf64(_)) {
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
        Some(ElfSyms {
            layout: crate::elf::Layout::of(&obj),
            symbols,
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
