//! The prober thread: reads each new binary, attaches the Go probes to Go ones, and releases
//! them again once no process runs the binary, or when the file changes under them (a
//! rewritten file would keep probes at offsets that no longer start functions).
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use object::Object;

use super::{
    FileId, Limits, Msg, Request, Seen, Shared, State, KNOWN_MAX, NOT_GO_TTL, OVER_LIMIT_RETRY,
    SEEN_MAX,
};
use crate::{
    kernel::probe::{GoLinks, Probe},
    read::elf::Mapped,
    read::gobin::{self, FileNow, GoBinary},
    util::escape::Esc,
};

/// How often held binaries are checked (changed on disk? still run?).
const SWEEP: Duration = Duration::from_secs(1);
/// Threads that close uprobe_multi links at once when many are released.
const RELEASE_THREADS: usize = 64;

struct Held {
    links: GoLinks,
    bin: Arc<GoBinary>,
    /// The file's content stamp when it was probed: another one means rewritten in place.
    stamp: Option<(u64, i128)>,
    /// The last time a scan of /proc found a process running it.
    last_running: Instant,
    shown_as: String,
}

pub(super) struct Prober {
    probe: Probe,
    limits: Limits,
    shared: Arc<Shared>,
    held: HashMap<FileId, Held>,
    /// Go binaries ever left out for the limit (counted once each).
    over_limit: HashSet<FileId>,
    /// Said once that some process could not be inspected.
    warned_unseen: bool,
    last_sweep: Instant,
}

impl Prober {
    pub fn new(probe: Probe, limits: Limits, shared: Arc<Shared>) -> Prober {
        Prober {
            probe,
            limits,
            shared,
            held: HashMap::new(),
            over_limit: HashSet::new(),
            warned_unseen: false,
            last_sweep: Instant::now(),
        }
    }

    pub fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            match rx.recv_timeout(SWEEP) {
                Ok(Msg::Probe(req)) => self.handle(req),
                Ok(Msg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.last_sweep.elapsed() >= SWEEP {
                self.sweep();
                self.last_sweep = Instant::now();
            }
        }
        if self.probe.pinned() {
            // Pinned links stay attached for the next agent: closing ours detaches nothing.
            self.held.clear();
            return;
        }
        let ids: Vec<FileId> = self.held.keys().copied().collect();
        self.release_many(ids);
    }

    fn handle(&mut self, req: Request) {
        let state = self.probe_one(&req);
        let mut known = self.shared.known.lock().unwrap();
        match state {
            Some(s) => known.insert(req.id, s),
            // Nothing to read (gone, or another file by now): its next exec tries again.
            None => known.remove(&req.id),
        };
    }

    /// Opens, reads and (for Go) attaches; None when there was nothing to read.
    fn probe_one(&mut self, req: &Request) -> Option<State> {
        let file = open(req)?;
        let id = req.id;
        let shown = Esc(&req.shown_as);
        // The same inode probed under another identity: the file changed (or was touched),
        // and those probes are stale or would double every record.
        let stale: Vec<FileId> = self
            .held
            .keys()
            .filter(|k| k.same_inode(&id) && **k != id)
            .copied()
            .collect();
        for old in stale {
            self.release(old, Some("the file changed"));
        }
        let t0 = Instant::now();
        let map = match Mapped::new(&file) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cannot map {shown}: {e}");
                return Some(not_go());
            }
        };
        let parsed = gobin::parse(map.bytes(), file.try_clone().ok());
        let gnu_build_id = object::read::File::parse(map.bytes())
            .ok()
            .and_then(|o| o.build_id().ok().flatten().map(<[u8]>::to_vec));
        if map.damaged() {
            tracing::warn!("{shown} shrank while it was read: not probed this time");
            return None;
        }
        drop(map);
        let build = parsed.as_ref().ok().and_then(|g| g.as_ref()?.build.clone());
        if build.is_some() || gnu_build_id.is_some() {
            self.seen(Seen {
                exe: req.shown_as.clone(),
                build,
                gnu_build_id,
                at_ns: crate::model::clock::now_ns(),
            });
        }
        let mut g = match parsed {
            Ok(Some(g)) => g,
            Ok(None) | Err(_) => return Some(not_go()),
        };
        for p in &g.problems {
            tracing::info!("Go binary {shown}: {}", Esc(p));
        }
        let version = g
            .version
            .clone()
            .unwrap_or_else(|| "version unknown".into());
        if g.probes.is_empty() {
            tracing::warn!(
                "not probing Go binary {shown} ({version}): no probe address could be confirmed"
            );
            g.close();
            return Some(go(Arc::new(g), false, NOT_GO_TTL));
        }
        if self.held.len() >= self.limits.max_binaries {
            if self.over_limit.len() > KNOWN_MAX {
                self.over_limit.clear();
            }
            if self.over_limit.insert(id) {
                let c = &self.shared.counters;
                let n = c.over_limit.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(100) {
                    tracing::warn!(
                        "not probing Go binary {shown}: {} binaries are probed already (--go-max-binaries); {n} left unprobed so far",
                        self.held.len()
                    );
                }
            }
            g.close();
            return Some(go(Arc::new(g), false, OVER_LIMIT_RETRY));
        }
        // Attach through our own descriptor: the process may be gone by now, the file is not.
        let target = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match self.probe.attach_go(&target, &g.probes, (id.dev, id.ino)) {
            Ok(links) => {
                tracing::info!(
                    "probing Go binary {shown} ({version}, {} uprobes{}) in {} ms",
                    g.probes.len(),
                    if g.from_pclntab {
                        ", stripped: offsets from the pclntab"
                    } else {
                        ""
                    },
                    t0.elapsed().as_millis()
                );
                let bin = Arc::new(g);
                self.held.insert(
                    id,
                    Held {
                        links,
                        stamp: bin.file_now().map(|f| f.stamp),
                        bin: bin.clone(),
                        last_running: Instant::now(),
                        shown_as: req.shown_as.clone(),
                    },
                );
                self.shared
                    .counters
                    .probed_now
                    .store(self.held.len() as u64, Ordering::Relaxed);
                Some(go(bin, true, Duration::ZERO))
            }
            Err(e) => {
                tracing::warn!("not probing {shown}: {e:#}");
                g.close();
                Some(go(Arc::new(g), false, NOT_GO_TTL))
            }
        }
    }

    /// Hands an executable's build over to the report thread (attribution), dropping the
    /// oldest waiting one, counted, when it falls behind.
    fn seen(&self, s: Seen) {
        let mut seen = self.shared.seen.lock().unwrap();
        if seen.len() >= SEEN_MAX {
            seen.remove(0);
            self.shared
                .counters
                .seen_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        seen.push(s);
    }

    /// Releases binaries that changed on disk, and those no process runs any more: at once
    /// when the file is deleted (it cannot be exec'd again by path), after `release_after`
    /// otherwise. Forgets old "not Go" answers.
    fn sweep(&mut self) {
        let old = self.probe.sweep_previous_go();
        if old > 0 {
            tracing::info!(
                "detached the previous agent's probes on {old} Go binaries no process runs now"
            );
        }
        // One fstat per held binary: rewritten, deleted, or as it was.
        let files: Vec<(FileId, Option<FileNow>)> = self
            .held
            .iter()
            .map(|(id, h)| (*id, h.bin.file_now()))
            .collect();
        let changed: Vec<FileId> = files
            .iter()
            .filter(|(id, now)| now.is_some_and(|f| Some(f.stamp) != self.held[id].stamp))
            .map(|(id, _)| *id)
            .collect();
        for id in &changed {
            tracing::info!(
                "releasing the probes on Go binary {}: the file was rewritten",
                Esc(&self.held[id].shown_as)
            );
        }
        self.release_many(changed);
        let now = Instant::now();
        let idle: Vec<FileId> = {
            let known = self.shared.known.lock().unwrap();
            files
                .iter()
                .filter_map(|(id, file)| {
                    let h = self.held.get(id)?;
                    let exec = match known.get(id) {
                        Some(State::Go { last_exec, .. }) => *last_exec,
                        _ => h.last_running,
                    };
                    let grace = if file.is_some_and(|f| f.deleted) {
                        SWEEP
                    } else {
                        self.limits.release_after
                    };
                    (now.duration_since(exec.max(h.last_running)) >= grace).then_some(*id)
                })
                .collect()
        };
        if !idle.is_empty() {
            let (running, unseen) = running_inodes();
            if let (Some(pid), false) = (unseen, self.warned_unseen) {
                self.warned_unseen = true;
                tracing::warn!(
                    "cannot see which binary pid {pid} runs (neither its exe nor its maps are readable): a Go binary only it runs may lose its probes after --go-release-after"
                );
            }
            let (still, gone): (Vec<FileId>, Vec<FileId>) = idle
                .into_iter()
                .partition(|id| running.contains(&(id.dev, id.ino)));
            for id in still {
                if let Some(h) = self.held.get_mut(&id) {
                    h.last_running = now;
                }
            }
            self.release_many(gone);
        }
        let mut known = self.shared.known.lock().unwrap();
        known.retain(|_, s| !matches!(s, State::NotGo { since } if since.elapsed() >= NOT_GO_TTL));
        if known.len() > KNOWN_MAX {
            known.retain(|_, s| matches!(s, State::Pending | State::Go { probed: true, .. }));
        }
    }

    fn release(&mut self, id: FileId, why: Option<&str>) {
        if let (Some(h), Some(why)) = (self.held.get(&id), why) {
            tracing::info!(
                "releasing the probes on Go binary {}: {why}",
                Esc(&h.shown_as)
            );
        }
        self.release_many(vec![id]);
    }

    /// Releases the probes on `ids`. Each uprobe_multi link waits out an RCU grace period as
    /// it goes; closed from many threads at once the waits overlap, so five hundred take about
    /// as long as a few. Perf-event links tear down under one global lock: one at a time.
    fn release_many(&mut self, ids: Vec<FileId>) {
        let mut fds = Vec::new();
        for id in &ids {
            let Some(h) = self.held.remove(id) else {
                continue;
            };
            match h.links {
                GoLinks::Multi(fd) => {
                    self.probe.unpin_go((id.dev, id.ino));
                    fds.push(fd)
                }
                perf => self.probe.detach_go(perf),
            }
        }
        if !fds.is_empty() {
            let per_thread = fds.len().div_ceil(RELEASE_THREADS);
            std::thread::scope(|s| {
                let mut rest = fds;
                while !rest.is_empty() {
                    let tail = rest.split_off(per_thread.min(rest.len()));
                    let chunk = std::mem::replace(&mut rest, tail);
                    s.spawn(move || drop(chunk));
                }
            });
        }
        let mut known = self.shared.known.lock().unwrap();
        for id in &ids {
            known.remove(id);
        }
        let c = &self.shared.counters;
        c.released.fetch_add(ids.len() as u64, Ordering::Relaxed);
        c.probed_now
            .store(self.held.len() as u64, Ordering::Relaxed);
    }
}

/// The binary the request names: through the process while it runs; once it is gone, at the
/// absolute path it ran from, but only if the file there is the very one the kernel saw at
/// exec (a path in our own view may name another file: another mount namespace, a replaced
/// file).
fn open(req: &Request) -> Option<File> {
    req.id
        .open_at(format!("/proc/{}/exe", req.pid))
        .or_else(|| {
            let p = &req.shown_as;
            p.starts_with('/').then(|| req.id.open_at(p)).flatten()
        })
}

fn not_go() -> State {
    State::NotGo {
        since: Instant::now(),
    }
}

fn go(bin: Arc<GoBinary>, probed: bool, retry_after: Duration) -> State {
    State::Go {
        bin,
        probed,
        last_exec: Instant::now(),
        retry_at: Instant::now() + retry_after,
    }
}

/// (device, inode) of every binary a process runs or maps now. Through `/proc/<pid>/exe`; for
/// processes whose exe this agent may not open (no CAP_SYS_PTRACE), through their `maps`
/// (readable with CAP_PERFMON). Also a process that could be seen through neither (a sandbox's
/// init can refuse even root), if any.
fn running_inodes() -> (HashSet<(u64, u64)>, Option<u32>) {
    let mut out = HashSet::new();
    let mut unseen = None;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (out, unseen);
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match std::fs::metadata(format!("/proc/{pid}/exe")) {
            Ok(md) => {
                let id = FileId::of(&md);
                out.insert((id.dev, id.ino));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"));
                match maps {
                    Ok(text) => out.extend(text.lines().filter_map(mapped_inode)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => unseen = Some(pid),
                }
            }
            // Gone, or a kernel thread: runs no binary.
            Err(_) => {}
        }
    }
    (out, unseen)
}

/// (kernel device, inode) of a file mapping in a `/proc/<pid>/maps` line.
fn mapped_inode(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split_ascii_whitespace();
    let dev = f.nth(3)?;
    let ino: u64 = f.next()?.parse().ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev = crate::read::elf::id::mkdev(
        u64::from_str_radix(major, 16).ok()?,
        u64::from_str_radix(minor, 16).ok()?,
    );
    (ino != 0).then_some((dev, ino))
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_lines_name_their_inode() {
        let l = "55f7c4f43000-55f7c4f44000 r-xp 00001000 fe:00 247774   /usr/bin/sleep";
        assert_eq!(super::mapped_inode(l), Some(((0xfe << 20), 247774)));
        assert_eq!(
            super::mapped_inode("7ffd1-7ffd2 rw-p 00000000 00:00 0   [stack]"),
            None
        );
    }
}
