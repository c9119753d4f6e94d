//! The kernel's core handler (`--dumps`): the agent takes `core_pattern`, the kernel hands it
//! each dying process's core, and the agent keeps what the report needs from it (every
//! thread's registers and stack top, [`crate::model::dump`]) while the kernel holds the
//! process. The kernel's records stay the source of every report: a dump only adds threads to
//! one, and no dump (none taken, cut, refused) never loses or delays a crash past the bound.
//!
//! How the kernel hands a core over depends on its release ([`Protocol`]): from 6.17 the
//! request protocol (`@@/path`: the kernel asks, the agent answers "write it to me, and wait
//! until I close"; the process stays until then), on 6.16 a plain socket (`@/path`); before
//! 6.16 (or with `--dump-via pipe`) a pipe helper, this binary's `core-helper`, which hands the
//! stream to the same socket ([`helper`]).
//!
//! Bounds, so that a dump never changes how a process dies beyond its duration:
//! - the agent marks itself non-dumpable (its own crash must not wait on itself);
//! - the kernel connects without blocking: with no agent listening, or its queue full, the
//!   process dies without a core at once;
//! - one thread only accepts; at most [`WORKERS`] dumps are read at once, and a crash past
//!   that is refused its core (answered REJECT, counted);
//! - each dump is read until `--dump-timeout`, then its socket is closed: the kernel stops
//!   writing and the process goes on dying (counted, said in the report's `dump.cut`);
//! - an agent killed mid-dump closes its sockets as it dies: the same.
//!
//! From a container (the DaemonSet) the socket, the helper and the pattern are the host's
//! ([`host`]). A CPython process's own stacks are read from its memory while it is held
//! ([`python`]).
//! The previous `core_pattern` is restored at the stop ([`pattern`]); while the agent runs,
//! the previous handler is not fed (docs/dumps.md says why).
pub mod helper;
mod host;
pub mod keep;
mod pattern;
mod python;
mod server;

use std::{
    collections::{HashMap, HashSet},
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use pattern::Protocol;

use crate::{model::dump::Dump, read::elfcore};

/// Dumps read at once; a crash past them is refused its core.
pub const WORKERS: usize = 4;
/// Dumps filed and not yet taken by a report are dropped after this long (a crash whose
/// records were lost) or past this many.
const KEEP: Duration = Duration::from_secs(300);
const KEEP_MAX: usize = 256;

pub struct Settings {
    /// How the kernel hands cores over; None: the best this kernel has.
    pub via: Option<Protocol>,
    pub socket: PathBuf,
    pub timeout: Duration,
    pub limits: elfcore::Limits,
    /// Where the previous pattern is saved for the next agent.
    pub state_dir: Option<PathBuf>,
    /// Keep each whole core (`--keep-cores`) under the state directory, within this quota.
    pub keep_cores: Option<crate::util::quota::Quota>,
}

/// Dumps in progress and filed, by process id, for the report thread.
#[derive(Default)]
pub struct Dumps {
    table: Mutex<Table>,
    changed: Condvar,
    stats: Arc<Stats>,
    /// Where whole cores are kept (`--keep-cores`).
    pub cores: Option<keep::Cores>,
}

#[derive(Default)]
struct Table {
    reading: HashSet<u32>,
    filed: HashMap<u32, (Instant, Arc<Dump>)>,
}

impl Dumps {
    fn begin(&self, pid: u32) {
        if let Ok(mut t) = self.table.lock() {
            t.reading.insert(pid);
        }
    }

    fn finish(&self, pid: u32, dump: Dump) {
        if let Ok(mut t) = self.table.lock() {
            t.reading.remove(&pid);
            let now = Instant::now();
            // A dump no report took (its crash's records lost) leaves no core behind.
            let gone = |d: &Dump| {
                self.stats.unclaimed.fetch_add(1, Ordering::Relaxed);
                d.core.as_ref().map(|c| std::fs::remove_file(&c.path))
            };
            t.filed.retain(|_, (at, d)| {
                let keep = now.duration_since(*at) < KEEP;
                if !keep {
                    gone(d);
                }
                keep
            });
            if t.filed.len() >= KEEP_MAX {
                let oldest = t
                    .filed
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(p, _)| *p);
                if let Some((_, d)) = oldest.and_then(|p| t.filed.remove(&p)) {
                    gone(&d);
                }
            }
            t.filed.insert(pid, (now, Arc::new(dump)));
        }
        self.changed.notify_all();
    }

    /// The dump of `pid`, waiting up to `wait` while one is being read.
    pub fn take(&self, pid: u32, wait: Duration) -> Option<Arc<Dump>> {
        let until = Instant::now() + wait;
        let mut t = self.table.lock().ok()?;
        loop {
            if let Some((_, d)) = t.filed.remove(&pid) {
                return Some(d);
            }
            let left = until.saturating_duration_since(Instant::now());
            if !t.reading.contains(&pid) || left.is_zero() {
                return None;
            }
            t = self.changed.wait_timeout(t, left).ok()?.0;
        }
    }
}

/// What the handler did, for the stop line and the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Core streams read.
    pub taken: AtomicU64,
    /// Refused: too many dumps at once (their crashes reported from the kernel's records).
    pub busy: AtomicU64,
    /// Cut at `--dump-timeout`.
    pub timed_out: AtomicU64,
    /// Less than whole for any reason (the timeout, the reader's bounds, a broken stream).
    pub cut: AtomicU64,
    /// Connections that never became a dump (no peer, a failed handshake).
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
    pub held_ms_max: AtomicU64,
    /// Dumps no report took within a minute (their crash's kernel records lost): dropped.
    pub unclaimed: AtomicU64,
}

/// The running handler.
pub struct Handler {
    pub dumps: Arc<Dumps>,
    pub stats: Arc<Stats>,
    pub timeout: Duration,
    taken: pattern::Taken,
    socket: PathBuf,
    stopping: Arc<AtomicBool>,
}

impl Handler {
    /// Listens on the socket, then takes `core_pattern`.
    pub fn start(s: Settings, release: &str) -> Result<Handler> {
        let protocol = s.via.unwrap_or_else(|| Protocol::of_release(release));
        // SAFETY: prctl with an integer argument changes only this process's flag.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            bail!(
                "marking the agent non-dumpable: {}",
                std::io::Error::last_os_error()
            );
        }
        let cores = match (s.keep_cores, &s.state_dir) {
            (Some(q), Some(dir)) => Some(
                keep::Cores::open(dir, q)
                    .with_context(|| format!("the cores' directory under {}", dir.display()))?,
            ),
            (Some(_), None) => bail!("--keep-cores needs the state directory (no --no-store)"),
            (None, _) => None,
        };
        let listener = listen(&s.socket)?;
        let ours = host::check_socket(&s.socket)
            .and_then(|()| protocol.pattern(&s.socket, s.timeout))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&s.socket);
            })?;
        let stats = Arc::new(Stats::default());
        let dumps = Arc::new(Dumps {
            cores,
            stats: stats.clone(),
            ..Dumps::default()
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let worker = server::Worker {
            protocol,
            timeout: s.timeout,
            limits: s.limits,
            dumps: dumps.clone(),
            stats: stats.clone(),
            stall: std::env::var("CRASHWATCH_FAILPOINT_DUMP_STALL").ok(),
        };
        let stop = stopping.clone();
        std::thread::Builder::new()
            .name("dumps".into())
            .spawn(move || accept(listener, worker, stop))
            .context("starting the dump thread")?;
        let taken = match pattern::take(&ours, s.state_dir.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                stopping.store(true, Ordering::Relaxed);
                let _ = std::fs::remove_file(&s.socket);
                return Err(e);
            }
        };
        Ok(Handler {
            dumps,
            stats,
            timeout: s.timeout,
            taken,
            socket: s.socket,
            stopping,
        })
    }

    /// The pattern the agent set and the one it replaced.
    pub fn patterns(&self) -> (&str, &str) {
        (&self.taken.ours, &self.taken.previous)
    }

    pub fn still_ours(&self) -> bool {
        self.taken.still_ours()
    }

    /// Restores the previous pattern and stops listening; says what was done.
    pub fn stop(self) -> String {
        self.taken.restore();
        self.stopping.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which sees the stop and ends.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
        let s = &self.stats;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "dumps: {} read ({} MiB, longest hold {} ms), {} cut at --dump-timeout, {} refused (busy), {} failed",
            r(&s.taken),
            r(&s.bytes) >> 20,
            r(&s.held_ms_max),
            r(&s.timed_out),
            r(&s.busy),
            r(&s.failed)
        )
    }
}

fn listen(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?,
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(l)
}

/// Accepts connections until the stop, each handed to a worker thread at once.
fn accept(l: UnixListener, w: server::Worker, stopping: Arc<AtomicBool>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in l.incoming() {
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        let Ok(s) = conn else { continue };
        let over = busy.fetch_add(1, Ordering::AcqRel) >= WORKERS;
        let (one, busy) = (w.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("dump".into())
            .spawn(move || {
                one.serve(s, over);
                busy.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            // The connection went with the closure: the process dies without a core.
            w.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
