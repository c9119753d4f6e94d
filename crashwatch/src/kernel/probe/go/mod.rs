//! Finds the Go binaries processes run and keeps the Go runtime probes on each while it runs.
//!
//! Binaries are keyed by file identity ([`FileId`]: device, inode, change time, size), never by
//! path: the same path in two containers is two binaries, one binary run by a thousand
//! processes is probed once, and a new file on a reused inode is a new binary. A binary is
//! opened through `/proc/<pid>/exe` of a process running it (which reaches into containers and
//! survives the file's deletion); once that process is gone, through the absolute path it ran
//! from only if the file there has exactly the identity the kernel recorded.
//!
//! This side is the record loop's: it asks for binaries to be probed and looks probed ones up,
//! never waiting. Everything slow (reading a binary, attaching, detaching: milliseconds, and a
//! kernel grace period per teardown) happens on the prober thread ([`prober`]), which owns the
//! programs. Probes are released once no process has run a binary for `release_after`, at
//! most `max_binaries` are held at once, and what "not Go" is remembered expires.
mod prober;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::Probe;
pub use crate::read::elf::FileId;
use crate::read::gobin::GoBinary;

/// How many binaries are probed at once, and for how long after their last run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_binaries: usize,
    pub release_after: Duration,
}

/// What is known about a binary.
enum State {
    /// Asked for; the prober has not finished with it.
    Pending,
    /// A Go binary; `probed` when its probes are in the kernel.
    Go {
        bin: Arc<GoBinary>,
        probed: bool,
        /// The newest exec of it the record loop saw.
        last_exec: Instant,
        /// Not probed: when an exec may ask again (soon when only the limit was in the way,
        /// much later when the binary was refused or the kernel said no).
        retry_at: Instant,
    },
    /// Not a Go binary (or not an ELF file), as of `since`.
    NotGo { since: Instant },
}

/// "Not Go" is forgotten after this long, and the cache of answers holds at most
/// [`KNOWN_MAX`] binaries: identities are unique, but a stale "no" must not last forever. A
/// Go binary that could not be probed is tried again after the same time.
const NOT_GO_TTL: Duration = Duration::from_secs(600);
/// A Go binary left out for `--go-max-binaries` is tried again this long after, if it runs.
const OVER_LIMIT_RETRY: Duration = Duration::from_secs(10);
const KNOWN_MAX: usize = 1 << 16;

/// What the prober did so far, for the agent's log and stop line.
#[derive(Default)]
struct Counters {
    probed_now: AtomicU64,
    released: AtomicU64,
    over_limit: AtomicU64,
    seen_dropped: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoStats {
    /// Binaries whose probes are in the kernel now.
    pub probed_now: u64,
    /// Binaries whose probes were released (no process ran them any more, or they changed).
    pub released: u64,
    /// Go binaries left unprobed because `max_binaries` were probed already.
    pub over_limit: u64,
}

struct Shared {
    known: Mutex<HashMap<FileId, State>>,
    counters: Counters,
    /// Executables read since the report thread last looked, at most [`SEEN_MAX`].
    seen: Mutex<Vec<Seen>>,
}

/// An executable the prober read (every new one is read once, Go or not): what says which
/// build it is, for the crash clusters' attribution.
pub struct Seen {
    /// Where the process says it is.
    pub exe: String,
    pub build: Option<crate::read::gobin::BuildInfo>,
    pub gnu_build_id: Option<Vec<u8>>,
    /// Unix time (ns).
    pub at_ns: u64,
}

/// Sightings waiting for the report thread; past this, the oldest are dropped (and counted).
const SEEN_MAX: usize = 4096;

struct Request {
    pid: u32,
    id: FileId,
    /// Where the process says the binary is: for log lines, and opened only to be checked
    /// against `id`.
    shown_as: String,
}

enum Msg {
    Probe(Request),
    Shutdown,
}

/// Looks probed binaries up without waiting for the prober.
#[derive(Clone)]
pub struct GoView {
    shared: Arc<Shared>,
}

impl GoView {
    /// The Go binary with identity `id`, once read.
    pub fn lookup(&self, id: FileId) -> Option<Arc<GoBinary>> {
        match self.shared.known.lock().unwrap().get(&id) {
            Some(State::Go { bin, .. }) => Some(bin.clone()),
            _ => None,
        }
    }

    /// The Go binary with identity `id`, waiting up to `max` while the prober is still
    /// reading it: the first run of a new build often dies before the prober is done, and
    /// its report must name the same program (build info) as every later run's, or the
    /// crash would fall in a cluster of its own.
    pub fn lookup_settled(&self, id: FileId, max: Duration) -> Option<Arc<GoBinary>> {
        let deadline = Instant::now() + max;
        loop {
            match self.shared.known.lock().unwrap().get(&id) {
                Some(State::Go { bin, .. }) => return Some(bin.clone()),
                Some(State::Pending) if Instant::now() < deadline => {}
                _ => return None,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A new handle on Go binary `id`'s file, while the prober holds it open (it was opened
    /// through a process running it, and checked to be that identity).
    pub fn held_file(&self, id: FileId) -> Option<std::fs::File> {
        self.lookup(id)?.file_handle()
    }

    /// The executables read since the last call.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.shared.seen.lock().unwrap())
    }

    /// Sightings dropped because the report thread did not take them in time.
    pub fn seen_dropped(&self) -> u64 {
        self.shared.counters.seen_dropped.load(Ordering::Relaxed)
    }
}

pub struct GoProbes {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl GoProbes {
    /// Starts the prober thread; it owns `probe` from now on.
    pub fn start(probe: Probe, limits: Limits) -> GoProbes {
        let shared = Arc::new(Shared {
            known: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            seen: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel::<Msg>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("go-prober".into())
            .spawn(move || prober::Prober::new(probe, limits, s).run(rx))
            .expect("spawning the Go prober thread");
        GoProbes {
            shared,
            tx,
            thread: Some(thread),
        }
    }

    /// `pid` runs binary `id`: probe it unless it is known. `shown_as` names it in log lines.
    pub fn request(&self, pid: u32, id: FileId, shown_as: &str) {
        let mut known = self.shared.known.lock().unwrap();
        let now = Instant::now();
        let ask = match known.get_mut(&id) {
            None => true,
            Some(State::Pending) => false,
            Some(State::Go {
                probed,
                last_exec,
                retry_at,
                ..
            }) => {
                *last_exec = now;
                let again = !*probed && now >= *retry_at;
                if again {
                    *retry_at = now + NOT_GO_TTL;
                }
                again
            }
            Some(State::NotGo { since }) => since.elapsed() >= NOT_GO_TTL,
        };
        if !ask {
            return;
        }
        if !matches!(known.get(&id), Some(State::Go { .. })) {
            known.insert(id, State::Pending);
        }
        let _ = self.tx.send(Msg::Probe(Request {
            pid,
            id,
            shown_as: shown_as.to_string(),
        }));
    }

    /// What other threads may look up (the report thread).
    pub fn view(&self) -> GoView {
        GoView {
            shared: self.shared.clone(),
        }
    }

    /// Whether `id` is a Go binary, once the prober has an answer.
    pub fn verdict(&self, id: FileId) -> Option<bool> {
        match self.shared.known.lock().unwrap().get(&id)? {
            State::Pending => None,
            State::Go { .. } => Some(true),
            State::NotGo { .. } => Some(false),
        }
    }

    /// `id` is a Go binary (probed or not).
    pub fn is_go(&self, id: FileId) -> bool {
        matches!(
            self.shared.known.lock().unwrap().get(&id),
            Some(State::Go { .. })
        )
    }

    pub fn stats(&self) -> GoStats {
        let c = &self.shared.counters;
        GoStats {
            probed_now: c.probed_now.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            over_limit: c.over_limit.load(Ordering::Relaxed),
        }
    }

    /// Releases every probe and stops the prober; returns how long the release took.
    pub fn shutdown(mut self) -> Duration {
        let t0 = Instant::now();
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        t0.elapsed()
    }
}
