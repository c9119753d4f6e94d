//! Where an ELF file's bytes land in memory: its loadable segments, which of them hold code,
//! and the load bias of a process that mapped it.
use object::{Object, ObjectSegment};

#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// (file offset, vaddr, file size) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// The lowest executable segment's vaddr: `mm->start_code` minus this is the load bias.
    pub min_exec_vaddr: u64,
    /// (vaddr, file size) of each executable loadable segment: where code can be.
    exec: Vec<(u64, u64)>,
}

impl Layout {
    pub fn of(obj: &object::File<'_>) -> Layout {
        use object::read::elf::ProgramHeader;
        let segments = obj
            .segments()
            .map(|s| (s.file_range().0, s.address(), s.file_range().1))
            .collect();
        let exec: Vec<(u64, u64)> = match obj {
            object::File::Elf64(e) => {
                let endian = e.endian();
                e.elf_program_headers()
                    .iter()
                    .filter(|p| {
                        p.p_type(endian) == object::elf::PT_LOAD
                            && p.p_flags(endian) & object::elf::PF_X != 0
                    })
                    .map(|p| (p.p_vaddr(endian), p.p_filesz(endian)))
                    .collect()
            }
            _ => Vec::new(),
        };
        Layout {
            segments,
            min_exec_vaddr: exec.iter().map(|e| e.0).min().unwrap_or(0),
            exec,
        }
    }

    /// `vaddr` lies in code the file itself holds (an executable segment's file-backed part).
    pub fn is_code(&self, vaddr: u64) -> bool {
        self.exec
            .iter()
            .any(|&(va, len)| va <= vaddr && vaddr < va.saturating_add(len))
    }

    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(_, va, len)| *va <= vaddr && vaddr < va.saturating_add(*len))
            .map(|(off, va, _)| vaddr - va + off)
    }

    /// The load bias of a process that mapped the file's bytes from `offset` at `start` (one
    /// line of /proc/<pid>/maps): mappings start on page boundaries, segments need not.
    pub fn mapping_bias(&self, start: u64, offset: u64) -> Option<u64> {
        let (fo, va, _) = self
            .segments
            .iter()
            .find(|(fo, _, len)| fo & !0xfff <= offset && offset < fo.saturating_add(*len))?;
        let vaddr = va.wrapping_add(offset).wrapping_sub(*fo);
        Some(start.wrapping_sub(vaddr))
    }

    /// How far a process whose `mm->start_code` is `start_code` moved the file (PIE).
    pub fn bias(&self, start_code: u64) -> Option<u64> {
        start_code.checked_sub(self.min_exec_vaddr)
    }
}
