//! Go's pclntab: function entry points and names, even in stripped binaries.
//!
//! Written here because no maintained crate reads it (blazesym and gimli read ELF/DWARF only,
//! and `-ldflags=-s -w` removes both the symbol table and DWARF, but never the pclntab). Only
//! the function table (entry PCs and names, for uprobes and for naming frames), each
//! function's file and line tables (`pcfile`, `pcln`) and its stack-pointer table (`pcsp`, to
//! unwind Go frames the way the runtime does), all decoded as the runtime's `pcvalue` does,
//! are read. Layouts:
//! Go 1.16-1.17 (magic 0xfffffffa, absolute entries), Go 1.18-1.19 (0xfffffff0) and 1.20+
//! (0xfffffff1), whose entries are offsets from `textStart` — which Go 1.26 writes as 0, leaving
//! the text base to the caller (`runtime.text` or moduledata).
//!
//! The table decides where crashwatch puts breakpoints into other people's programs, so it is
//! validated whole before any entry is used: the header's fixed bytes, every offset and count
//! against the data's length, entries in ascending order and inside the binary's code. The
//! runtime itself reads the table through `moduledata` and checks only part of the header, so
//! a binary whose header offsets are damaged still runs: [`Pclntab::from_moduledata`] reads the
//! table the way the runtime does.
use anyhow::{bail, ensure, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Go116,
    Go118,
    Go120,
}

impl Layout {
    /// Bytes of one function table entry: (entry, funcoff).
    fn entry_size(self) -> usize {
        match self {
            Layout::Go116 => 16,
            _ => 8,
        }
    }
}

pub struct Pclntab<'a> {
    data: &'a [u8],
    pub layout: Layout,
    nfunc: usize,
    /// Base that function entry offsets are relative to (0 for Go 1.16's absolute entries).
    pub text_start: u64,
    funcname: usize,
    pcln: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
}

/// A validated table's parts by offset into the bytes it was read from, kept so a lookup does
/// not validate the whole table again.
#[derive(Clone, Debug)]
pub struct Saved {
    start: usize,
    len: usize,
    layout: Layout,
    nfunc: usize,
    text_start: u64,
    funcname: usize,
    pcln: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
}

impl Saved {
    /// The table again, over the same bytes it was saved from.
    pub fn open<'a>(&self, whole: &'a [u8]) -> Option<Pclntab<'a>> {
        Some(Pclntab {
            data: whole.get(self.start..self.start.checked_add(self.len)?)?,
            layout: self.layout,
            nfunc: self.nfunc,
            text_start: self.text_start,
            funcname: self.funcname,
            pcln: self.pcln,
            cutab: self.cutab,
            filetab: self.filetab,
            pctab: self.pctab,
        })
    }
}

/// Where a program counter is in Go source: its function, and the file and line when the
/// tables have them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place<'a> {
    pub function: &'a str,
    pub entry: u64,
    pub file: Option<&'a str>,
    pub line: Option<u32>,
}

/// A function's `_func` record: its entry and where its variable-length parts start.
pub struct FuncRec {
    pub entry: u64,
    npcdata: u32,
    nfuncdata: u8,
    vars: usize,
}

/// How to step out of a Go frame (see [`Pclntab::frame_rule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRule {
    pub sp_delta: u32,
    pub top: bool,
    pub sp_write: bool,
}

/// Where the table's parts are, as byte offsets into the data that starts at its header.
struct Parts {
    nfunc: u64,
    funcname: u64,
    pcln: u64,
    text_start: u64,
    cutab: u64,
    filetab: u64,
    pctab: u64,
}

/// The header's magic, checked as the runtime checks it (`moduledataverify1`).
fn layout_of(data: &[u8]) -> Result<Layout> {
    ensure!(
        data.len() >= 64,
        "pclntab of {} bytes is too short",
        data.len()
    );
    let layout = match u32_at(data, 0)? {
        0xffff_fffa => Layout::Go116,
        0xffff_fff0 => Layout::Go118,
        0xffff_fff1 => Layout::Go120,
        m => bail!("unknown pclntab magic {m:#x}"),
    };
    ensure!(
        data[4] == 0 && data[5] == 0,
        "pclntab header padding is not zero"
    );
    // x86-64: one-byte PC quantum, 8-byte pointers.
    ensure!(
        data[6] == 1 && data[7] == 8,
        "pclntab quantum {} / pointer size {} are not amd64's",
        data[6],
        data[7]
    );
    Ok(layout)
}

impl<'a> Pclntab<'a> {
    /// Reads the table from its header. `header_text` is the header's `textStart` as the
    /// loader sees it (relocations applied); `text_base` is the text base from `runtime.text`
    /// or moduledata: it fills a zero `textStart` (Go 1.26+) and must agree with a set one.
    /// `is_code` tells whether an address is in the binary's code.
    pub fn parse(
        data: &'a [u8],
        header_text: Option<u64>,
        text_base: Option<u64>,
        is_code: &dyn Fn(u64) -> bool,
    ) -> Result<Pclntab<'a>> {
        let layout = layout_of(data)?;
        let word = |i: usize| u64_at(data, 8 + 8 * i);
        let parts = match layout {
            Layout::Go116 => Parts {
                nfunc: word(0)?,
                funcname: word(2)?,
                pcln: word(6)?,
                text_start: 0,
                cutab: word(3)?,
                filetab: word(4)?,
                pctab: word(5)?,
            },
            _ => {
                let text_start = match (header_text.filter(|&t| t != 0), text_base) {
                    (Some(h), Some(b)) if h != b => {
                        bail!("pclntab textStart {h:#x} disagrees with the text base {b:#x}")
                    }
                    (Some(h), _) => h,
                    (None, Some(b)) => b,
                    (None, None) => bail!("pclntab has textStart 0 and no text base was found"),
                };
                Parts {
                    nfunc: word(0)?,
                    funcname: word(3)?,
                    pcln: word(7)?,
                    text_start,
                    cutab: word(4)?,
                    filetab: word(5)?,
                    pctab: word(6)?,
                }
            }
        };
        Self::validated(data, layout, parts, is_code).context("pclntab header")
    }

    /// Reads the table the way the runtime does, from `moduledata`'s slices (addresses, here
    /// made relative to `header`, the address `data` starts at): `funcnametab`, `pclntable`,
    /// `ftab` (whose length counts the end marker) and `text`.
    pub fn from_moduledata(
        data: &'a [u8],
        header: u64,
        md: &super::image::ModuleData,
        is_code: &dyn Fn(u64) -> bool,
    ) -> Result<Pclntab<'a>> {
        let layout = layout_of(data)?;
        ensure!(
            md.pc_header == header,
            "moduledata points at a pclntab at {:#x}, not {header:#x}",
            md.pc_header
        );
        ensure!(
            md.ftab == md.pclntable,
            "moduledata's ftab does not start pclntable"
        );
        let rel = |a: u64, what: &str| {
            a.checked_sub(header)
                .with_context(|| format!("moduledata's {what} lies before the pclntab"))
        };
        let parts = Parts {
            nfunc: md
                .ftab_len
                .checked_sub(1)
                .context("moduledata's ftab is empty")?,
            funcname: rel(md.funcnametab, "funcnametab")?,
            pcln: rel(md.pclntable, "pclntable")?,
            text_start: if layout == Layout::Go116 { 0 } else { md.text },
            cutab: rel(md.cutab, "cutab")?,
            filetab: rel(md.filetab, "filetab")?,
            pctab: rel(md.pctab, "pctab")?,
        };
        Self::validated(data, layout, parts, is_code).context("pclntab through moduledata")
    }

    fn validated(
        data: &'a [u8],
        layout: Layout,
        p: Parts,
        is_code: &dyn Fn(u64) -> bool,
    ) -> Result<Pclntab<'a>> {
        let len = data.len() as u64;
        ensure!(
            p.funcname < len,
            "funcname offset {:#x} out of range",
            p.funcname
        );
        ensure!(
            p.pcln < len,
            "function table offset {:#x} out of range",
            p.pcln
        );
        // nfunc+1 entries must fit before the end: bounded by the data, not by the header.
        let room = (len - p.pcln) / layout.entry_size() as u64;
        ensure!(
            p.nfunc > 0 && p.nfunc < room,
            "{} functions do not fit in {} bytes",
            p.nfunc,
            len - p.pcln
        );
        let t = Pclntab {
            data,
            layout,
            nfunc: p.nfunc as usize,
            text_start: p.text_start,
            funcname: p.funcname as usize,
            pcln: p.pcln as usize,
            // Line tables are optional extras: out-of-range offsets leave frames without
            // file and line (every read below is bounds-checked), never the table unusable.
            cutab: p.cutab.min(len) as usize,
            filetab: p.filetab.min(len) as usize,
            pctab: p.pctab.min(len) as usize,
        };
        let funcs_room = len - p.pcln;
        let mut prev = 0;
        for i in 0..=t.nfunc {
            let (pc, off) = t.entry(i)?;
            ensure!(pc >= prev, "function entries out of order at {i}");
            if i < t.nfunc {
                ensure!(
                    (off as u64) < funcs_room,
                    "function {i}'s record offset out of range"
                );
            }
            prev = pc;
        }
        let (first, _) = t.entry(0)?;
        ensure!(
            is_code(first) && is_code(prev.saturating_sub(1)),
            "function entries {first:#x}..{prev:#x} lie outside the binary's code"
        );
        Ok(t)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// (entry PC, offset of the _func record) of function `i`; `i == nfunc` is the end marker.
    fn entry(&self, i: usize) -> Result<(u64, usize)> {
        match self.layout {
            Layout::Go116 => {
                let at = self.pcln + 16 * i;
                Ok((u64_at(self.data, at)?, u64_at(self.data, at + 8)? as usize))
            }
            _ => {
                let at = self.pcln + 8 * i;
                let off = u32_at(self.data, at)? as u64;
                Ok((self.text_start + off, u32_at(self.data, at + 4)? as usize))
            }
        }
    }

    fn name_of(&self, funcoff: usize) -> Result<&'a str> {
        let rec = self.pcln + funcoff;
        let name_off = match self.layout {
            Layout::Go116 => u32_at(self.data, rec + 8)?,
            _ => u32_at(self.data, rec + 4)?,
        };
        self.name_at(name_off)
    }

    /// The function name at `name_off` in the name table.
    pub(super) fn name_at(&self, name_off: u32) -> Result<&'a str> {
        let start = self.funcname + name_off as usize;
        let rest = self
            .data
            .get(start..)
            .ok_or_else(|| anyhow::anyhow!("function name past the end"))?;
        // Names are short; a missing terminator within 4 KiB is damage.
        let rest = &rest[..rest.len().min(4096)];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .context("function name without its terminator")?;
        Ok(std::str::from_utf8(&rest[..end])?)
    }

    /// The `_func` record of the function containing `pc`: where its variable-length
    /// `pcdata` and `funcdata` offsets are (Go 1.18+ only: 1.16-1.17 hold funcdata as
    /// pointers).
    pub(super) fn func_of(&self, pc: u64) -> Option<FuncRec> {
        let (_, entry, off) = self.index_at(pc)?;
        let rec = self.pcln.checked_add(off)?;
        let fixed = match self.layout {
            Layout::Go116 => return None,
            Layout::Go118 => 40,
            Layout::Go120 => 44,
        };
        Some(FuncRec {
            entry,
            npcdata: u32_at(self.data, rec + 28).ok()?,
            nfuncdata: *self.data.get(rec + fixed - 1)?,
            vars: rec + fixed,
        })
    }

    /// Table `table` of the function's `pcdata` at `pc`.
    pub(super) fn pcdata(&self, f: &FuncRec, table: u32, pc: u64) -> Option<i32> {
        if table >= f.npcdata {
            return None;
        }
        let off = u32_at(self.data, f.vars + 4 * table as usize).ok()?;
        self.pcvalue(off, f.entry, pc)
    }

    /// The function's `funcdata` slot `slot`: an offset from `go:func.*`.
    pub(super) fn funcdata(&self, f: &FuncRec, slot: u8) -> Option<u32> {
        if slot >= f.nfuncdata {
            return None;
        }
        let at = f.vars + 4 * (f.npcdata as usize).checked_add(slot as usize)?;
        u32_at(self.data, at).ok().filter(|&o| o != u32::MAX)
    }

    /// Every function: (entry PC, name).
    pub fn funcs(&self) -> impl Iterator<Item = (u64, &'a str)> + '_ {
        (0..self.nfunc).filter_map(|i| {
            let (pc, off) = self.entry(i).ok()?;
            Some((pc, self.name_of(off).ok()?))
        })
    }

    /// Its parts by offset into `whole`, the bytes its data is a slice of.
    pub fn save(&self, whole: &[u8]) -> Option<Saved> {
        let start = (self.data.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
        (start + self.data.len() <= whole.len()).then_some(Saved {
            start,
            len: self.data.len(),
            layout: self.layout,
            nfunc: self.nfunc,
            text_start: self.text_start,
            funcname: self.funcname,
            pcln: self.pcln,
            cutab: self.cutab,
            filetab: self.filetab,
            pctab: self.pctab,
        })
    }

    /// The function containing `pc` and, where the tables say, its file and line there.
    pub fn place(&self, pc: u64) -> Option<Place<'a>> {
        let (_, entry, off) = self.index_at(pc)?;
        let function = self.name_of(off).ok()?;
        let rec = self.pcln.checked_add(off)?;
        // _func: pcfile, pcln and cuOffset words (Go 1.16 has an 8-byte entry first).
        let (pcfile_at, cu_at) = match self.layout {
            Layout::Go116 => (rec + 24, rec + 36),
            _ => (rec + 20, rec + 32),
        };
        let pcfile = u32_at(self.data, pcfile_at).ok()?;
        let pcln = u32_at(self.data, pcfile_at + 4).ok()?;
        let cu = u32_at(self.data, cu_at).ok()?;
        let line = self
            .pcvalue(pcln, entry, pc)
            .and_then(|l| u32::try_from(l).ok());
        let file = self
            .pcvalue(pcfile, entry, pc)
            .and_then(|n| u32::try_from(n).ok())
            .and_then(|n| self.file_name(cu, n));
        Some(Place {
            function,
            entry,
            file,
            line,
        })
    }

    /// How the runtime itself steps out of the frame of the function containing `pc`: the
    /// `pcsp` table's stack-pointer delta there (return address at `sp + delta`), and the
    /// function's flags (`TOPFRAME`: nothing called it; `SPWRITE`: it moves SP by hand, so
    /// no delta describes its caller's frame).
    pub fn frame_rule(&self, pc: u64) -> Option<FrameRule> {
        let (_, entry, off) = self.index_at(pc)?;
        let rec = self.pcln.checked_add(off)?;
        let (pcsp_at, flag_at) = match self.layout {
            // 1.16 has padding where 1.17 put the flag: no flags, as the runtime had none.
            Layout::Go116 => (rec + 20, rec + 41),
            Layout::Go118 => (rec + 16, rec + 37),
            Layout::Go120 => (rec + 16, rec + 41),
        };
        let pcsp = u32_at(self.data, pcsp_at).ok()?;
        let flag = *self.data.get(flag_at)?;
        let sp_delta = u32::try_from(self.pcvalue(pcsp, entry, pc)?).ok()?;
        Some(FrameRule {
            sp_delta,
            top: flag & 1 != 0,
            sp_write: flag & 2 != 0,
        })
    }

    /// The value a pc-value table starting at `off` in the pctab holds at `pc`
    /// (the runtime's `pcvalue`: zig-zag varint value deltas, varint pc deltas).
    fn pcvalue(&self, off: u32, entry: u64, pc: u64) -> Option<i32> {
        if off == 0 {
            return None;
        }
        let mut p = self.pctab.checked_add(off as usize)?;
        let (mut at, mut val) = (entry, -1i32);
        // A table has an entry per value change: bounded by the bytes left, checked each step.
        for first in std::iter::once(true).chain(std::iter::repeat(false)) {
            let (uv, n) = super::uvarint(self.data, p)?;
            if uv == 0 && !first {
                return None;
            }
            p += n;
            val = val.wrapping_add((-((uv & 1) as i32)) ^ ((uv >> 1) as i32));
            let (pcd, n) = super::uvarint(self.data, p)?;
            p += n;
            at = at.checked_add(pcd as u64)?;
            if pc < at {
                return Some(val);
            }
        }
        None
    }

    fn file_name(&self, cu: u32, n: u32) -> Option<&'a str> {
        let at = self
            .cutab
            .checked_add(4 * (cu as usize).checked_add(n as usize)?)?;
        let off = u32_at(self.data, at).ok()?;
        if off == u32::MAX {
            return None;
        }
        let start = self.filetab.checked_add(off as usize)?;
        let rest = self.data.get(start..)?;
        let rest = &rest[..rest.len().min(4096)];
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// (index, entry, _func offset) of the function containing `pc`.
    fn index_at(&self, pc: u64) -> Option<(usize, u64, usize)> {
        let (first, _) = self.entry(0).ok()?;
        let (end, _) = self.entry(self.nfunc).ok()?;
        if pc < first || pc >= end {
            return None;
        }
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.entry(mid).ok()?.0 <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (entry, off) = self.entry(lo).ok()?;
        Some((lo, entry, off))
    }

    /// The function containing `pc`: (name, entry).
    #[cfg(test)]
    pub fn func_at(&self, pc: u64) -> Option<(&'a str, u64)> {
        let (_, entry, off) = self.index_at(pc)?;
        Some((self.name_of(off).ok()?, entry))
    }
}

pub fn u32_at(d: &[u8], at: usize) -> Result<u32> {
    match d.get(at..at.saturating_add(4)) {
        Some(b) => Ok(u32::from_le_bytes(b.try_into().unwrap())),
        None => bail!("read past the end of the data at {at:#x}"),
    }
}

pub fn u64_at(d: &[u8], at: usize) -> Result<u64> {
    match d.get(at..at.saturating_add(8)) {
        Some(b) => Ok(u64::from_le_bytes(b.try_into().unwrap())),
        None => bail!("read past the end of the data at {at:#x}"),
    }
}
