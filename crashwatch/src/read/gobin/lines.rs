//! Go frames named and unwound from the binary's own function table: function, file and line
//! for any program counter, and the frame's size there, in stripped binaries too
//! (`-ldflags=-s -w` keeps the pclntab).
//!
//! The table is found and validated once by the same reader that places the uprobes
//! ([`super::Tables::locate`]) and kept as offsets into the mapped file ([`Saved`]); each
//! lookup is a binary search and two pc-value table walks over the mapped bytes.
use std::collections::HashMap;

use super::{
    image::Image,
    pclntab::{FrameRule, Place, Saved},
    Tables,
};

#[derive(Clone, Debug)]
pub struct Table {
    saved: Saved,
    /// File offset of `go:func.*`, which the inline tree's funcdata offsets start from.
    gofunc: Option<usize>,
}

impl Table {
    /// The Go function table of `obj` (whose bytes are `bytes`), if it has a valid one.
    pub fn locate(obj: &object::File<'_>, bytes: &[u8]) -> Option<Table> {
        let img = Image::new(obj, bytes);
        let syms: HashMap<&str, u64> = img.runtime_symbols().into_iter().collect();
        let tables = Tables::locate(obj, &img, &syms, &mut Vec::new());
        let gofunc = tables
            .gofunc
            .and_then(|v| img.file_offset(v))
            .and_then(|o| usize::try_from(o).ok());
        Some(Table {
            saved: tables.pclntab?.save(bytes)?,
            gofunc,
        })
    }

    /// Heap bytes held: the table itself stays in the mapped file.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Table>()
    }

    /// The frames at `pc` (a link-time address), innermost first: each call inlined there,
    /// then the function holding them (see [`super::inline`]).
    pub fn places<'a>(&self, bytes: &'a [u8], pc: u64) -> Vec<Place<'a>> {
        let Some(tab) = self.saved.open(bytes) else {
            return Vec::new();
        };
        let gofunc = self.gofunc.and_then(|o| bytes.get(o..));
        super::inline::places(&tab, pc, gofunc)
    }

    /// How to step out of the Go frame at `pc` (a link-time address), if it is Go code.
    pub fn frame_rule(&self, bytes: &[u8], pc: u64) -> Option<FrameRule> {
        self.saved.open(bytes)?.frame_rule(pc)
    }
}
