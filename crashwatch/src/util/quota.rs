//! Files kept in one directory within bounds, as systemd-coredump keeps its cores
//! (`MaxUse=`, `KeepFree=`): at most a total size, and never the filesystem's free space
//! below a share of its size, that share capped at 4 GiB as systemd caps it (15 % of a large
//! disk is more than any dump needs kept free); the oldest files go first. Used for the minidumps and the kept
//! cores under the state directory.
use std::{
    io,
    path::{Path, PathBuf},
};

#[derive(Clone, Copy, Debug)]
pub struct Quota {
    /// Bytes the files may take in all.
    pub max_bytes: u64,
    /// Share of the filesystem (percent) left free, at most [`KEEP_FREE_CAP`]: no file is
    /// written or grown into it.
    pub keep_free_pct: u8,
}

/// The most the free-space share keeps free.
pub const KEEP_FREE_CAP: u64 = 4 << 30;

/// Bytes kept free on a filesystem of `size` bytes.
pub fn keep_free(size: u64, pct: u8) -> u64 {
    (size / 100 * u64::from(pct)).min(KEEP_FREE_CAP)
}

/// The filesystem's (available, kept free), or None when it gives no sizes (ramfs and
/// some FUSE filesystems say 0 blocks): then only the total bounds the files.
fn free(dir: &Path, pct: u8) -> io::Result<Option<(u64, u64)>> {
    let (avail, size) = space(dir)?;
    Ok((size > 0).then(|| (avail, keep_free(size, pct))))
}

/// The filesystem holding `dir`: (bytes available, its size).
pub fn space(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid C string; `st` is written by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize;
    Ok((
        st.f_bavail.saturating_mul(unit),
        st.f_blocks.saturating_mul(unit),
    ))
}

impl Quota {
    /// Bytes a new file may take now: within the total (what older files hold can be
    /// removed for it) and above the share kept free.
    pub fn room(&self, dir: &Path, ours: impl Fn(&Path) -> bool) -> io::Result<u64> {
        let Some((avail, keep)) = free(dir, self.keep_free_pct)? else {
            return Ok(self.max_bytes);
        };
        let held: u64 = files(dir, &ours)?.iter().map(|f| f.1).sum();
        Ok(self
            .max_bytes
            .min((avail.saturating_add(held)).saturating_sub(keep)))
    }

    /// Removes the oldest of the files `ours` picks, never `keep`, until they are within the
    /// total and the free space is above its share; how many went.
    pub fn vacuum(&self, dir: &Path, keep: &Path, ours: impl Fn(&Path) -> bool) -> io::Result<u64> {
        let mut files = files(dir, &ours)?;
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let (mut avail, keep_free) = free(dir, self.keep_free_pct)?.unwrap_or((u64::MAX, 0));
        let mut removed = 0;
        for (_, len, p) in files.into_iter().filter(|f| f.2 != keep) {
            if total <= self.max_bytes && avail >= keep_free {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
                avail = avail.saturating_add(len);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The files `ours` picks in `dir`: (modified, bytes on disk, path).
fn files(
    dir: &Path,
    ours: &impl Fn(&Path) -> bool,
) -> io::Result<Vec<(std::time::SystemTime, u64, PathBuf)>> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| ours(&e.path()))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(|m| m.is_file())?;
            Some((m.modified().ok()?, m.blocks() * 512, e.path()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_never_the_kept_one() {
        let d = std::env::temp_dir().join(format!("quota-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let t0 = std::time::SystemTime::now();
        for (i, name) in ["a.x", "b.x", "c.x", "d.y"].iter().enumerate() {
            let p = d.join(name);
            std::fs::write(&p, vec![1u8; 64 << 10]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(t0 - std::time::Duration::from_secs(100 - i as u64))
                .unwrap();
        }
        let xs = |p: &Path| p.extension().is_some_and(|e| e == "x");
        let q = Quota {
            max_bytes: 130 << 10,
            keep_free_pct: 0,
        };
        assert!(q.room(&d, xs).unwrap() <= 130 << 10);
        // a.x is the oldest but is the one being kept: b.x goes.
        assert_eq!(q.vacuum(&d, &d.join("a.x"), xs).unwrap(), 1);
        let left: Vec<_> = ["a.x", "b.x", "c.x", "d.y"]
            .iter()
            .map(|n| d.join(n).exists())
            .collect();
        assert_eq!(left, [true, false, true, true]);
        // The share kept free, capped as systemd caps it.
        assert_eq!(keep_free(10 << 30, 15), (10 << 30) / 100 * 15);
        assert_eq!(keep_free(1 << 40, 15), KEEP_FREE_CAP);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
