//! What a record says of the process around it: its mappings as read while it lived, and the
//! identity of the root directory of its view. Captured at record time (the symbolize stage's
//! `maps` and `roots` fill them), read by every stage after.
use std::{fs::File, sync::Arc};

#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
    /// The mapped file's device (kernel encoding) and inode, as the process's maps name them.
    pub dev: u64,
    pub inode: u64,
    pub exec: bool,
    /// The file, opened through the process when the mapping holds code.
    pub file: Option<Arc<File>>,
}

/// A dying process's file mappings.
#[derive(Debug)]
pub struct Maps {
    pub mappings: Vec<Mapping>,
}

/// A root directory's identity: (device, inode).
pub type RootKey = (u64, u64);

/// A file's identity: device (the kernel's encoding), inode, change time and size (see
/// `read::elf::id`, which reads it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// The kernel's `MKDEV(major, minor)` encoding of `st_dev` (what `super_block.s_dev` holds).
    pub dev: u64,
    pub ino: u64,
    /// `st_ctime` in nanoseconds since the epoch.
    pub ctime_ns: u64,
    pub size: u64,
}
