//! Reading the binaries processes run, safely: which file a process runs (its identity as the
//! kernel sees it), a read-only mapping of that file that cannot kill the agent, and where the
//! file's bytes land in memory. Shared by the Go prober and the symbolizer.
//!
//! Files are mapped, never read whole: a multi-gigabyte file costs address space, not memory,
//! and only the pages the parsers touch are read (clean page cache the kernel can reclaim,
//! even inside a memory-limited cgroup). See [`mapped`] for what happens when a mapped file
//! shrinks while it is read.
pub mod id;
pub mod layout;
pub mod mapped;

pub use crate::model::process::FileId;
pub use layout::Layout;
pub use mapped::Mapped;
