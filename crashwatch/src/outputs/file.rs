//! The file output (`--output-file`): JSON lines, the same objects as `--output json`, each
//! written with one `write(2)` on an `O_APPEND` descriptor, so after a `kill -9` of the agent
//! every line in the file is a whole report. A reader tailing the file can still see a line
//! while that write is being copied in (Linux reads take no lock against writes): a shipper
//! takes lines up to their newline, as Vector and Fluent Bit do.
//!
//! Durability: the file is `fdatasync`ed whenever the output's queue runs empty, so after a
//! power cut at most the reports of the last batch are missing (one report when crashes are
//! rare, a batch in a storm). A write cut short (a full disk, a power cut mid-line) leaves a
//! torn last line: a failed write is truncated away at once, and a torn tail found at start
//! is cut off with one warning. Past `max_bytes` the file is rotated (`PATH.1` … `PATH.<keep>`,
//! the oldest dropped). The file is made 0600 and opened without following a symlink in its
//! last component: a path an unprivileged user could prepare must not make root write
//! elsewhere.
use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::{Item, Output};

#[derive(Clone, Debug)]
pub struct FileOptions {
    pub path: PathBuf,
    /// Rotated past this size (a report larger than it still gets a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

pub struct FileSink {
    opts: FileOptions,
    file: File,
    /// The file's length: what a failed write is truncated back to.
    len: u64,
    unsynced: bool,
}

impl FileSink {
    /// Opens (or makes) the file; the warning, when a torn last line was cut off.
    pub fn open(opts: FileOptions) -> Result<(FileSink, Option<String>)> {
        let mut file = open(&opts.path)?;
        let (len, cut) = repair_tail(&mut file)
            .with_context(|| format!("checking the end of {}", opts.path.display()))?;
        let warning = (cut > 0).then(|| {
            format!(
                "{}: cut off a torn last line of {cut} bytes (a write the agent did not finish)",
                opts.path.display()
            )
        });
        let sink = FileSink {
            opts,
            file,
            len,
            unsynced: false,
        };
        Ok((sink, warning))
    }

    /// Whether the agent could write reports there, changing nothing: an existing file is
    /// opened for appending; for a new one, the directory must take a file.
    pub fn probe(opts: &FileOptions) -> Result<String> {
        let p = &opts.path;
        if p.exists() {
            let f = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
                .with_context(|| format!("opening {} to append", p.display()))?;
            let len = f.metadata()?.len();
            return Ok(format!(
                "{} can be appended to ({len} bytes now)",
                p.display()
            ));
        }
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let trial = dir.join(format!(".crashwatch-check-{}", std::process::id()));
        File::create(&trial).with_context(|| format!("making a file in {}", dir.display()))?;
        let _ = fs::remove_file(&trial);
        Ok(format!(
            "{} will be made (its directory takes files)",
            p.display()
        ))
    }

    fn rotate(&mut self) -> Result<()> {
        self.file.sync_data()?;
        let p = &self.opts.path;
        let nth = |n: u32| PathBuf::from(format!("{}.{n}", p.display()));
        let _ = fs::remove_file(nth(self.opts.keep));
        for n in (1..self.opts.keep).rev() {
            let _ = fs::rename(nth(n), nth(n + 1));
        }
        fs::rename(p, nth(1)).context("rotating")?;
        self.file = open(p)?;
        self.len = 0;
        Ok(())
    }
}

impl Output for FileSink {
    fn write(&mut self, item: &Item) -> Result<()> {
        let mut line = Vec::with_capacity(item.json.len() + 1);
        line.extend_from_slice(item.json.as_bytes());
        line.push(b'\n');
        if self.len > 0 && self.len + line.len() as u64 > self.opts.max_bytes {
            self.rotate()?;
        }
        // One write(2) of the whole line: a regular file takes it whole unless the disk is
        // full or a signal cut it short (then write_all sends the rest: still one line).
        match self.file.write_all(&line) {
            Ok(()) => {
                self.len += line.len() as u64;
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                // A part of the line may be in: take it out, or the next report would be
                // glued to it.
                let _ = self.file.set_len(self.len);
                Err(e.into())
            }
        }
    }

    fn takes_terminations(&self) -> bool {
        true
    }

    fn flush(&mut self) -> Result<()> {
        if std::mem::take(&mut self.unsynced) {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Cuts the file back to its last newline; (length after, bytes cut).
fn repair_tail(f: &mut File) -> Result<(u64, u64)> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok((0, 0));
    }
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if end == len && buf[n - 1] == b'\n' {
            return Ok((len, 0));
        }
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            f.set_len(keep)?;
            return Ok((keep, len - keep));
        }
        end = start;
    }
    f.set_len(0)?;
    Ok((0, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::report::Report;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("cw-file-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn item(n: u32) -> Item {
        let report = Report {
            pid: n,
            ..Report::default()
        };
        let json = serde_json::to_string(&report).unwrap();
        Item { report, json }
    }

    fn opts(d: &Dir, max_bytes: u64) -> FileOptions {
        FileOptions {
            path: d.0.join("crashes.jsonl"),
            max_bytes,
            keep: 2,
        }
    }

    fn pids(p: &Path) -> Vec<u64> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["pid"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn lines_are_appended_whole_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = Dir::new("append");
        let (mut s, warn) = FileSink::open(opts(&d, 1 << 20)).unwrap();
        assert_eq!(warn, None);
        for n in 1..=3 {
            s.write(&item(n)).unwrap();
        }
        s.flush().unwrap();
        let p = d.0.join("crashes.jsonl");
        assert_eq!(pids(&p), [1, 2, 3]);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second agent appends after the first one's lines.
        let (mut s, _) = FileSink::open(opts(&d, 1 << 20)).unwrap();
        s.write(&item(4)).unwrap();
        assert_eq!(pids(&p), [1, 2, 3, 4]);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_at_start() {
        let d = Dir::new("torn");
        let p = d.0.join("crashes.jsonl");
        let whole = format!("{}\n{}\n", item(1).json, item(2).json);
        fs::write(&p, format!("{whole}{{\"pid\":3,\"ti")).unwrap();
        let (mut s, warn) = FileSink::open(opts(&d, 1 << 20)).unwrap();
        assert!(warn.unwrap().contains("torn last line of 12 bytes"));
        s.write(&item(4)).unwrap();
        assert_eq!(pids(&p), [1, 2, 4]);
        // Nothing but a torn line: nothing left.
        fs::write(&p, "{\"pid\":5").unwrap();
        let (_, warn) = FileSink::open(opts(&d, 1 << 20)).unwrap();
        assert!(warn.is_some());
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    }

    #[test]
    fn the_file_rotates_past_its_size_and_keeps_so_many() {
        let d = Dir::new("rotate");
        let line = item(1).json.len() as u64 + 1;
        let (mut s, _) = FileSink::open(opts(&d, 2 * line)).unwrap();
        for n in 1..=7 {
            s.write(&item(n)).unwrap();
        }
        let p = d.0.join("crashes.jsonl");
        assert_eq!(pids(&p), [7]);
        assert_eq!(pids(&d.0.join("crashes.jsonl.1")), [5, 6]);
        assert_eq!(pids(&d.0.join("crashes.jsonl.2")), [3, 4]);
        assert!(!d.0.join("crashes.jsonl.3").exists(), "keep 2");
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let d = Dir::new("link");
        let target = d.0.join("elsewhere");
        fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, d.0.join("crashes.jsonl")).unwrap();
        let e = FileSink::open(opts(&d, 1 << 20)).err().unwrap();
        assert!(format!("{e:#}").contains("opening"), "{e:#}");
    }
}
