//! Go's pclntab: function entry points and names, even in stripped binaries.
//!
//! Written here because no maintained crate reads it (blazesym and gimli read ELF/DWARF only,
//! and `-ldflags=-s -w` removes both the symbol table and DWARF, but never `.gopclntab`). Only
//! the function table is read: entry PCs and names, for uprobes and for naming frames. Layouts:
//! Go 1.16-1.17 (magic 0xfffffffa, absolute entries), Go 1.18-1.19 (0xfffffff0) and 1.20+
//! (0xfffffff1), whose entries are offsets from `textStart` — which Go 1.26 writes as 0, leaving
//! the text base to the caller (`runtime.text` or moduledata).
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Go116,
    Go118,
    Go120,
}

pub struct Pclntab<'a> {
    data: &'a [u8],
    pub layout: Layout,
    nfunc: usize,
    /// Base that function entry offsets are relative to (0 for Go 1.16's absolute entries).
    pub text_start: u64,
    funcname: usize,
    pcln: usize,
}

impl<'a> Pclntab<'a> {
    /// Parses the header. `text_base` is used when the header's `textStart` is 0 (Go 1.26+).
    pub fn parse(data: &'a [u8], text_base: Option<u64>) -> Result<Pclntab<'a>> {
        let magic = u32_at(data, 0)?;
        let layout = match magic {
            0xffff_fffa => Layout::Go116,
            0xffff_fff0 => Layout::Go118,
            0xffff_fff1 => Layout::Go120,
            m => bail!("unknown pclntab magic {m:#x}"),
        };
        if data.len() < 8 || data[7] != 8 {
            bail!(
                "pclntab pointer size {} unsupported (64-bit only)",
                data.get(7).copied().unwrap_or(0)
            );
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i);
        let nfunc = word(0)? as usize;
        let (text_start, funcname, pcln) = match layout {
            Layout::Go116 => (0, word(2)?, word(6)?),
            _ => {
                let ts = word(2)?;
                let ts = if ts == 0 { text_base.unwrap_or(0) } else { ts };
                (ts, word(3)?, word(7)?)
            }
        };
        if layout != Layout::Go116 && text_start == 0 {
            bail!("pclntab has textStart 0 and no text base was found");
        }
        let t = Pclntab {
            data,
            layout,
            nfunc,
            text_start,
            funcname: funcname as usize,
            pcln: pcln as usize,
        };
        // The table must fit: nfunc+1 entries.
        t.entry(nfunc)?;
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
        } as usize;
        let start = self.funcname + name_off;
        let rest = self
            .data
            .get(start..)
            .ok_or_else(|| anyhow::anyhow!("function name past the end"))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Ok(std::str::from_utf8(&rest[..end])?)
    }

    /// Every function: (entry PC, name).
    pub fn funcs(&self) -> impl Iterator<Item = (u64, &'a str)> + '_ {
        (0..self.nfunc).filter_map(|i| {
            let (pc, off) = self.entry(i).ok()?;
            Some((pc, self.name_of(off).ok()?))
        })
    }

    /// The function containing `pc`: (name, entry).
    #[cfg(test)]
    pub fn func_at(&self, pc: u64) -> Option<(&'a str, u64)> {
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
        Some((self.name_of(off).ok()?, entry))
    }
}

pub fn u32_at(d: &[u8], at: usize) -> Result<u32> {
    match d.get(at..at + 4) {
        Some(b) => Ok(u32::from_le_bytes(b.try_into().unwrap())),
        None => bail!("read past the end of the data at {at:#x}"),
    }
}

pub fn u64_at(d: &[u8], at: usize) -> Result<u64> {
    match d.get(at..at + 8) {
        Some(b) => Ok(u64::from_le_bytes(b.try_into().unwrap())),
        None => bail!("read past the end of the data at {at:#x}"),
    }
}
