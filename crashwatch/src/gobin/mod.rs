//! Reading Go binaries without running them: which runtime functions to probe (from the symbol
//! table, or from `.gopclntab` when `-ldflags=-s -w` stripped it), the build info, and the names
//! of the types panic values had. Works on PIE (applies the binary's RELATIVE relocations to the
//! pointers it reads) and on Go 1.26+, whose pclntab leaves the text base to moduledata.
pub mod buildinfo;
pub mod pclntab;

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt};

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags};

pub use buildinfo::BuildInfo;

/// Runtime functions crashwatch probes. `runtime.fatal` and `runtime.throw` take the message
/// as their string argument. What the runtime prints to stderr passes through
/// `runtime.writeErrData` (Go 1.23+, stderr only) or, before it, the assembly syscall wrapper
/// `runtime.write1(fd, ...)` (filtered to fd 2 in the kernel; `runtime.write` gets inlined).
/// `gwrite` would also see `runtime.Stack` filling a buffer.
pub const PROBED: [&str; 6] = [
    "runtime.gopanic",
    "runtime.fatalpanic",
    "runtime.throw",
    "runtime.fatal",
    "runtime.writeErrData",
    "runtime.write1",
];

/// How many of [`PROBED`] a binary gets: one of the two output paths.
pub const PROBES_PER_BINARY: usize = 5;

/// What crashwatch keeps about one Go binary (small: no file contents).
#[derive(Debug)]
pub struct GoBinary {
    pub version: String,
    pub build: BuildInfo,
    /// (function, file offset of its entry) for each of [`PROBED`] found.
    pub probes: Vec<(&'static str, u64)>,
    /// Function addresses came from `.gopclntab` (the symbol table was stripped).
    pub from_pclntab: bool,
    /// Base of the type descriptors' names (moduledata.types).
    types_base: Option<u64>,
    layout: crate::elf::Layout,
    /// An open handle: type names are read on demand, even after the file is deleted.
    file: Option<File>,
}

/// Ok(None): a readable ELF file that is not a Go binary (one section-table look).
pub fn parse(bytes: &[u8], file: Option<File>) -> Result<Option<GoBinary>> {
    let obj = object::File::parse(bytes).context("not a readable ELF file")?;
    let section = |name: &str| obj.section_by_name(name);
    let pcln_sec = section(".gopclntab").or_else(|| section(".data.rel.ro.gopclntab"));
    let info_sec = section(".go.buildinfo");
    if pcln_sec.is_none() && info_sec.is_none() {
        return Ok(None);
    }
    let img = Image::new(&obj, bytes);
    let syms: HashMap<&str, u64> = obj
        .symbols()
        .filter_map(|s| Some((s.name().ok()?, s.address())))
        .filter(|(n, _)| n.starts_with("runtime."))
        .collect();

    let (version, build) = match info_sec.and_then(|s| s.data().ok()) {
        Some(blob) => {
            let (v, m) = buildinfo::read_blob(blob, |p| img.ptr_string(p))?;
            (v, buildinfo::parse_modinfo(&m))
        }
        None => (String::new(), BuildInfo::default()),
    };

    let (moduledata, text_base) = bases(&obj, &img, &syms);

    let mut funcs: HashMap<&'static str, u64> = HashMap::new();
    let mut from_pclntab = false;
    for name in PROBED {
        // Assembly functions carry an ABI suffix in the symbol table, not in pclntab.
        if let Some(&a) = syms
            .get(name)
            .or_else(|| syms.get(format!("{name}.abi0").as_str()))
        {
            funcs.insert(name, a);
        }
    }
    let mut types_base = syms.get("runtime.types").copied();
    if let Some(data) = pcln_sec.as_ref().and_then(|s| s.data().ok()) {
        let tab = pclntab::Pclntab::parse(data, text_base).context("reading .gopclntab")?;
        if types_base.is_none() {
            let off = if tab.layout == pclntab::Layout::Go120 {
                296
            } else {
                280
            };
            types_base = moduledata.and_then(|m| img.u64(m + off));
        }
        if funcs.len() < PROBES_PER_BINARY {
            for (pc, name) in tab.funcs() {
                if let Some(p) = PROBED.iter().find(|p| **p == name) {
                    from_pclntab |= funcs.insert(p, pc).is_none();
                }
            }
        }
    }
    if funcs.contains_key("runtime.writeErrData") {
        funcs.remove("runtime.write1");
    }
    let probes = PROBED
        .iter()
        .filter_map(|p| Some((*p, img.file_offset(*funcs.get(p)?)?)))
        .collect();
    Ok(Some(GoBinary {
        version,
        build,
        probes,
        from_pclntab,
        types_base,
        layout: img.layout,
        file,
    }))
}

/// (moduledata address, text base): from symbols, else `.go.module` (Go 1.26+), else the
/// data word that points at pclntab (moduledata's first field).
fn bases(
    obj: &object::File<'_>,
    img: &Image<'_>,
    syms: &HashMap<&str, u64>,
) -> (Option<u64>, Option<u64>) {
    let pcln_addr = obj
        .section_by_name(".gopclntab")
        .or_else(|| obj.section_by_name(".data.rel.ro.gopclntab"))
        .map(|s| s.address());
    let moduledata = syms
        .get("runtime.firstmoduledata")
        .copied()
        .or_else(|| obj.section_by_name(".go.module").map(|s| s.address()))
        .or_else(|| pcln_addr.and_then(|a| img.find_pointer_to(obj, a)));
    // moduledata: pcHeader, 6 slices, findfunctab, minpc, maxpc, text (+176) ... types
    // (+280 on Go 1.18-1.19, +296 from 1.20, which added covctrs).
    let text_base = syms
        .get("runtime.text")
        .copied()
        .or_else(|| moduledata.and_then(|m| img.u64(m + 176)))
        .or_else(|| obj.section_by_name(".text").map(|s| s.address()));
    (moduledata, text_base)
}

/// Every function in `.gopclntab` as (entry vaddr, size 0, name): names frames of stripped Go
/// binaries. None when the file has no pclntab.
pub fn functions(obj: &object::File<'_>, bytes: &[u8]) -> Option<Vec<(u64, u64, String)>> {
    let sec = obj
        .section_by_name(".gopclntab")
        .or_else(|| obj.section_by_name(".data.rel.ro.gopclntab"))?;
    let img = Image::new(obj, bytes);
    let (_, text_base) = bases(obj, &img, &HashMap::new());
    let tab = pclntab::Pclntab::parse(sec.data().ok()?, text_base).ok()?;
    Some(
        tab.funcs()
            .map(|(pc, name)| (pc, 0, name.to_string()))
            .collect(),
    )
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
        let at = (self.types_base? as i64 + name_off as i64) as u64;
        let mut head = [0u8; 12];
        self.read(at, &mut head)?;
        // A name: flags byte, varint length, bytes.
        let (mut len, mut shift, mut i) = (0usize, 0, 1);
        loop {
            let b = *head.get(i)?;
            len |= ((b & 0x7f) as usize) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let mut name = vec![0u8; len.min(1024)];
        self.read(at + i as u64, &mut name)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        // tflagExtraStar: the name is stored as "*T" for T.
        Some(if tflag & 2 != 0 {
            name.strip_prefix('*').unwrap_or(&name).to_string()
        } else {
            name
        })
    }

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Option<()> {
        let off = self.layout.vaddr_to_offset(vaddr)?;
        self.file.as_ref()?.read_exact_at(buf, off).ok()
    }
}

/// A file's loadable image: segments, and the pointers its relocations fill in.
struct Image<'a> {
    bytes: &'a [u8],
    layout: crate::elf::Layout,
    /// R_X86_64_RELATIVE: where the loader writes base + addend (PIE pointers).
    relative: HashMap<u64, u64>,
}

impl<'a> Image<'a> {
    fn new(obj: &object::File<'a>, bytes: &'a [u8]) -> Image<'a> {
        const R_X86_64_RELATIVE: u32 = 8;
        let relative = obj
            .dynamic_relocations()
            .into_iter()
            .flatten()
            .filter(|(_, r)| matches!(r.flags(), RelocationFlags::Elf { r_type } if r_type == R_X86_64_RELATIVE))
            .map(|(off, r)| (off, r.addend() as u64))
            .collect();
        Image {
            bytes,
            layout: crate::elf::Layout::of(obj),
            relative,
        }
    }

    fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.layout.vaddr_to_offset(vaddr)
    }

    fn u64(&self, vaddr: u64) -> Option<u64> {
        if let Some(&v) = self.relative.get(&vaddr) {
            return Some(v);
        }
        let off = self.file_offset(vaddr)? as usize;
        Some(u64::from_le_bytes(
            self.bytes.get(off..off + 8)?.try_into().ok()?,
        ))
    }

    /// A Go string header (pointer, length) at `vaddr`, and its bytes.
    fn ptr_string(&self, vaddr: u64) -> Option<String> {
        let (p, n) = (self.u64(vaddr)?, self.u64(vaddr + 8)? as usize);
        let off = self.file_offset(p)? as usize;
        Some(String::from_utf8_lossy(self.bytes.get(off..off + n)?).into_owned())
    }

    /// The address of a pointer-sized word holding `target` in a writable data section
    /// (how a stripped binary's moduledata is found: its first field points at pclntab).
    fn find_pointer_to(&self, obj: &object::File<'a>, target: u64) -> Option<u64> {
        if let Some((&at, _)) = self.relative.iter().find(|(_, &v)| v == target) {
            return Some(at);
        }
        for name in [".noptrdata", ".data"] {
            let s = obj.section_by_name(name)?;
            let data = s.data().ok()?;
            for (i, w) in data.chunks_exact(8).enumerate() {
                if u64::from_le_bytes(w.try_into().unwrap()) == target {
                    return Some(s.address() + 8 * i as u64);
                }
            }
        }
        None
    }
}

/// Reads and parses a binary; Ok(None) when it is not Go.
#[cfg(test)]
pub fn open(path: &std::path::Path) -> Result<Option<GoBinary>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = File::open(path).ok();
    parse(&bytes, file).with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobuild;
    use gobuild::{build, Flavour, FLAVOURS, VERSIONS};

    fn symbols(path: &std::path::Path) -> HashMap<String, u64> {
        let bytes = std::fs::read(path).unwrap();
        let obj = object::File::parse(&*bytes).unwrap();
        obj.symbols()
            .filter_map(|s| Some((s.name().ok()?.to_string(), s.address())))
            .collect()
    }

    #[test]
    fn every_version_and_flavour_yields_probes_and_build_info() {
        let (_, rev) = gobuild::source();
        for v in VERSIONS {
            let reference = open(&build(v, Flavour::Static)).unwrap().unwrap();
            for f in FLAVOURS {
                let path = build(v, f);
                let g = open(&path)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{v} {f:?} not recognised as Go"));
                assert!(
                    g.version.starts_with(&format!("go{v}")),
                    "{v} {f:?}: version {}",
                    g.version
                );
                assert_eq!(
                    g.probes.len(),
                    PROBES_PER_BINARY,
                    "{v} {f:?}: {:?}",
                    g.probes
                );
                let output = if v >= "1.23" {
                    "runtime.writeErrData"
                } else {
                    "runtime.write1"
                };
                assert!(
                    g.probes.iter().any(|p| p.0 == output),
                    "{v} {f:?}: {:?}",
                    g.probes
                );
                assert_eq!(
                    g.build.vcs_revision.as_deref(),
                    Some(rev.as_str()),
                    "{v} {f:?}"
                );
                assert_eq!(g.build.main_module.as_deref(), Some("example.com/gocrash"));
                assert_eq!(
                    g.build.path.as_deref(),
                    Some("example.com/gocrash"),
                    "{v} {f:?}"
                );
                assert_eq!(g.build.goos.as_deref(), Some("linux"), "{v} {f:?}");
                assert_eq!(g.build.cgo_enabled, Some(f == Flavour::Cgo), "{v} {f:?}");
                assert_eq!(g.from_pclntab, f == Flavour::Stripped, "{v} {f:?}");
                if f == Flavour::Stripped {
                    // Same code, no symbols: pclntab must find the very same entry points.
                    assert_eq!(g.probes, reference.probes, "{v}: pclntab vs symtab");
                    assert_eq!(g.build.ldflags.as_deref(), Some("-s -w"));
                }
            }
        }
    }

    #[test]
    fn type_names_from_descriptors() {
        // Type descriptors have no symbols of their own; itabs do (until Go 1.27, whose
        // type names the integration tests check from real panics) and point at them.
        let mut checked = 0;
        for v in VERSIONS {
            for f in [Flavour::Static, Flavour::Pie] {
                let path = build(v, f);
                let syms = symbols(&path);
                let bytes = std::fs::read(&path).unwrap();
                let obj = object::File::parse(&*bytes).unwrap();
                let img = Image::new(&obj, &bytes);
                let g = open(&path).unwrap().unwrap();
                for (itab, want) in [
                    ("*errors.errorString,error", "*errors.errorString"),
                    ("runtime.errorString,error", "runtime.errorString"),
                ] {
                    let Some(at) = syms
                        .get(&format!("go:itab.{itab}"))
                        .or_else(|| syms.get(&format!("go.itab.{itab}")))
                    else {
                        continue;
                    };
                    let ty = img.u64(at + 8).unwrap();
                    // Loaded at its link address: start_code equals the text segment's vaddr.
                    assert_eq!(
                        g.type_name(ty, g.layout.min_exec_vaddr).as_deref(),
                        Some(want),
                        "{v} {f:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 20, "only {checked} type names checked");
    }

    #[test]
    fn pclntab_names_functions_like_the_symbol_table() {
        for v in VERSIONS {
            let path = build(v, Flavour::Static);
            let syms = symbols(&path);
            let bytes = std::fs::read(&path).unwrap();
            let obj = object::File::parse(&*bytes).unwrap();
            let data = obj.section_by_name(".gopclntab").unwrap().data().unwrap();
            let tab = pclntab::Pclntab::parse(data, syms.get("runtime.text").copied()).unwrap();
            let main = syms["main.main"];
            assert_eq!(tab.func_at(main + 3), Some(("main.main", main)), "{v}");
            assert!(tab.len() > 1000, "{v}: {} functions", tab.len());
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let path = build("1.21", Flavour::Static);
        let bytes = std::fs::read(&path).unwrap();
        assert!(parse(&bytes[..4096], None).is_err(), "truncated ELF");
        assert!(parse(b"\x7fELF garbage", None).is_err());
        let not_go = std::fs::read("/bin/sh").unwrap();
        assert!(parse(&not_go, None).unwrap().is_none());
        assert!(pclntab::Pclntab::parse(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8], Some(1)).is_err());
    }
}
