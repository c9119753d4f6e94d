//! The kernel's records, decoded: what a process did (exec, exit), what happened to it (a
//! fatal signal, an OOM kill, a Go runtime's fatal path) and what it left (its stack copy,
//! its runtime's output, its last words). `kernel::decode` makes them from the ring buffer's
//! bytes; the pipeline folds them into crashes.
use super::process::{FileId, Maps, RootKey};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub ktime_ns: u64,
    pub start_ns: u64,
    pub comm: String,
}

#[derive(Clone, Debug)]
pub struct Exec {
    pub head: Head,
    /// The executable's identity, as the kernel saw it at exec.
    pub file: FileId,
    /// The path given to execve, as the process saw it: maybe relative, never opened.
    pub filename: String,
    pub args: Vec<String>,
    /// The argument list was longer than what was read.
    pub args_truncated: bool,
    pub cgroup: String,
    /// Absolute path of the executable, resolved by the agent when the record arrives.
    pub exe: Option<String>,
    /// The process's root directory when it is not the agent's (a container), noted by the
    /// agent when the record arrives.
    pub root: Option<RootKey>,
    /// The process's mount namespace as the kernel read it (0: unread).
    pub mnt_ns: u32,
    /// The executable's absolute path in the process's view as the kernel spelled it, when
    /// `filename` is relative and the whole path could be read.
    pub path: Option<String>,
    /// Sent at the exec itself; false for an identity read at a crash sign of a process
    /// whose exec was not sent (`filename` is empty then).
    pub at_exec: bool,
}

#[derive(Clone, Debug)]
pub struct Signal {
    pub head: Head,
    pub sig: i32,
    pub code: i32,
    pub handled: bool,
    /// The first word of siginfo's union: a fault's address, or the sender's pid and uid.
    pub fields: u64,
    pub start_code: u64,
    /// Raw `struct pt_regs` words; the probe's layout names them.
    pub regs: Vec<u64>,
    pub stack: Vec<u64>,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The process's mappings, captured by the agent when the record arrives (the process is
    /// usually still alive then: dumping core or running its handler).
    pub maps: Option<std::sync::Arc<Maps>>,
    /// The stack copy and loaded objects the kernel sent with this signal.
    pub captured: Option<std::sync::Arc<Stack>>,
}

/// A copy of the top of a thread's user stack and the objects its process had loaded.
#[derive(Clone, Debug, Default)]
pub struct Stack {
    pub head: Head,
    pub sp: u64,
    /// Bytes from `sp` on; `missing` lists the pieces that could not be read.
    pub data: Vec<u8>,
    /// Byte ranges of `data` that hold nothing (pages that were not resident).
    pub missing: Vec<std::ops::Range<usize>>,
    pub modules: Vec<Module>,
    /// The list of loaded objects was cut at its kernel-side limit.
    pub modules_truncated: bool,
    /// The list could not be read at all (no auxv, unreadable program headers).
    pub modules_unreadable: bool,
    /// The hook does not read the list (Go's fatal-path probes).
    pub modules_not_taken: bool,
}

impl Stack {
    /// The 8-byte word at `addr`, when the copy holds it.
    pub fn word(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.sp)?).ok()?;
        let end = off.checked_add(8)?;
        let b = self.data.get(off..end)?;
        if self.missing.iter().any(|r| r.start < end && off < r.end) {
            return None;
        }
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// An object the dynamic linker loaded, as the kernel read it from the process's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// Load bias (`l_addr`): runtime address minus link-time address.
    pub bias: u64,
    /// Path in the process's view; empty for the executable (the first module).
    pub path: String,
    /// Where its dynamic section was in memory (0 when it has none).
    pub dynamic: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoWhat {
    Panic,
    Fatal,
}

/// A Go runtime fatal path: an unrecovered panic or a fatal error.
#[derive(Clone, Debug)]
pub struct Go {
    pub head: Head,
    pub what: GoWhat,
    /// The panic's string value, or the fatal error's message.
    pub text: Option<String>,
    /// The panic value's type descriptor in the process (0 for fatal errors).
    pub type_ptr: u64,
    pub start_code: u64,
    pub stack: Vec<u64>,
    /// The return address at the probe: the probed function's caller.
    pub caller: u64,
    /// RBP at the probe.
    pub bp: u64,
    /// The probed thread's user registers, raw `pt_regs` words (empty when unread).
    pub regs: Vec<u64>,
    /// Mappings captured when the record arrived (the process is printing, so alive).
    pub maps: Option<std::sync::Arc<Maps>>,
    pub captured: Option<std::sync::Arc<Stack>>,
}

/// A piece of the Go runtime's printed output.
#[derive(Clone, Debug)]
pub struct GoOutput {
    pub head: Head,
    pub data: Vec<u8>,
    /// The write was longer than what the kernel sent.
    pub cut: bool,
}

#[derive(Clone, Debug)]
pub struct Exit {
    pub head: Head,
    pub status: u32,
    /// The last stop request (SIGTERM, SIGINT) the process handled itself, and when it came
    /// (kernel time): a SIGKILL after it is a stop that outlived its grace period.
    pub asked: Option<(i32, u64)>,
}

/// The OOM killer chose a process: what the kernel said about it and its memory cgroups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Oom {
    pub head: Head,
    /// `oom_score_adj` and `rss_pages` are the victim's (older kernels name only its pid).
    pub victim_read: bool,
    pub oom_score_adj: i32,
    /// Resident pages: file, anon, swap entries, shmem.
    pub rss_pages: [i64; 4],
    /// `(usage, max)` in pages of its memory cgroup and each parent, its own first.
    pub memcg: Vec<(u64, u64)>,
}

#[derive(Clone, Debug)]
pub enum Record {
    Exec(Exec),
    Signal(Signal),
    Exit(Exit),
    Oom(Oom),
    Go(Go),
    GoOutput(GoOutput),
    Stack(Stack),
    LastWords(LastWords),
}

/// What a process wrote to stderr before it died abnormally, put back in order: the head (a
/// little before the first line a runtime prints when it dies, and on from there), a marker
/// for what neither end kept, and the tail.
#[derive(Clone, Debug, Default)]
pub struct LastWords {
    pub head: Head,
    pub text: Vec<u8>,
    /// Bytes the process wrote in all.
    pub written: u64,
    /// `text` is not all of it.
    pub truncated: bool,
    /// Bytes the kernel could not read from the process, shown in `text` as unreadable.
    pub unreadable: u64,
}
