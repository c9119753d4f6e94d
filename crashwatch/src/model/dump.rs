//! A dying process as the kernel's core dump shows it: every thread's registers and the top of
//! its stack, taken while the kernel held the process (`kernel::coredump`), unwound and named
//! by the symbolize stage into the report's `threads`.
use super::record::Stack;

/// The names of x86_64's `user_regs_struct` words, in order: the core's `NT_PRSTATUS`
/// registers. The first 21 are the kernel's `pt_regs` in the same order and named as a
/// report's `signal.registers` names them.
pub const X86_64_REGS: [&str; 27] = [
    "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
    "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
];
/// Word indexes in [`X86_64_REGS`].
pub const REG_BP: usize = 4;
pub const REG_ORIG_AX: usize = 15;
pub const REG_IP: usize = 16;
pub const REG_SP: usize = 19;
pub const REG_FS_BASE: usize = 21;

/// What one core dump held.
#[derive(Clone, Debug, Default)]
pub struct Dump {
    /// Every thread the core holds, the one that took the fatal signal first.
    pub threads: Vec<DumpThread>,
    /// Bytes of the core stream read.
    pub bytes: u64,
    /// How long the process was held for its dump, in milliseconds.
    pub held_ms: u64,
    /// Why the dump is less than whole (cut at `--dump-timeout`, threads or stack bytes over
    /// their bounds, a malformed stream); None when whole.
    pub cut: Option<String>,
    /// The fatal signal's siginfo, from the core.
    pub fault: Option<Fault>,
    /// The memory around the fault's address (its start, its bytes), where the core held it.
    pub around_fault: Option<(u64, Vec<u8>)>,
    /// The whole core, compressed as it streamed past (`--keep-cores`), not yet filed.
    pub core: Option<CoreFile>,
    /// Why the core was not kept although asked (its quota, the free space, a write error).
    pub core_missing: Option<String>,
    /// Where the process's root directory is in the agent's view, when it is not the host's
    /// (a container's root filesystem, while it is mounted): gdb's sysroot for the core.
    pub root: Option<std::path::PathBuf>,
    /// A CPython process's own stacks, read from its memory while the kernel held it.
    pub python: Option<PyStacks>,
}

/// What a dying CPython's memory said of its threads' Python stacks.
#[derive(Clone, Debug, Default)]
pub struct PyStacks {
    /// `3.11`.
    pub version: String,
    pub threads: Vec<PyThread>,
    /// What was left out (bounds, unreadable memory), or why nothing could be read.
    pub cut: Vec<String>,
}

/// One Python thread state and its frames.
#[derive(Clone, Debug, Default)]
pub struct PyThread {
    /// `pthread_self()` of its thread: the thread's `fs_base` on x86_64.
    pub thread_id: u64,
    /// The thread's id in the process's pid namespace (3.11+).
    pub native_id: Option<u64>,
    /// Innermost first.
    pub frames: Vec<PyFrame>,
}

/// One Python frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PyFrame {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
    /// The outermost frame of one call of the eval loop (`_PyEval_EvalFrameDefault`): the
    /// frames from the last entry to this one replace that native frame in a mixed stack.
    pub entry: bool,
}

/// A core written compressed (zstd) beside the minidumps, under a temporary name until its
/// report files it.
#[derive(Clone, Debug, Default)]
pub struct CoreFile {
    pub path: std::path::PathBuf,
    /// Bytes written (compressed).
    pub bytes: u64,
}

/// A fatal signal as the kernel's siginfo gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub signal: u32,
    pub code: i32,
    /// `si_addr`: the faulting address for SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP.
    pub addr: u64,
}

/// A file mapped into the dumped process, as a minidump lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub base: u64,
    pub end: u64,
    /// Its path in the process's view.
    pub path: String,
    pub build_id: Option<Vec<u8>>,
}

/// One thread of a dump.
#[derive(Clone, Debug, Default)]
pub struct DumpThread {
    /// Its id as the agent sees it (the host's, for a thread in a container), else as the core
    /// gives it (the process's own namespace).
    pub tid: u32,
    /// Its name (`/proc/PID/task/TID/comm`), read while the process was held.
    pub name: Option<String>,
    /// The thread that took the fatal signal (the core's first).
    pub crashed: bool,
    /// The `user_regs_struct` words ([`X86_64_REGS`]).
    pub regs: Vec<u64>,
    /// The top of its stack from the stack pointer on, when the core held it.
    pub stack: Option<Stack>,
}

impl DumpThread {
    pub fn reg(&self, i: usize) -> Option<u64> {
        self.regs.get(i).copied()
    }

    /// What the thread was doing: in a system call (named where known) or running code.
    pub fn state(&self) -> String {
        match self.reg(REG_ORIG_AX) {
            Some(n) if n != u64::MAX => match syscall_name(n) {
                Some(name) => format!("in syscall {name}"),
                None => format!("in syscall {n}"),
            },
            Some(_) => "running".into(),
            None => "unknown".into(),
        }
    }
}

/// The x86_64 system calls a thread is most often blocked in.
fn syscall_name(n: u64) -> Option<&'static str> {
    Some(match n {
        0 => "read",
        1 => "write",
        7 => "poll",
        23 => "select",
        24 => "sched_yield",
        34 => "pause",
        35 => "nanosleep",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        61 => "wait4",
        62 => "kill",
        128 => "rt_sigtimedwait",
        130 => "rt_sigsuspend",
        200 => "tkill",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        234 => "tgkill",
        247 => "waitid",
        257 => "openat",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        426 => "io_uring_enter",
        441 => "epoll_pwait2",
        449 => "futex_waitv",
        _ => return None,
    })
}
