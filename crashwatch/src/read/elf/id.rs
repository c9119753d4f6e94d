//! A file's identity: what makes "the binary this process runs" one thing across processes,
//! containers and time.
//!
//! Device and inode alone are not enough: ext4 gives a freed inode number to the next file
//! created, so a new binary can land on the inode of one the agent already classified. The
//! inode's change time and size tell the two apart (a new file is created, and written, after
//! the old one was). The kernel side reads the same four values from the exec'd inode, so an
//! identity from an exec record and one from `stat(2)` compare equal for the same file.
use std::{fs::Metadata, os::unix::fs::MetadataExt};

pub use crate::model::process::FileId;

/// The kernel's `MKDEV(major, minor)` (what `super_block.s_dev` holds).
pub fn mkdev(major: u64, minor: u64) -> u64 {
    (major << 20) | minor
}

/// The kernel's device number from a userspace `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u64 {
    mkdev(libc::major(st_dev) as u64, libc::minor(st_dev) as u64)
}

impl FileId {
    pub fn of(md: &Metadata) -> FileId {
        FileId {
            dev: kernel_dev(md.dev()),
            ino: md.ino(),
            ctime_ns: (md.ctime() as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(md.ctime_nsec() as u64),
            size: md.size(),
        }
    }

    /// The identity of the binary `pid` runs now (through the process's own view of it).
    pub fn of_exe(pid: u32) -> Option<FileId> {
        std::fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|md| FileId::of(&md))
    }

    /// The file at `path` in the agent's own view, only if it is the very file with this
    /// identity: a path another process used may name something else here (another mount
    /// namespace, a relative path, a replaced file), and only the identity proves it does not.
    pub fn open_at(&self, path: impl AsRef<std::path::Path>) -> Option<std::fs::File> {
        let f = open_regular(path)?;
        (FileId::of(&f.metadata().ok()?) == *self).then_some(f)
    }

    /// Same inode, whatever its content: the uprobes the kernel keeps per inode.
    pub fn same_inode(&self, other: &FileId) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// Opens `path` for reading only if it is a regular file. The path is first opened with
/// `O_PATH`, which opens nothing (a device node named by another process's path, such as a
/// watchdog, must never be opened by a root agent), and then reopened through that handle,
/// so the file checked is the file read.
pub fn open_regular(path: impl AsRef<std::path::Path>) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    reopen_regular(&handle)
}

/// The file an `O_PATH` `handle` names, opened for reading only if it is a regular file.
pub fn reopen_regular(handle: &std::fs::File) -> Option<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let ft = handle.metadata().ok()?.file_type();
    if !ft.is_file() || ft.is_block_device() || ft.is_char_device() {
        return None;
    }
    use std::os::fd::AsRawFd;
    std::fs::File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_on_a_reused_inode_is_a_new_identity() {
        let dir = std::env::temp_dir().join(format!("cw-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"first").unwrap();
        let a = FileId::of(&std::fs::metadata(&p).unwrap());
        std::fs::remove_file(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"second file").unwrap();
        let b = FileId::of(&std::fs::metadata(&p).unwrap());
        assert_ne!(a, b, "a new file must never pass for the old one");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
