//! A spool: reports waiting for a network output, one file each in a directory of the state
//! directory, delivered oldest first and removed once delivered, so an outage or an agent
//! restart loses none and reorders none. Bounded in bytes: past the bound the oldest are
//! dropped, and counted.
//!
//! Files are `<sequence>.<key>.req`: the sequence orders them across restarts, the key is the
//! report's idempotency key. A file is written under a temporary name and renamed into place,
//! so a crash of the agent leaves whole files only (a temporary one is removed at start).
use std::{
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context, Result};

/// One waiting report.
#[derive(Clone, Debug)]
pub struct Spooled {
    pub seq: u64,
    pub key: String,
    pub path: PathBuf,
    pub bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Spooled>,
    bytes: u64,
    next_seq: u64,
    /// Dropped because the spool was full.
    dropped: u64,
}

impl Spool {
    /// Opens (or makes, 0700) the spool in `dir`, with what an earlier agent left in it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("making the spool {}", dir.display()))?;
        let mut waiting = Vec::new();
        for e in fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some((seq, key)) = name
                .strip_suffix(".req")
                .and_then(|n| n.split_once('.'))
                .and_then(|(s, k)| Some((s.parse::<u64>().ok()?, k.to_string())))
            else {
                continue;
            };
            let bytes = e.metadata().map_or(0, |m| m.len());
            waiting.push(Spooled {
                seq,
                key,
                path,
                bytes,
            });
        }
        waiting.sort_by_key(|s| s.seq);
        let state = State {
            next_seq: waiting.last().map_or(0, |s| s.seq + 1),
            bytes: waiting.iter().map(|s| s.bytes).sum(),
            queue: waiting.into(),
            dropped: 0,
        };
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a request body; the oldest waiting ones go when the spool is over its bound.
    /// Returns how many were dropped for room.
    pub fn push(&self, key: &str, body: &[u8]) -> Result<u64> {
        use std::io::Write;
        let seq = {
            let mut st = self.lock();
            st.next_seq += 1;
            st.next_seq - 1
        };
        let path = self.dir.join(format!("{seq:016}.{key}.req"));
        let tmp = self.dir.join(format!("{seq:016}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(body)?;
        drop(f);
        fs::rename(&tmp, &path)?;
        let mut st = self.lock();
        st.queue.push_back(Spooled {
            seq,
            key: key.to_string(),
            path,
            bytes: body.len() as u64,
        });
        st.bytes += body.len() as u64;
        let mut dropped = 0;
        while st.bytes > self.max_bytes && st.queue.len() > 1 {
            let old = st.queue.pop_front().expect("more than one");
            st.bytes -= old.bytes;
            let _ = fs::remove_file(&old.path);
            dropped += 1;
        }
        st.dropped += dropped;
        Ok(dropped)
    }

    /// The oldest waiting report.
    #[cfg(test)]
    pub fn front(&self) -> Option<Spooled> {
        self.lock().queue.front().cloned()
    }

    /// The `n` oldest waiting reports (fewer when fewer wait).
    pub fn front_n(&self, n: usize) -> Vec<Spooled> {
        self.lock().queue.iter().take(n).cloned().collect()
    }

    /// Removes `seq` once it was delivered (or refused for good).
    pub fn pop(&self, seq: u64) {
        let mut st = self.lock();
        if let Some(i) = st.queue.iter().position(|s| s.seq == seq) {
            let s = st.queue.remove(i).expect("found");
            st.bytes -= s.bytes;
            let _ = fs::remove_file(&s.path);
        }
    }

    /// Reports waiting now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cw-spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn reports_wait_in_order_across_a_reopen() {
        let d = dir("order");
        {
            let s = Spool::open(&d, 1 << 20).unwrap();
            for n in 0..3 {
                s.push(&format!("k{n}"), format!("body{n}").as_bytes())
                    .unwrap();
            }
            let first = s.front().unwrap();
            assert_eq!(first.key, "k0");
            s.pop(first.seq);
        }
        fs::write(d.join("0000000000000009.tmp"), "half").unwrap();
        let s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        let f = s.front().unwrap();
        assert_eq!(
            (
                f.key.as_str(),
                fs::read_to_string(&f.path).unwrap().as_str()
            ),
            ("k1", "body1")
        );
        s.push("k3", b"body3").unwrap();
        let keys: Vec<String> = std::iter::from_fn(|| {
            let f = s.front()?;
            s.pop(f.seq);
            Some(f.key)
        })
        .collect();
        assert_eq!(keys, ["k1", "k2", "k3"], "the new one after the old ones");
        assert!(!d.join("0000000000000009.tmp").exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let d = dir("full");
        let s = Spool::open(&d, 10).unwrap();
        for n in 0..5 {
            s.push(&format!("k{n}"), b"1234").unwrap();
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.dropped(), 3);
        assert_eq!(s.front().unwrap().key, "k3");
        let _ = fs::remove_dir_all(&d);
    }
}
