//! `--keep-cores`: each dump's whole core, zstd-compressed (level 1) as it streams past the
//! reader, so the process is held only for the compression (measured by `cargo xtask bench
//! --dumps-only`) and the disk sees the compressed bytes alone. Written as a hidden
//! `dumps/.PID-SEQ.core.zst.part` (0600), filed by its report as `dumps/PID-START.core.zst`,
//! then the cores are held within their quota (`--cores-max`, `--dumps-keep-free`; the
//! oldest go first, [`crate::util::quota`]) and removed with their reports (the store).
//! A core that outgrows the room its quota leaves is dropped as it grows, and said.
use std::{
    fs::File,
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{model::dump::CoreFile, util::quota::Quota};

/// zstd's level: the fastest of the regular ones (a core is mostly zero pages and code).
const LEVEL: i32 = 1;
/// The free space is checked again after each this many compressed bytes.
const RECHECK: u64 = 64 << 20;

/// Where cores are kept and within what.
pub struct Cores {
    pub dir: PathBuf,
    pub quota: Quota,
    seq: AtomicU64,
}

/// A kept core's file, as the report files it.
pub fn is_core(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".core.zst") && !n.starts_with('.'))
}

impl Cores {
    /// The directory (0700) under the state directory; parts a killed agent left are removed.
    pub fn open(state_dir: &Path, quota: Quota) -> io::Result<Cores> {
        let dir = state_dir.join("dumps");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        for e in std::fs::read_dir(&dir)?.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with('.') && n.ends_with(".core.zst.part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Cores {
            dir,
            quota,
            seq: AtomicU64::new(0),
        })
    }

    /// Starts the core of `pid`: a writer, or why there is none.
    pub(super) fn start(&self, pid: u32) -> Writing {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(".{pid}-{n}.core.zst.part"));
        let mut w = Writing {
            path,
            enc: None,
            room: 0,
            checked: 0,
            missing: None,
            keep_free_pct: self.quota.keep_free_pct,
        };
        let room = match self.quota.room(&self.dir, is_core) {
            Ok(r) if r >= 1 << 20 => r,
            Ok(r) => {
                w.missing = Some(format!(
                    "no room: {} KiB left within --cores-max and --dumps-keep-free",
                    r >> 10
                ));
                return w;
            }
            Err(e) => {
                w.missing = Some(format!("the free space of {}: {e}", self.dir.display()));
                return w;
            }
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&w.path);
        match file.and_then(|f| zstd::stream::write::Encoder::new(f, LEVEL)) {
            Ok(e) => {
                w.enc = Some(e);
                w.room = room;
            }
            Err(e) => w.missing = Some(format!("creating {}: {e}", w.path.display())),
        }
        w
    }

    /// Files a written core as `name` and holds the cores within their quota; its path.
    pub fn file(&self, core: &CoreFile, name: &str) -> io::Result<PathBuf> {
        let to = self.dir.join(name);
        std::fs::rename(&core.path, &to)?;
        if let Err(e) = self.quota.vacuum(&self.dir, &to, is_core) {
            tracing::warn!("holding the kept cores within their quota: {e}");
        }
        Ok(to)
    }
}

/// One core being written.
pub(super) struct Writing {
    path: PathBuf,
    enc: Option<zstd::stream::write::Encoder<'static, File>>,
    /// Compressed bytes the file may grow to.
    room: u64,
    checked: u64,
    missing: Option<String>,
    keep_free_pct: u8,
}

impl Writing {
    fn take(&mut self, buf: &[u8]) {
        let Some(enc) = self.enc.as_mut() else { return };
        if let Err(e) = enc.write_all(buf) {
            return self.drop_it(format!("writing it: {e}"));
        }
        // The encoder's output so far, from the file's length (it writes as it goes).
        let out = enc.get_ref().metadata().map_or(0, |m| m.len());
        if out > self.room {
            let room = self.room >> 20;
            return self.drop_it(format!(
                "it outgrew the {room} MiB left within --cores-max and --dumps-keep-free"
            ));
        }
        if out >= self.checked + RECHECK {
            self.checked = out;
            let dir = self.path.parent().unwrap_or(Path::new("/"));
            if let Ok((avail, size)) = crate::util::quota::space(dir) {
                // A filesystem that gives no sizes (0 blocks) is bounded by the total alone.
                if size > 0 && avail < crate::util::quota::keep_free(size, self.keep_free_pct) {
                    self.drop_it("the filesystem's free space fell below --dumps-keep-free".into());
                }
            }
        }
    }

    fn drop_it(&mut self, why: String) {
        self.enc = None;
        let _ = std::fs::remove_file(&self.path);
        self.missing = Some(why);
    }

    /// The written core, or why there is none.
    pub(super) fn finish(mut self) -> (Option<CoreFile>, Option<String>) {
        let Some(enc) = self.enc.take() else {
            return (None, self.missing.take());
        };
        match enc.finish().and_then(|f| f.metadata()) {
            Ok(m) => (
                Some(CoreFile {
                    path: std::mem::take(&mut self.path),
                    bytes: m.len(),
                }),
                None,
            ),
            Err(e) => {
                self.drop_it(format!("finishing it: {e}"));
                (None, self.missing.take())
            }
        }
    }
}

impl Drop for Writing {
    /// A core not handed on (a worker that ended early) leaves no file.
    fn drop(&mut self) {
        if self.enc.is_some() && !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The stream as the reader takes it, each byte also given to the core's writer.
pub(super) struct Tee<'a, R> {
    pub(super) r: R,
    pub(super) w: Option<&'a mut Writing>,
    /// Bytes read.
    pub(super) n: u64,
}

impl<R: Read> Tee<'_, R> {
    /// Reads the rest of the stream into the core while it is still kept: whether the end
    /// was reached.
    pub(super) fn rest(&mut self) -> bool {
        let mut buf = vec![0u8; 256 << 10];
        while self.w.as_ref().is_some_and(|w| w.enc.is_some()) {
            match self.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        if let Some(w) = self.w.as_mut() {
            w.take(&buf[..n]);
        }
        Ok(n)
    }
}

/// Where the process's root directory is in the agent's view, when it is not the agent's own
/// (a container's root filesystem): the mount of the same device whose directory is that
/// root, found in the agent's mount table. Read through `/proc/PID/root` while the kernel
/// holds the process; None for the host's own root or a root no mount shows.
pub(super) fn root_on_host(pid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/root")).ok()?;
    let ours = std::fs::metadata("/").ok()?;
    let id = |m: &std::fs::Metadata| (m.dev(), m.ino());
    if id(&theirs) == id(&ours) {
        return None;
    }
    let dev = format!(
        "{}:{}",
        libc::major(theirs.dev()),
        libc::minor(theirs.dev())
    );
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ').skip(2);
            (f.next()? == dev).then(|| unescape(f.nth(1).unwrap_or("")))
        })
        .find(|p| std::fs::metadata(p).is_ok_and(|m| id(&m) == id(&theirs)))
        .map(PathBuf::from)
}

/// A mount point as the mount table writes it (space, tab, newline, backslash as `\ooo`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) if b[i] == b'\\' => {
                out.push(o.iter().fold(0u8, |a, c| a.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(super::unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(super::unescape(r"/plain\09"), r"/plain\09");
    }
}
