//! A Go binary's loadable image as the runtime sees it: words at virtual addresses with the
//! dynamic linker's R_X86_64_RELATIVE relocations applied (how PIE pointers are filled in), and
//! the runtime's `moduledata`, which describes every table the runtime itself uses.
//!
//! Every read is bounded by the file: an address outside the file's segments, or a string
//! longer than the bytes behind it, reads as nothing.
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags};

use crate::read::elf::Layout;

const R_X86_64_RELATIVE: u32 = 8;

pub struct Image<'a> {
    obj: &'a object::File<'a>,
    bytes: &'a [u8],
    pub layout: Layout,
}

impl<'a> Image<'a> {
    pub fn new(obj: &'a object::File<'a>, bytes: &'a [u8]) -> Image<'a> {
        Image {
            obj,
            bytes,
            layout: Layout::of(obj),
        }
    }

    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.layout.vaddr_to_offset(vaddr)
    }

    /// What the dynamic linker writes at `vaddr`, when a RELATIVE relocation targets it.
    /// Scanned on demand: a handful of lookups per binary, and no table of them all.
    fn relocated(&self, vaddr: u64) -> Option<u64> {
        self.relative().find(|(at, _)| *at == vaddr).map(|r| r.1)
    }

    fn relative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.obj
            .dynamic_relocations()
            .into_iter()
            .flatten()
            .filter(|(_, r)| {
                matches!(r.flags(), RelocationFlags::Elf { r_type } if r_type == R_X86_64_RELATIVE)
            })
            .map(|(off, r)| (off, r.addend() as u64))
    }

    /// The word at `vaddr` as the loaded program sees it.
    pub fn u64(&self, vaddr: u64) -> Option<u64> {
        let off = self.file_offset(vaddr)? as usize;
        let raw = u64::from_le_bytes(self.bytes.get(off..off.checked_add(8)?)?.try_into().ok()?);
        if raw != 0 {
            return Some(raw);
        }
        Some(self.relocated(vaddr).unwrap_or(0))
    }

    /// `len` bytes at `vaddr`, if the file holds them all.
    pub fn slice(&self, vaddr: u64, len: u64) -> Option<&'a [u8]> {
        let off = self.file_offset(vaddr)? as usize;
        self.bytes
            .get(off..off.checked_add(usize::try_from(len).ok()?)?)
    }

    /// From `vaddr` to the end of the section holding it.
    pub fn rest_of_section(&self, vaddr: u64) -> Option<&'a [u8]> {
        let s = self
            .obj
            .sections()
            .find(|s| s.address() <= vaddr && vaddr < s.address().saturating_add(s.size()))?;
        self.slice(vaddr, s.address() + s.size() - vaddr)
    }

    /// A Go string header (pointer, length) at `vaddr`, and its bytes.
    pub fn ptr_string(&self, vaddr: u64) -> Option<String> {
        let (p, n) = (self.u64(vaddr)?, self.u64(vaddr + 8)?);
        Some(String::from_utf8_lossy(self.slice(p, n)?).into_owned())
    }

    /// The address of the runtime's first `moduledata`: its symbol, the `.go.module` section
    /// (Go 1.26+), or the data word that points at `pclntab` (moduledata's first field).
    pub fn moduledata(&self, symbol: Option<u64>, pclntab: Option<u64>) -> Option<u64> {
        symbol
            .or_else(|| self.obj.section_by_name(".go.module").map(|s| s.address()))
            .or_else(|| self.find_pointer_to(pclntab?))
    }

    /// A pointer-sized word holding `target` in a data section.
    fn find_pointer_to(&self, target: u64) -> Option<u64> {
        if let Some((at, _)) = self.relative().find(|(_, v)| *v == target) {
            return Some(at);
        }
        for name in [".noptrdata", ".data"] {
            let Some(s) = self.obj.section_by_name(name) else {
                continue;
            };
            let Ok(data) = s.data() else {
                continue;
            };
            for (i, w) in data.chunks_exact(8).enumerate() {
                if u64::from_le_bytes(w.try_into().unwrap()) == target {
                    return Some(s.address() + 8 * i as u64);
                }
            }
        }
        None
    }

    /// Addresses in the file's read-only data that start what looks like a pclntab header
    /// (magic, zero padding, quantum 1, pointer size 8): how Go's own tools find the table of
    /// an externally linked binary that kept neither the section nor the symbol. Candidates
    /// only; the caller validates each whole.
    pub fn scan_pclntab(&self) -> Vec<u64> {
        const MAGICS: [u32; 3] = [0xffff_fffa, 0xffff_fff0, 0xffff_fff1];
        let mut found = Vec::new();
        for s in self.obj.sections() {
            let name = s.name().unwrap_or("");
            if !(name.starts_with(".data.rel.ro") || name.starts_with(".rodata")) {
                continue;
            }
            let Ok(data) = s.data() else { continue };
            for (i, w) in data.chunks_exact(8).enumerate() {
                let magic = u32::from_le_bytes(w[..4].try_into().unwrap());
                if MAGICS.contains(&magic) && w[4] == 0 && w[5] == 0 && w[6] == 1 && w[7] == 8 {
                    found.push(s.address() + 8 * i as u64);
                    if found.len() >= 16 {
                        return found;
                    }
                }
            }
        }
        found
    }

    /// The address of symbol `name`, when the file has a symbol table.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.obj
            .symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    }

    /// `vaddr` lies in a loaded section that is not code.
    pub fn is_data(&self, vaddr: u64) -> bool {
        use object::SectionKind as K;
        self.obj.sections().any(|s| {
            s.address() <= vaddr
                && vaddr < s.address().saturating_add(s.size())
                && matches!(
                    s.kind(),
                    K::ReadOnlyData | K::ReadOnlyDataWithRel | K::ReadOnlyString | K::Data
                )
        })
    }

    /// Text symbols whose name starts with `runtime.`: (name, address).
    pub fn runtime_symbols(&self) -> Vec<(&'a str, u64)> {
        self.obj
            .symbols()
            .filter_map(|s| Some((s.name().ok()?, s.address())))
            .filter(|(n, _)| n.starts_with("runtime."))
            .collect()
    }
}

/// `moduledata` fields crashwatch reads (their offsets are the same from Go 1.16 to 1.27):
/// `pcHeader *pcHeader` at 0, `funcnametab []byte` at 8, `cutab []uint32` at 32, `filetab
/// []byte` at 56, `pctab []byte` at 80, `pclntable []byte` at 104,
/// `ftab []functab` at 128, `text` at 176.
pub struct ModuleData {
    pub pc_header: u64,
    pub funcnametab: u64,
    pub cutab: u64,
    pub filetab: u64,
    pub pctab: u64,
    pub pclntable: u64,
    pub ftab: u64,
    pub ftab_len: u64,
    pub text: u64,
}

impl ModuleData {
    pub fn read(img: &Image<'_>, at: u64) -> Option<ModuleData> {
        Some(ModuleData {
            pc_header: img.u64(at)?,
            funcnametab: img.u64(at + 8)?,
            cutab: img.u64(at + 32)?,
            filetab: img.u64(at + 56)?,
            pctab: img.u64(at + 80)?,
            pclntable: img.u64(at + 104)?,
            ftab: img.u64(at + 128)?,
            ftab_len: img.u64(at + 136)?,
            text: img.u64(at + 176)?,
        })
    }
}
