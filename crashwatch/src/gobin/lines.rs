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
}

impl Table {
    /// The Go function table of `obj` (whose bytes are `bytes`), if it has a valid one.
    pub fn locate(obj: &object::File<'_>, bytes: &[u8]) -> Option<Table> {
        let img = Image::new(obj, bytes);
        let syms: HashMap<&str, u64> = img.runtime_symbols().into_iter().collect();
        let tab = Tables::locate(obj, &img, &syms, &mut Vec::new()).pclntab?;
        Some(Table {
            saved: tab.save(bytes)?,
        })
    }

    /// Heap bytes held: the table itself stays in the mapped file.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Table>()
    }

    /// Function, file and line at `pc` (a link-time address), over the same file's bytes.
    pub fn place<'a>(&self, bytes: &'a [u8], pc: u64) -> Option<Place<'a>> {
        self.saved.open(bytes)?.place(pc)
    }

    /// How to step out of the Go frame at `pc` (a link-time address), if it is Go code.
    pub fn frame_rule(&self, bytes: &[u8], pc: u64) -> Option<FrameRule> {
        self.saved.open(bytes)?.frame_rule(pc)
    }
}
