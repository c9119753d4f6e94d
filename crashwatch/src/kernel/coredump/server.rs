//! The coredump socket's server: one thread accepts (and never waits on anything else, so a
//! crashing process is never left waiting for an answer), a bounded number of workers each
//! take one dying process: answer the kernel's request, read its threads' names, read the
//! core stream to its end or to the deadline, file the [`Dump`], and close, which lets the
//! process finish dying.
use std::{
    io::{Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use super::{
    keep::{self, Tee},
    Dumps, Protocol, Stats,
};
use crate::{
    model::dump::{Dump, DumpThread},
    read::elfcore,
};

const COREDUMP_KERNEL: u64 = 1 << 0;
const COREDUMP_REJECT: u64 = 1 << 2;
const COREDUMP_WAIT: u64 = 1 << 3;
/// The largest request read; the kernel's is 16 bytes today.
const REQ_MAX: usize = 4096;

/// What one worker needs.
#[derive(Clone)]
pub(super) struct Worker {
    pub(super) protocol: Protocol,
    pub(super) timeout: Duration,
    pub(super) limits: elfcore::Limits,
    pub(super) dumps: Arc<Dumps>,
    pub(super) stats: Arc<Stats>,
    /// Fault injection for the tests (`CRASHWATCH_FAILPOINT_DUMP_STALL=COMM`): the dump of a
    /// process with this name waits out its deadline before its stream is read.
    pub(super) stall: Option<String>,
}

impl Worker {
    /// Takes one connection; `busy`: too many dumps at once, refuse this one's core (its
    /// crash is still reported from the kernel's records).
    pub(super) fn serve(&self, mut s: UnixStream, busy: bool) {
        let started = Instant::now();
        let _ = s.set_read_timeout(Some(self.timeout));
        let _ = s.set_write_timeout(Some(self.timeout));
        let pid = match self.protocol {
            Protocol::Pipe => helper_pid(&mut s),
            _ => peer(&s).map(|(pid, _)| pid),
        };
        let Some(pid) = pid else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.protocol == Protocol::Request {
            let mask = if busy {
                COREDUMP_REJECT
            } else {
                COREDUMP_KERNEL | COREDUMP_WAIT
            };
            if let Err(e) = handshake(&mut s, mask) {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("core dump of pid {pid}: {e}");
                return;
            }
        }
        if busy {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.dumps.begin(pid);
        let names = thread_names(pid, self.limits.threads);
        // Before the stream is read: the kernel waits on the socket, the memory is whole.
        let python = super::python::stacks(pid);
        let until = started + self.timeout;
        if let Some(comm) = &self.stall {
            let own = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if own.trim_end() == comm {
                tracing::info!("dump of pid {pid}: stalled (failpoint)");
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
        }
        let mut writing = self.dumps.cores.as_ref().map(|c| c.start(pid));
        let root = keep::root_on_host(pid);
        let mut stream = Tee {
            r: Deadline { s: &s, until },
            w: writing.as_mut(),
            n: 0,
        };
        let core = elfcore::read(&mut stream, &self.limits);
        // A kept core is the whole stream: the rest, after what the reader wanted.
        let whole = stream.rest();
        let bytes = stream.n;
        let timed_out = Instant::now() >= until;
        let (core_file, core_missing) = writing.map_or((None, None), keep::Writing::finish);
        let mut cut = core.cut;
        if core_file.is_some() && !whole && !timed_out {
            cut.push("the stream broke before its end: the kept core is partial".into());
        }
        if timed_out {
            self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            cut.insert(
                0,
                format!("cut at --dump-timeout ({} s)", self.timeout.as_secs_f64()),
            );
        }
        let threads = core
            .threads
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let (tid, name) = names
                    .iter()
                    .find(|n| n.ns_tid == t.tid)
                    .map_or((t.tid, None), |n| (n.tid, Some(n.name.clone())));
                DumpThread {
                    tid,
                    name,
                    crashed: i == 0 && t.signal != 0,
                    regs: t.regs,
                    stack: t.stack,
                }
            })
            .collect();
        let dump = Dump {
            threads,
            bytes,
            held_ms: started.elapsed().as_millis() as u64,
            cut: (!cut.is_empty()).then(|| cut.join("; ")),
            fault: core.fault,
            around_fault: core.around_fault,
            core: core_file,
            core_missing,
            root,
            python,
        };
        let st = &self.stats;
        st.taken.fetch_add(1, Ordering::Relaxed);
        st.bytes.fetch_add(bytes, Ordering::Relaxed);
        st.cut
            .fetch_add(u64::from(dump.cut.is_some()), Ordering::Relaxed);
        self.stats
            .held_ms_max
            .fetch_max(dump.held_ms, Ordering::Relaxed);
        // Filed before the close: the process's exit, which the report waits for, follows it.
        self.dumps.finish(pid, dump);
        drop(s);
    }
}

/// The request protocol: the kernel's request, our answer, its mark.
fn handshake(s: &mut UnixStream, mask: u64) -> Result<(), String> {
    let mut req = [0u8; 16];
    s.read_exact(&mut req)
        .map_err(|e| format!("reading the kernel's request: {e}"))?;
    let size = u32::from_le_bytes(req[..4].try_into().unwrap_or_default()) as usize;
    let offered = u64::from_le_bytes(req[8..16].try_into().unwrap_or_default());
    if size > 16 {
        // A newer kernel's longer request: the rest is features this agent does not know.
        let mut rest = vec![0u8; size.min(REQ_MAX) - 16];
        s.read_exact(&mut rest)
            .map_err(|e| format!("reading the kernel's request: {e}"))?;
    }
    if mask & !offered != 0 {
        return Err(format!(
            "the kernel offers {offered:#x}, the agent needs {mask:#x}"
        ));
    }
    let mut ack = [0u8; 16];
    ack[..4].copy_from_slice(&16u32.to_le_bytes());
    ack[8..].copy_from_slice(&mask.to_le_bytes());
    s.write_all(&ack)
        .map_err(|e| format!("answering the kernel: {e}"))?;
    let mut mark = [0u8; 4];
    s.read_exact(&mut mark)
        .map_err(|e| format!("reading the kernel's mark: {e}"))?;
    match u32::from_le_bytes(mark) {
        0 => Ok(()),
        m => Err(format!("the kernel refused the answer (mark {m})")),
    }
}

/// The process the pipe helper names: only a helper running as root (as the kernel runs it)
/// is heard.
fn helper_pid(s: &mut UnixStream) -> Option<u32> {
    if peer(s)?.1 != 0 {
        return None;
    }
    let mut head = [0u8; super::helper::HEADER];
    s.read_exact(&mut head).ok()?;
    if &head[..4] != super::helper::MAGIC {
        return None;
    }
    Some(u32::from_le_bytes(head[4..8].try_into().ok()?)).filter(|&p| p > 0)
}

/// The socket's peer (pid, uid): the dying process for the coredump socket (the kernel
/// connects as its thread-group leader), the helper for the pipe.
fn peer(s: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the call; the fd is the stream's own.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some((cred.pid as u32, cred.uid))
}

struct Named {
    tid: u32,
    /// The id in the process's own pid namespace, as its core gives it.
    ns_tid: u32,
    name: String,
}

/// The process's threads: the agent's id, the core's id, the name. The process cannot go
/// away while its core is being read.
fn thread_names(pid: u32, max: usize) -> Vec<Named> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .take(max)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let path = e.path();
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let ns_tid = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last()?.parse().ok())
                .unwrap_or(tid);
            let comm = std::fs::read(path.join("comm")).ok()?;
            let name = String::from_utf8_lossy(&comm)
                .trim_end_matches('\n')
                .to_string();
            Some(Named { tid, ns_tid, name })
        })
        .collect()
}

/// The stream, read until a deadline: each read waits only for the time left.
struct Deadline<'a> {
    s: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.s.set_read_timeout(Some(left))?;
        let mut s = self.s;
        s.read(buf)
    }
}
