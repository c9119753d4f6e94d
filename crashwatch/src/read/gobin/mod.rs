//! Reading Go binaries without running them: where to put the runtime probes, the build info,
//! and the names of the types panic values had. Works on PIE (applies the binary's RELATIVE
//! relocations to the pointers it reads) and on Go 1.26+, whose pclntab leaves the text base
//! to moduledata.
//!
//! A probe is a breakpoint in someone else's program, so an address is probed only when the
//! binary's validated pclntab says a function of that name starts there, and, when the symbol
//! table names it too, both agree. Anything else is refused and said, never guessed: a uprobe
//! one byte inside an instruction changes what the program computes.
//!
//! The binary is read piece by piece, and a damaged piece costs only what depends on it: bad
//! build info leaves the version unknown, a damaged pclntab header leaves the table to be read
//! through moduledata as the runtime does. What was wrong is kept in [`GoBinary::problems`].
pub mod buildinfo;
mod image;
mod inline;
pub mod lines;
pub mod pclntab;

/// A little-endian base-128 varint at `at`: (value, bytes), at most 5 bytes. The one reader
/// of Go's varints: pclntab's tables, build info strings, type names.
pub fn uvarint(d: &[u8], at: usize) -> Option<(u32, usize)> {
    let mut v = 0u32;
    for i in 0..5 {
        let b = *d.get(at.checked_add(i)?)?;
        v |= ((b & 0x7f) as u32) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests;

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt};

use anyhow::{Context, Result};
use object::{Object, ObjectSection};

pub use buildinfo::BuildInfo;
use crashwatch_common as c;
use image::{Image, ModuleData};
use pclntab::Pclntab;

/// Runtime functions crashwatch probes, and the cookie the kernel program knows each by.
/// `runtime.fatal` and `runtime.throw` take the message as their string argument. What the
/// runtime prints to stderr passes through `runtime.writeErrData` (Go 1.23+, stderr only) or,
/// before it, the assembly syscall wrapper `runtime.write1(fd, ...)` (filtered to fd 2 in the
/// kernel; `runtime.write` gets inlined). `gwrite` would also see `runtime.Stack`.
pub const PROBED: [(&str, u64); 6] = [
    ("runtime.gopanic", c::GO_AT_GOPANIC),
    ("runtime.fatalpanic", c::GO_AT_FATALPANIC),
    ("runtime.throw", c::GO_AT_THROW),
    ("runtime.fatal", c::GO_AT_THROW),
    ("runtime.writeErrData", c::GO_AT_WRITE_ERR),
    ("runtime.write1", c::GO_AT_WRITE1),
];

/// How many of [`PROBED`] a sound binary gets: one of the two output paths.
#[cfg(test)]
pub const PROBES_PER_BINARY: usize = 5;

/// One uprobe: the function, its entry's offset in the file, and its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoProbe {
    pub func: &'static str,
    pub offset: u64,
    pub cookie: u64,
}

/// What crashwatch keeps about one Go binary (small: no file contents).
#[derive(Debug)]
pub struct GoBinary {
    /// The toolchain (`go1.21.13`), from the build info; None when that was unreadable.
    pub version: Option<String>,
    pub build: Option<BuildInfo>,
    pub probes: Vec<GoProbe>,
    /// Function addresses came from the pclntab alone (the symbol table was stripped).
    pub from_pclntab: bool,
    /// What was wrong with the binary's metadata, one sentence each; everything above comes
    /// from the parts that were sound.
    pub problems: Vec<String>,
    /// Base of the type descriptors' names (moduledata.types).
    types_base: Option<u64>,
    layout: crate::read::elf::Layout,
    /// An open handle: type names are read on demand, even after the file is deleted.
    file: Option<File>,
}

/// A probed binary's file as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileNow {
    /// (size, mtime in ns): writes change it; renames, links, unlinks and chmod (which
    /// change the ctime) do not.
    pub stamp: (u64, i128),
    /// No name left on disk (a `go run` binary after its run): nothing can exec it again by
    /// path.
    pub deleted: bool,
}

/// The sections only Go's linker writes.
pub fn is_go(obj: &object::File<'_>) -> bool {
    obj.sections().any(|s| {
        matches!(
            s.name(),
            Ok(".gopclntab" | ".data.rel.ro.gopclntab" | ".go.buildinfo")
        )
    })
}

/// Err: not a readable ELF file. Ok(None): an ELF file that is not a Go binary.
pub fn parse(bytes: &[u8], file: Option<File>) -> Result<Option<GoBinary>> {
    let obj = object::File::parse(bytes).context("not a readable ELF file")?;
    if !is_go(&obj) {
        return Ok(None);
    }
    let img = Image::new(&obj, bytes);
    let mut problems = Vec::new();
    let mut g = GoBinary {
        version: None,
        build: None,
        probes: Vec::new(),
        from_pclntab: false,
        problems: Vec::new(),
        types_base: None,
        layout: img.layout.clone(),
        file,
    };
    if obj.architecture() != object::Architecture::X86_64 {
        g.problems
            .push("not an x86-64 binary: the probes read x86-64 registers".into());
        return Ok(Some(g));
    }
    match obj.section_by_name(".go.buildinfo") {
        Some(sec) => match sec
            .data()
            .context("unreadable section")
            .and_then(|blob| buildinfo::read_blob(blob, |p| img.ptr_string(p)))
        {
            Ok((v, m)) => {
                g.version = Some(v).filter(|v| !v.is_empty());
                g.build = Some(buildinfo::parse_modinfo(&m));
            }
            Err(e) => problems.push(format!("build info: {e:#}: version unknown")),
        },
        None => problems.push("no .go.buildinfo section: version unknown".into()),
    }
    let syms: HashMap<&str, u64> = img.runtime_symbols().into_iter().collect();
    let tables = Tables::locate(&obj, &img, &syms, &mut problems);
    g.types_base = syms.get("runtime.types").copied().or(tables.types_base);
    let (probes, from_pclntab) = choose_probes(&img, &syms, tables.pclntab.as_ref(), &mut problems);
    g.probes = probes;
    g.from_pclntab = from_pclntab;
    g.problems = problems;
    Ok(Some(g))
}

/// The function table, found and validated, and what moduledata says about types.
struct Tables<'a> {
    pclntab: Option<Pclntab<'a>>,
    types_base: Option<u64>,
    /// `go:func.*`: where funcdata offsets (the inline tree) start (Go 1.18+).
    gofunc: Option<u64>,
}

impl<'a> Tables<'a> {
    fn locate(
        obj: &object::File<'a>,
        img: &Image<'a>,
        syms: &HashMap<&str, u64>,
        problems: &mut Vec<String>,
    ) -> Tables<'a> {
        let section = obj
            .section_by_name(".gopclntab")
            .or_else(|| obj.section_by_name(".data.rel.ro.gopclntab"))
            .map(|s| s.address());
        let mut at = section.or_else(|| syms.get("runtime.pclntab").copied());
        if at.is_none()
            && img
                .moduledata(syms.get("runtime.firstmoduledata").copied(), None)
                .is_none()
        {
            // Externally linked and stripped: neither section nor symbol names the table.
            at = img.scan_pclntab().into_iter().find(|&c| {
                let text = syms.get("runtime.text").copied().or_else(|| {
                    ModuleData::read(img, img.moduledata(None, Some(c))?).map(|m| m.text)
                });
                img.rest_of_section(c).is_some_and(|data| {
                    Pclntab::parse(data, img.u64(c + 24), text, &|a| img.layout.is_code(a)).is_ok()
                })
            });
        }
        let md_addr = img.moduledata(syms.get("runtime.firstmoduledata").copied(), at);
        let md = md_addr.and_then(|m| ModuleData::read(img, m));
        at = at.or(md.as_ref().map(|m| m.pc_header));
        let Some(at) = at else {
            problems.push("no pclntab found".into());
            return Tables {
                pclntab: None,
                types_base: None,
                gofunc: None,
            };
        };
        let Some(data) = img.rest_of_section(at) else {
            problems.push(format!("the pclntab at {at:#x} is not in the file"));
            return Tables {
                pclntab: None,
                types_base: None,
                gofunc: None,
            };
        };
        let text_base = syms
            .get("runtime.text")
            .copied()
            .or(md.as_ref().map(|m| m.text));
        let is_code = |a: u64| img.layout.is_code(a);
        let pclntab = match Pclntab::parse(data, img.u64(at + 24), text_base, &is_code) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("{e:#}"));
                let via_md = md
                    .as_ref()
                    .context("no moduledata to read it through")
                    .and_then(|md| Pclntab::from_moduledata(data, at, md, &is_code));
                match via_md {
                    Ok(t) => {
                        problems.push("the function table was read through moduledata".into());
                        Some(t)
                    }
                    Err(e) => {
                        problems.push(format!("{e:#}"));
                        None
                    }
                }
            }
        };
        // moduledata.types: +280 on Go 1.18-1.19, +296 from 1.20 (which added covctrs).
        let types_base = match (&pclntab, md_addr) {
            (Some(t), Some(m)) => {
                let off = if t.layout == pclntab::Layout::Go120 {
                    296
                } else {
                    280
                };
                img.u64(m + off)
            }
            _ => None,
        };
        // moduledata.gofunc: +304 on Go 1.18-1.19; +320 from 1.20, +344 from 1.27 (which
        // added typedesclen and the itab fields); a candidate must point into data that is
        // not code and not before moduledata.rodata, the field just before it.
        let gofunc = img
            .symbol("go:func.*")
            .or_else(|| img.symbol("go.func.*"))
            .or_else(|| {
                let (t, m) = (pclntab.as_ref()?, md_addr?);
                let offs: &[u64] = match t.layout {
                    pclntab::Layout::Go118 => &[304],
                    pclntab::Layout::Go120 => &[344, 320],
                    pclntab::Layout::Go116 => &[],
                };
                offs.iter().find_map(|&o| {
                    let v = img.u64(m + o)?;
                    let rodata = img.u64(m + o - 8)?;
                    (rodata <= v && img.is_data(v)).then_some(v)
                })
            });
        Tables {
            pclntab,
            types_base,
            gofunc,
        }
    }
}

/// The probes the validated table confirms, and whether any came from the table alone.
fn choose_probes(
    img: &Image<'_>,
    syms: &HashMap<&str, u64>,
    table: Option<&Pclntab<'_>>,
    problems: &mut Vec<String>,
) -> (Vec<GoProbe>, bool) {
    let wanted = |n: &str| PROBED.iter().any(|p| p.0 == n);
    let entries: HashMap<&str, u64> = table
        .map(|t| {
            t.funcs()
                .filter(|(_, n)| wanted(n))
                .map(|(pc, n)| (n, pc))
                .collect()
        })
        .unwrap_or_default();
    let mut probes = Vec::new();
    let mut from_pclntab = false;
    for (name, cookie) in PROBED {
        // Assembly functions carry an ABI suffix in the symbol table, not in the pclntab.
        let sym = syms
            .get(name)
            .or_else(|| syms.get(format!("{name}.abi0").as_str()))
            .copied();
        let entry = match (sym, entries.get(name).copied()) {
            (Some(s), Some(t)) if s == t => s,
            (Some(s), Some(t)) => {
                problems.push(format!(
                    "{name}: the symbol table says {s:#x}, the pclntab {t:#x}: not probed"
                ));
                continue;
            }
            (Some(s), None) if table.is_some() => {
                problems.push(format!(
                    "{name}: {s:#x} is not the start of a function the pclntab knows: not probed"
                ));
                continue;
            }
            (Some(s), None) => {
                problems.push(format!(
                    "{name}: no valid pclntab to confirm the symbol at {s:#x}: not probed"
                ));
                continue;
            }
            (None, Some(t)) => {
                from_pclntab = true;
                t
            }
            (None, None) => continue,
        };
        match img.file_offset(entry).filter(|_| img.layout.is_code(entry)) {
            Some(offset) => probes.push(GoProbe {
                func: name,
                offset,
                cookie,
            }),
            None => problems.push(format!("{name}: {entry:#x} is not in the file's code")),
        }
    }
    if probes.iter().any(|p| p.func == "runtime.writeErrData") {
        probes.retain(|p| p.func != "runtime.write1");
    }
    (probes, from_pclntab)
}

impl GoBinary {
    /// The name of the type whose descriptor the process had at `type_ptr` (as gopanic saw it),
    /// given the process's `mm->start_code` to undo PIE relocation.
    pub fn type_name(&self, type_ptr: u64, start_code: u64) -> Option<String> {
        let bias = self.layout.bias(start_code)?;
        let vaddr = type_ptr.checked_sub(bias)?;
        let mut t = [0u8; 48];
        self.read(vaddr, &mut t)?;
        let tflag = t[20];
        let name_off = i32::from_le_bytes(t[40..44].try_into().ok()?);
        let at = (self.types_base? as i64).checked_add(name_off as i64)? as u64;
        let mut head = [0u8; 12];
        self.read(at, &mut head)?;
        // A name: flags byte, varint length, bytes.
        let (len, n) = uvarint(&head, 1)?;
        let i = 1 + n;
        let mut name = vec![0u8; (len as usize).min(1024)];
        self.read(at + i as u64, &mut name)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        // tflagExtraStar: the name is stored as "*T" for T.
        Some(if tflag & 2 != 0 {
            name.strip_prefix('*').unwrap_or(&name).to_string()
        } else {
            name
        })
    }

    /// The file as it is now (one fstat).
    pub fn file_now(&self) -> Option<FileNow> {
        use std::os::unix::fs::MetadataExt;
        let md = self.file.as_ref()?.metadata().ok()?;
        let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
        Some(FileNow {
            stamp: (md.size(), mtime),
            deleted: md.nlink() == 0,
        })
    }

    /// A new descriptor on the file, while it is held.
    pub fn file_handle(&self) -> Option<File> {
        self.file.as_ref()?.try_clone().ok()
    }

    /// Lets go of the file: no type names from now on, one descriptor fewer.
    pub fn close(&mut self) {
        self.file = None;
    }

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Option<()> {
        let off = self.layout.vaddr_to_offset(vaddr)?;
        self.file.as_ref()?.read_exact_at(buf, off).ok()
    }
}

/// Maps and parses a binary; Ok(None) when it is not Go.
#[cfg(test)]
pub fn open(path: &std::path::Path) -> Result<Option<GoBinary>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let map = crate::read::elf::Mapped::new(&file)?;
    parse(map.bytes(), Some(file)).with_context(|| path.display().to_string())
}
