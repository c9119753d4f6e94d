//! Module files: every ELF file a stack passes through, read once per identity however many
//! of its processes crash, and kept while among the most recently used within a byte budget
//! (`--symbol-cache-bytes`).
//!
//! A file is mapped, never read into memory (see `elf::mapped`); what a module costs is the
//! indexes built over it: the blazesym symbolizer's symbol and DWARF indexes, and Go's
//! function table. Those are estimated from the sizes of the sections they index.
use std::{
    collections::HashMap,
    fs::File,
    ops::{Deref, Range},
    os::fd::AsRawFd,
    rc::Rc,
    sync::Arc,
};

use object::{Object, ObjectSection};

use crate::read::elf::{FileId, Layout, Mapped};

/// A piece of a mapped module file: what framehop reads unwind tables from.
#[derive(Clone)]
pub struct Section {
    map: Arc<Mapped>,
    range: Range<usize>,
}

impl Deref for Section {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.bytes().get(self.range.clone()).unwrap_or(&[])
    }
}

/// Where a section sits in the file and in the module's own addresses.
#[derive(Clone, Debug)]
pub struct SectionAt {
    pub svma: Range<u64>,
    pub file: Range<usize>,
}

pub struct ModuleFile {
    pub id: FileId,
    pub build_id: Option<Vec<u8>>,
    /// Kept open: blazesym reads the file at `/proc/self/fd/<fd>`.
    file: File,
    map: Arc<Mapped>,
    pub layout: Layout,
    /// Lowest and highest addresses its loadable segments span, in its own addresses.
    pub span: Range<u64>,
    pub text: Option<SectionAt>,
    pub eh_frame: Option<SectionAt>,
    pub eh_frame_hdr: Option<SectionAt>,
    pub debug_frame: Option<SectionAt>,
    /// `PT_DYNAMIC`'s address, when it has one.
    pub dynamic: Option<u64>,
    /// Go's function table, when the file has one.
    pub go: Option<crate::read::gobin::lines::Table>,
    /// blazesym, created on first use.
    native: std::cell::OnceCell<blazesym::symbolize::Symbolizer>,
    /// Estimated heap bytes the module's indexes take.
    pub bytes: usize,
}

impl ModuleFile {
    /// None for anything that is not a readable 64-bit ELF file.
    pub fn open(file: File) -> Result<ModuleFile, &'static str> {
        let md = file.metadata().map_err(|_| "cannot stat the file")?;
        let id = FileId::of(&md);
        let map = Arc::new(Mapped::new(&file).map_err(|_| "cannot map the file")?);
        let bytes = map.bytes();
        let obj = object::File::parse(bytes).map_err(|_| "not an ELF file")?;
        if !matches!(obj, object::File::Elf64(_)) {
            return Err("not a 64-bit ELF file");
        }
        let layout = Layout::of(&obj);
        let section = |name: &str| {
            let s = obj.section_by_name(name)?;
            let (off, len) = s.file_range()?;
            let file = usize::try_from(off).ok()?..usize::try_from(off.checked_add(len)?).ok()?;
            if file.end > bytes.len() {
                return None;
            }
            Some(SectionAt {
                svma: s.address()..s.address().saturating_add(s.size()),
                file,
            })
        };
        let span = {
            use object::ObjectSegment;
            let lo = obj.segments().map(|s| s.address()).min().unwrap_or(0);
            let hi = obj
                .segments()
                .map(|s| s.address().saturating_add(s.size()))
                .max()
                .unwrap_or(0);
            lo..hi
        };
        let go = crate::read::gobin::lines::Table::locate(&obj, bytes);
        let dynamic = match &obj {
            object::File::Elf64(e) => {
                use object::read::elf::ProgramHeader;
                let endian = e.endian();
                e.elf_program_headers()
                    .iter()
                    .find(|p| p.p_type(endian) == object::elf::PT_DYNAMIC)
                    .map(|p| p.p_vaddr(endian))
            }
            _ => None,
        };
        let indexed: u64 = [".symtab", ".dynsym", ".debug_info", ".debug_line"]
            .iter()
            .filter_map(|n| obj.section_by_name(n).map(|s| s.size()))
            .sum();
        let est = 4096 + (indexed / 2) as usize + go.as_ref().map_or(0, |g| g.bytes());
        Ok(ModuleFile {
            id,
            build_id: obj.build_id().ok().flatten().map(|b| b.to_vec()),
            text: section(".text"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame"),
            span,
            layout,
            dynamic,
            go,
            native: std::cell::OnceCell::new(),
            bytes: est,
            file,
            map: map.clone(),
        })
        .and_then(|m| {
            if map.damaged() {
                Err("the file changed size while being read")
            } else {
                Ok(m)
            }
        })
    }

    pub fn section(&self, at: &Option<SectionAt>) -> Option<Section> {
        at.as_ref().map(|a| Section {
            map: self.map.clone(),
            range: a.file.clone(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }

    /// The file as blazesym opens it: through our own descriptor, so it reads this very file.
    pub fn native(&self) -> (&blazesym::symbolize::Symbolizer, String) {
        let sym = self.native.get_or_init(|| {
            blazesym::symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build()
        });
        (sym, format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Module files by identity, least recently used dropped first past the byte budget or past
/// [`FILES_MAX`] files (each holds a mapping and a descriptor).
pub struct FileCache {
    budget: usize,
    used: usize,
    tick: u64,
    files: HashMap<FileId, (Rc<ModuleFile>, u64)>,
    /// Files that failed to parse, by identity, with why (bounded like `files`).
    bad: HashMap<FileId, &'static str>,
    /// Files parsed so far (a cold lookup is one that parsed one).
    parsed: u64,
}

const BAD_MAX: usize = 4096;

pub const FILES_MAX: usize = crate::read::elf::mapped::SYMBOLIZER_SHARE;

impl FileCache {
    pub fn new(budget: usize) -> FileCache {
        FileCache {
            budget,
            used: 0,
            tick: 0,
            files: HashMap::new(),
            bad: HashMap::new(),
            parsed: 0,
        }
    }

    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn parsed(&self) -> u64 {
        self.parsed
    }

    pub fn get(&mut self, id: &FileId) -> Option<Rc<ModuleFile>> {
        self.tick += 1;
        let tick = self.tick;
        self.files.get_mut(id).map(|(m, t)| {
            *t = tick;
            m.clone()
        })
    }

    /// The module in `file` (opened by the caller through a trusted path), from the cache
    /// when its identity is known.
    pub fn load(&mut self, file: File) -> Result<Rc<ModuleFile>, &'static str> {
        let id = FileId::of(&file.metadata().map_err(|_| "cannot stat the file")?);
        if let Some(m) = self.get(&id) {
            return Ok(m);
        }
        if let Some(why) = self.bad.get(&id) {
            return Err(why);
        }
        self.parsed += 1;
        match ModuleFile::open(file) {
            Ok(m) => Ok(self.insert(m)),
            Err(why) => {
                if self.bad.len() >= BAD_MAX {
                    self.bad.clear();
                }
                self.bad.insert(id, why);
                Err(why)
            }
        }
    }

    fn insert(&mut self, m: ModuleFile) -> Rc<ModuleFile> {
        let m = Rc::new(m);
        self.used += m.bytes;
        while (self.used > self.budget || self.files.len() >= FILES_MAX) && !self.files.is_empty() {
            let oldest = self
                .files
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k);
            let Some(k) = oldest else { break };
            if let Some((old, _)) = self.files.remove(&k) {
                self.used -= old.bytes;
            }
        }
        self.tick += 1;
        self.files.insert(m.id, (m.clone(), self.tick));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache fed more distinct files than its share of mapping slots keeps to its share,
    /// and the slots left still map files (the Go prober's).
    #[test]
    fn a_full_cache_leaves_mapping_slots_to_others() {
        let dir = std::env::temp_dir().join(format!("cw-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elf = std::fs::read("/bin/true").unwrap();
        let mut cache = FileCache::new(usize::MAX);
        for i in 0..FILES_MAX + 50 {
            let p = dir.join(format!("m{i}"));
            std::fs::write(&p, &elf).unwrap();
            cache.load(File::open(&p).unwrap()).unwrap();
        }
        assert_eq!(cache.files.len(), FILES_MAX);
        let others: Vec<Mapped> = (0..FILES_MAX)
            .map(|_| Mapped::new(&File::open("/bin/true").unwrap()).unwrap())
            .collect();
        assert_eq!(others.len(), FILES_MAX);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
