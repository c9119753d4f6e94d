//! Exactly once across a kill -9: which records of the pinned ring buffer the agent still
//! needs, and which crashes the previous agent already wrote.
//!
//! The kernel's consumer position is where the next agent starts reading (`probe::ring`).
//! This agent moves it only past records nothing unwritten needs: not past the oldest record
//! of an open case in the assembler (a signal waiting for its exit, with the exec just
//! before it when that was recent), nor of a crash queued but not yet written. So an agent
//! killed at any point leaves every crash it had not written in the ring for the next one.
//!
//! The next one then also reads records of crashes that were written but whose records had
//! not been released yet. Each written crash's key (pid and process start time, one death
//! per process) is appended to `reported-keys` in the state directory before its records are
//! released, and an agent taking over skips the crashes named there (counted, said at
//! stop). The key follows the report's write to stdout: a kill -9 between the two can still
//! repeat that one report, never lose it. What was queued to the crash history and the
//! other outputs behind stdout at the kill is not written again.
//!
//! Holding is bounded: never more than a quarter of the ring buffer, so a case open for
//! minutes (a Go program printing a huge stack) cannot fill it. An unpinned agent (`--no-pin`)
//! holds nothing: its ring buffer ends with it.
use std::{
    collections::{HashSet, VecDeque},
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

/// Keys kept in memory and rewritten on compaction: far more than a quarter of any ring
/// buffer can hold crashes of (each is at least a few hundred bytes).
const KEYS_KEEP: usize = 65536;
/// The largest keys file read.
const KEYS_MAX_BYTES: u64 = 8 << 20;

/// A crash's identity across agents: the pid and its process's start time.
pub(super) type Key = (u32, u64);

/// The record loop's side: what is queued and not yet written.
pub(super) struct Holds {
    /// (sequence number, hold position) of each crash queued, oldest first.
    inflight: VecDeque<(u64, u64)>,
    sent: u64,
    /// Crashes the report thread has finished with, in queue order.
    pub(super) written: Arc<AtomicU64>,
    /// Keys the previous agent wrote (only when taking over its ring buffer).
    already: HashSet<Key>,
    /// Crashes skipped because the previous agent had written them.
    pub(super) skipped: u64,
    /// The ring buffer outlives this agent (pinned): without that, holding records back
    /// would only shrink the buffer.
    pinned: bool,
}

impl Holds {
    pub(super) fn new(already: HashSet<Key>, pinned: bool) -> Holds {
        Holds {
            inflight: VecDeque::new(),
            sent: 0,
            written: Arc::new(AtomicU64::new(0)),
            already,
            skipped: 0,
            pinned,
        }
    }

    /// True when the previous agent wrote this crash already (then it is not sent).
    pub(super) fn written_before(&mut self, key: Key) -> bool {
        let seen = !self.already.is_empty() && self.already.remove(&key);
        self.skipped += u64::from(seen);
        seen
    }

    /// A crash holding records from `hold` on was queued.
    pub(super) fn sent(&mut self, hold: u64) {
        self.sent += 1;
        if self.pinned {
            self.inflight.push_back((self.sent, hold));
        }
    }

    /// Where the kernel's consumer position may move: the oldest record still needed, at
    /// most `cursor` (everything read), at least a quarter of `size` behind it.
    pub(super) fn release_point(&mut self, open: Option<u64>, cursor: u64, size: u64) -> u64 {
        let written = self.written.load(Ordering::Acquire);
        while self
            .inflight
            .front()
            .is_some_and(|&(seq, _)| seq <= written)
        {
            self.inflight.pop_front();
        }
        if !self.pinned {
            return cursor;
        }
        let queued = self.inflight.iter().map(|&(_, h)| h).min();
        let need = [open, queued].into_iter().flatten().min().unwrap_or(cursor);
        need.min(cursor).max(cursor.saturating_sub(size / 4))
    }
}

/// The report thread's side: the keys file.
pub(super) struct Keys {
    path: PathBuf,
    file: File,
    recent: VecDeque<Key>,
    lines: usize,
    boot: String,
}

fn parse(text: &str, boot: &str) -> Vec<Key> {
    let mut lines = text.lines();
    if lines.next() != Some(&format!("boot {boot}")) {
        return Vec::new();
    }
    lines
        .filter_map(|l| {
            let (pid, start) = l.split_once(' ')?;
            Some((pid.parse().ok()?, start.parse().ok()?))
        })
        .collect()
}

fn create(path: &Path, boot: &str, keys: &VecDeque<Key>) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut text = format!("boot {boot}\n");
    for (pid, start) in keys {
        text.push_str(&format!("{pid} {start}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl Keys {
    /// Opens `dir/reported-keys`; with `taking_over`, also the keys the previous agent wrote
    /// (the file is this boot's only: after a reboot the ring buffer is new).
    pub(super) fn open(dir: &Path, taking_over: bool) -> std::io::Result<(Keys, HashSet<Key>)> {
        use std::{
            io::Read,
            os::unix::fs::{DirBuilderExt, OpenOptionsExt},
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join("reported-keys");
        let boot = crate::util::boot_id();
        let mut text = String::new();
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            f.take(KEYS_MAX_BYTES).read_to_string(&mut text)?;
        }
        let mut recent: VecDeque<Key> = if taking_over {
            parse(&text, &boot).into_iter().collect()
        } else {
            VecDeque::new()
        };
        while recent.len() > KEYS_KEEP {
            recent.pop_front();
        }
        let already = recent.iter().copied().collect();
        let file = create(&path, &boot, &recent)?;
        let lines = recent.len();
        Ok((
            Keys {
                path,
                file,
                recent,
                lines,
                boot,
            },
            already,
        ))
    }

    /// Notes a crash written; rewrites the file with the newest keys once it has grown to
    /// twice that.
    pub(super) fn note(&mut self, key: Key) {
        if let Err(e) = self
            .file
            .write_all(format!("{} {}\n", key.0, key.1).as_bytes())
        {
            tracing::warn!("{}: {e}", self.path.display());
        }
        self.recent.push_back(key);
        self.lines += 1;
        if self.recent.len() > KEYS_KEEP {
            self.recent.pop_front();
        }
        if self.lines > 2 * KEYS_KEEP {
            match create(&self.path, &self.boot, &self.recent) {
                Ok(f) => {
                    self.file = f;
                    self.lines = self.recent.len();
                }
                Err(e) => tracing::warn!("{}: {e}", self.path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_this_boots_only() {
        assert_eq!(parse("boot b\n1 2\n3 x\n4 5\n", "b"), vec![(1, 2), (4, 5)]);
        assert!(parse("boot a\n1 2\n", "b").is_empty());
        assert!(parse("", "b").is_empty());
    }

    #[test]
    fn release_waits_for_the_oldest_unwritten_crash_and_open_case() {
        let mut h = Holds::new(HashSet::new(), true);
        let size = 1 << 20;
        assert_eq!(h.release_point(None, 1000, size), 1000, "nothing held");
        h.sent(100);
        h.sent(50);
        assert_eq!(h.release_point(Some(400), 1000, size), 50);
        h.written.store(1, Ordering::Release);
        assert_eq!(
            h.release_point(None, 1000, size),
            50,
            "the second, older hold"
        );
        h.written.store(2, Ordering::Release);
        assert_eq!(h.release_point(Some(400), 1000, size), 400);
        assert_eq!(
            h.release_point(Some(0), size, size),
            size - size / 4,
            "never more than a quarter behind"
        );
        let mut unpinned = Holds::new(HashSet::new(), false);
        unpinned.sent(10);
        assert_eq!(
            unpinned.release_point(Some(5), 1000, size),
            1000,
            "nothing held"
        );
    }

    #[test]
    fn a_crash_written_before_is_skipped_once() {
        let mut h = Holds::new([(7, 9)].into_iter().collect(), true);
        assert!(h.written_before((7, 9)));
        assert!(!h.written_before((7, 9)));
        assert!(!h.written_before((8, 9)));
        assert_eq!(h.skipped, 1);
    }
}
