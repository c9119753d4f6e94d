//! The records crashwatch's eBPF programs write to the ring buffer and the agent decodes,
//! and the load-time configuration the agent hands to the programs.
//!
//! Everything is `#[repr(C)]` plain data: both sides compile this crate, the kernel side for
//! `bpfel-unknown-none`, so layouts match by construction. Every record starts with a
//! [`Header`] whose `kind` says which struct follows.
#![no_std]

pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd path kept (`linux_binprm.filename`).
pub const PATH_LEN: usize = 256;
/// Room for the NUL-separated argument list; the agent's `--cmdline-max` (`Config::args_max`)
/// says how much of it is read.
pub const ARGS_LEN: usize = 4096;
/// User frames captured at a fatal signal (the kernel's own limit is 127).
pub const STACK_DEPTH: usize = 127;
/// Words of `struct pt_regs` copied raw; names come from BTF in userspace.
pub const REGS_WORDS: usize = 32;
/// Cgroup path components kept, leaf first, and bytes per component.
pub const CGROUP_DEPTH: usize = 8;
pub const CGROUP_NAME_LEN: usize = 128;

pub const KIND_EXEC: u32 = 1;
pub const KIND_SIGNAL: u32 = 2;
pub const KIND_EXIT: u32 = 3;
pub const KIND_OOM: u32 = 4;
pub const KIND_GO: u32 = 5;
pub const KIND_GO_OUTPUT: u32 = 6;
pub const KIND_STACK: u32 = 7;
pub const KIND_LAST_WORDS: u32 = 8;
/// An [`ExecRecord`] read from a dying process at its first crash sign (a fatal signal, a
/// handled fault, last words at death) because its exec was not sent: the executable comes
/// from `mm->exe_file`, and `filename` is empty.
pub const KIND_IDENT: u32 = 9;

/// [`KnownFile::flags`]: the agent has classified the file; its execs need no record. Files
/// not in the map (new, or Go binaries, whose probes follow their processes) are sent.
pub const KNOWN_QUIET: u32 = 1;

/// Most bytes of the user stack copied at a fatal signal or Go fatal path (`--stack-copy`).
pub const STACK_COPY_MAX: usize = 16384;
/// Room past [`STACK_COPY_MAX`] so a page-sized read at any offset below it stays in bounds
/// (the verifier checks the worst case of offset plus length).
pub const STACK_COPY_SLACK: usize = 4096;
/// Loaded objects kept from the dynamic linker's list (`r_debug.r_map`).
pub const MODULES_MAX: usize = 32;
pub const MODULE_PATH_LEN: usize = 128;

/// [`StackRecord::modules_state`]: the list was read to its end.
pub const MODULES_OK: u32 = 0;
/// No `DT_DEBUG` entry (a static executable): the executable is the only module.
pub const MODULES_STATIC: u32 = 1;
/// The auxiliary vector, program headers or link map could not be read.
pub const MODULES_UNREADABLE: u32 = 2;
/// The list has more than [`MODULES_MAX`] entries; the first ones are kept.
pub const MODULES_TRUNCATED: u32 = 3;
/// The list is not read at this hook (Go's fatal-path probes: reading it there took the
/// program past the 6.1 verifier's budget).
pub const MODULES_NOT_TAKEN: u32 = 4;

/// [`GoRecord::what`]: an unrecovered panic (`runtime.fatalpanic`).
pub const GO_PANIC: u32 = 1;
/// [`GoRecord::what`]: a runtime fatal error (`runtime.throw`, `runtime.fatal`).
pub const GO_FATAL: u32 = 2;
/// Bytes kept of a panic's string value or a fatal error's message.
pub const GO_TEXT_LEN: usize = 256;
/// Bytes per record of the runtime's printed output.
pub const GO_CHUNK_LEN: usize = 256;
/// Chunks sent for one `gwrite` call at most (longer writes are cut and flagged).
pub const GO_CHUNKS_PER_WRITE: usize = 16;

/// `bpf_get_attach_cookie()` of the one Go uprobe program: which runtime function it is on.
pub const GO_AT_GOPANIC: u64 = 1;
pub const GO_AT_FATALPANIC: u64 = 2;
/// `runtime.throw` and `runtime.fatal` (both take the message as a string).
pub const GO_AT_THROW: u64 = 3;
pub const GO_AT_WRITE_ERR: u64 = 4;
pub const GO_AT_WRITE1: u64 = 5;

/// Marks an unused offset in [`Offsets`].
pub const NO_OFFSET: u32 = u32::MAX;

/// Copies of each tracepoint's program (see the eBPF crate's docs).
pub const COPIES: u32 = 3;
/// Tracepoints whose program runs as copies; the index into the `COVERED` map, where later
/// copies count the runs they did in place of skipped earlier ones.
pub const SITE_EXEC: u32 = 0;
pub const SITE_SIGNAL: u32 = 1;
pub const SITE_EXIT: u32 = 2;
pub const SITES: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub kind: u32,
    /// Thread-group id (what userspace calls the pid).
    pub pid: u32,
    /// The thread the event happened on.
    pub tid: u32,
    pub ppid: u32,
    /// `bpf_ktime_get_ns()` at the event (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// The group leader's `start_time`: with `pid`, identifies one process across pid reuse.
    pub start_ns: u64,
    pub uid: u32,
    pub _pad: u32,
    /// The group leader's comm.
    pub comm: [u8; COMM_LEN],
}

/// `sched_process_exec`: who runs what, captured while the new image is in place.
///
/// `args` comes last: the record is sent only as far as `args_len` reaches.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub hdr: Header,
    /// Identity of the executable file: `s_dev`, `i_ino`, and the inode's change time and size,
    /// which tell a new file on a reused inode from the old one.
    pub dev: u32,
    pub args_len: u32,
    pub ino: u64,
    /// `i_ctime` in nanoseconds since the epoch (as stat(2) reports it).
    pub ctime_ns: u64,
    pub size: u64,
    /// Bytes of the argument list in the process (`arg_end - arg_start`); more than
    /// `args_len` when it was cut.
    pub args_total: u32,
    /// The process's mount namespace (`nsproxy->mnt_ns->ns.inum`, the inode number of
    /// `/proc/<pid>/ns/mnt`); 0 when unread. Lets the agent find the process's view of files
    /// after it is gone.
    pub mnt_ns: u32,
    /// `bprm->filename`: the path given to execve, as the process saw it (maybe relative).
    pub filename: [u8; PATH_LEN],
    pub cgroup: CgroupPath,
    /// The executable's absolute path in the process's view, read from the kernel's own
    /// records when `filename` is relative (the process may be gone before the agent can ask
    /// where it ran); empty otherwise.
    pub path: ExePath,
    pub args: [u8; ARGS_LEN],
}

/// Path components kept, leaf first, and bytes per component (with its NUL).
pub const EXE_PATH_DEPTH: usize = 16;
pub const EXE_PATH_NAME: usize = 64;

/// A file's path as the kernel's dentries and mounts spell it, up to the process's root.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExePath {
    pub names: [[u8; EXE_PATH_NAME]; EXE_PATH_DEPTH],
    /// Components filled, leaf first.
    pub depth: u32,
    /// 1 when the walk reached the process's root with every component whole.
    pub complete: u32,
}

/// An executable's identity as the kernel sees it, the key of the known-files map (what
/// [`ExecRecord`] carries as `dev`, `ino`, `ctime_ns`, `size`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
    pub ctime_ns: u64,
    pub size: u64,
}

/// What the agent said about a file, written by the agent into the known-files map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KnownFile {
    /// [`KNOWN_QUIET`].
    pub flags: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` after which the answer is stale and the next exec is sent again.
    pub until_ns: u64,
}

/// Cgroup path components from the leaf upwards, each NUL-terminated; empty ends the list.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupPath {
    pub names: [[u8; CGROUP_NAME_LEN]; CGROUP_DEPTH],
}

/// `signal/signal_deliver` of a fatal-class signal: the faulting thread's state.
///
/// `args` comes last: the record is sent only as far as `args_len` reaches.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SignalRecord {
    pub hdr: Header,
    pub sig: i32,
    pub code: i32,
    /// Non-zero when the process had a handler installed (`sa_handler` not SIG_DFL).
    pub handled: u32,
    pub _pad0: u32,
    pub sa_handler: u64,
    /// The first word of siginfo's union: `si_addr` for a fault, `si_pid` (low half) and
    /// `si_uid` (high half) for a signal a process sent (`si_code` <= 0); 0 without siginfo.
    pub fields: u64,
    /// `mm->start_code`/`end_code`: the main executable's text, to turn IPs into file offsets.
    pub start_code: u64,
    pub end_code: u64,
    /// Bytes of `regs` filled (the kernel's `sizeof(struct pt_regs)`), 0 when unavailable.
    pub regs_len: u32,
    /// Bytes of `stack` filled by `bpf_get_stack`.
    pub stack_len: u32,
    pub args_len: u32,
    /// Bytes of the argument list in the process; more than `args_len` when it was cut.
    pub args_total: u32,
    pub regs: [u64; REGS_WORDS],
    pub stack: [u64; STACK_DEPTH],
    pub args: [u8; ARGS_LEN],
}

/// One object the dynamic linker loaded (a `struct link_map` of `r_debug.r_map`), read from
/// the dying process's memory at the fatal signal, so frames can be placed after it is gone.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleRec {
    /// `l_addr`: where the object is loaded relative to its link-time addresses.
    pub bias: u64,
    /// `l_ld`: where its dynamic section is in memory; minus `bias`, the file's
    /// `PT_DYNAMIC` address, which userspace checks a candidate file against.
    pub dynamic: u64,
    pub path_len: u32,
    pub _pad: u32,
    /// `l_name` in the process's view; empty for the executable.
    pub path: [u8; MODULE_PATH_LEN],
}

/// The top of the user stack and the loaded objects, captured with a [`SignalRecord`] or a
/// [`GoRecord`] (same pid, tid and `ktime_ns`) and sent just before it, so native frames
/// without frame pointers can be unwound from their CFI in userspace.
///
/// Sent packed, so a crash costs the ring buffer what it holds: the fixed fields
/// ([`STACK_HEAD`] bytes), then `body` as far as it is used — `modules_len` [`ModuleRec`]
/// entries, and right after them `copy_len` bytes of the stack from `sp`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackRecord {
    pub hdr: Header,
    /// The stack pointer the copy starts at.
    pub sp: u64,
    /// Bytes of the copy covered (copied or missing).
    pub copy_len: u32,
    /// Bit `i` set: the `i`-th page-bounded piece of the copy could not be read (not
    /// resident); its bytes are meaningless.
    pub missing: u32,
    pub modules_len: u32,
    /// `MODULES_*`.
    pub modules_state: u32,
    pub body: [u8; STACK_BODY],
}

/// A [`StackRecord`]'s whole size: a power of two, so the length of its packed form carries
/// its bound to the verifier as one mask.
pub const STACK_RECORD_SIZE: usize = 32768;
/// Bytes of a [`StackRecord`] before its body.
pub const STACK_HEAD: usize = core::mem::size_of::<Header>() + 24;
pub const MODULE_SIZE: usize = core::mem::size_of::<ModuleRec>();
/// Room at the start of a stack record's body for its module entries: a power of two, so the
/// copy's start (right after the entries) carries its bound to the verifier as a mask.
pub const MODULES_ROOM: usize = 8192;
/// The body: module entries, the copy, and room for a page-sized read at any offset.
pub const STACK_BODY: usize = STACK_RECORD_SIZE - STACK_HEAD;
const _: () = assert!(core::mem::offset_of!(StackRecord, body) == STACK_HEAD);
const _: () = assert!(core::mem::size_of::<StackRecord>() == STACK_RECORD_SIZE);
const _: () = assert!(MODULES_ROOM + STACK_COPY_MAX + STACK_COPY_SLACK <= STACK_BODY);
const _: () = assert!(MODULES_MAX * MODULE_SIZE <= MODULES_ROOM);

/// The tail of what a process wrote to stderr (and to stdout once the JVM's fatal-error
/// banner began there), kept in a ring.
pub const WORDS_TAIL: usize = 8192;
/// The head of a death: from a little before the first line a runtime prints when it dies.
pub const WORDS_HEAD: usize = 8192;
/// Bytes before that first line kept in the head (Go's `runtime:` lines, Node's source line).
pub const WORDS_LOOKBACK: usize = 1024;
/// Bytes of one write kept; the rest is counted in `skipped`.
pub const WORDS_CHUNK: usize = 4096;
/// Room after the head so a write at any offset below its end stays in bounds.
pub const WORDS_SLACK: usize = WORDS_CHUNK;

/// What a process wrote to stderr, per process (tgid) in a kernel map while it runs, sent
/// only when it dies abnormally: the last [`WORDS_TAIL`] bytes, and, from the first write
/// that starts the way a runtime starts its dying words, a head with the look-back before it.
///
/// Sent as the fixed fields, `tail` whole, and `head` as far as `head_len`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastWordsRecord {
    /// Filled at death.
    pub hdr: Header,
    /// Bytes kept of everything written: the tail's write position.
    pub total: u64,
    /// Bytes written but not kept (each write's bytes past [`WORDS_CHUNK`]).
    pub skipped: u64,
    /// `total` at the write that started the head, plus one; 0 when no write did.
    pub marked: u64,
    pub head_len: u32,
    /// Bytes of the head before the marked write (the look-back).
    pub lookback: u32,
    /// 1 when `ident` was filled.
    pub has_ident: u32,
    pub _pad1: u32,
    /// 1 once the process began the JVM's fatal-error banner on stdout: its later stdout
    /// writes are kept too.
    pub stdout: u32,
    /// Spans of `unread` in use.
    pub unread_n: u32,
    /// Writes whose bytes the kernel could not read when they were made (a page of the
    /// program not yet faulted in, as a string constant's often is): retried at the process's
    /// next write, its fatal signal and its death; those still unread at death are shown as
    /// unreadable, never as the zeroes the failed read left.
    pub unread: [Unread; UNREAD_SPANS],
    /// Unread writes that found every span taken: their bytes cannot be told apart.
    pub unread_over: u32,
    pub _pad2: u32,
    pub tail: [u8; WORDS_TAIL],
    pub head: [u8; WORDS_HEAD + WORDS_SLACK],
    /// Who the process is, read at its first write when its exec was not sent (at death its
    /// memory is gone): sent before the last words as a [`KIND_IDENT`] record. Never part of
    /// the last-words record itself.
    pub ident: ExecRecord,
}

/// Unread writes a [`LastWordsRecord`] keeps track of.
pub const UNREAD_SPANS: usize = 8;

/// A write whose bytes could not be read: where it is in the stream and in the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Unread {
    /// Stream position (`LastWordsRecord::total` at the write).
    pub pos: u64,
    /// The buffer's address in the process.
    pub addr: u64,
    /// Bytes kept of the write; 0: the span is free.
    pub len: u32,
    pub _pad: u32,
}

/// Bytes of a [`LastWordsRecord`] before its tail.
pub const WORDS_FIXED: usize = core::mem::offset_of!(LastWordsRecord, tail);

/// `sched/sched_process_exit` of the last thread of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitRecord {
    pub hdr: Header,
    /// The wait(2) status: `code << 8`, or the terminating signal with 0x80 if it dumped core.
    pub status: u32,
    /// The last stop request the process handled itself ([`Asked`]), 0 when none.
    pub asked_sig: u32,
    /// When that request was delivered (`bpf_ktime_get_ns`), 0 when none.
    pub asked_ns: u64,
}

/// A stop request (SIGTERM, SIGINT) delivered to a process that handles it itself, kept per
/// process until it dies: a SIGKILL that follows is a stop that outlived its grace period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    pub sig: u32,
    pub _pad: u32,
    pub ktime_ns: u64,
    /// The process's start time ([`Header::start_ns`]): a reused pid is another process.
    pub start_ns: u64,
}

/// `oom/mark_victim`: the OOM killer chose this process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OomRecord {
    pub hdr: Header,
    /// 1 when `oom_score_adj` and `rss_pages` are the victim's (older kernels name only its
    /// pid, and the task at hand is another).
    pub victim_read: u32,
    /// `signal->oom_score_adj`.
    pub oom_score_adj: i32,
    /// The victim's resident pages by kind: file, anon, swap entries, shmem (`mm->rss_stat`,
    /// in the kernel's counter order).
    pub rss_pages: [i64; 4],
    /// Levels of `memcg` filled.
    pub levels: u32,
    pub _pad: u32,
    /// `[usage, max]` in pages of the memory cgroup's page counter, the victim's own first,
    /// then each parent: the one at its limit is where the OOM happened.
    pub memcg: [[u64; 2]; OOM_LEVELS],
}

/// Memory cgroup levels an [`OomRecord`] reads, from the victim's up.
pub const OOM_LEVELS: usize = 8;

/// A Go process entered a fatal path: `runtime.fatalpanic` (after `gopanic` named the value's
/// type) or `runtime.throw`/`runtime.fatal` (with the message).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoRecord {
    pub hdr: Header,
    pub what: u32,
    pub text_len: u32,
    /// The panic value's type descriptor (`_type *`), as `gopanic` received it; 0 for fatal.
    pub type_ptr: u64,
    /// `mm->start_code`, to relate runtime addresses to the binary (PIE).
    pub start_code: u64,
    pub stack_len: u32,
    pub _pad: u32,
    /// The return address at the stack pointer: the probed function's direct caller, which
    /// a frame-pointer walk from a function's first instruction skips.
    pub caller: u64,
    /// RBP at the probe (also in `regs` when those were read).
    pub bp: u64,
    /// Bytes of `regs` filled: the probed thread's user registers (`struct pt_regs`).
    pub regs_len: u32,
    pub _pad2: u32,
    pub regs: [u64; REGS_WORDS],
    /// The panic value when it is a string, or the fatal error's message.
    pub text: [u8; GO_TEXT_LEN],
    pub stack: [u64; STACK_DEPTH],
}

/// A piece of what the Go runtime printed (`runtime.gwrite`): panic messages, tracebacks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoOutputRecord {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub len: u32,
    pub ktime_ns: u64,
    pub start_ns: u64,
    /// Non-zero when this write was longer than the chunks sent for it.
    pub cut: u32,
    pub _pad: u32,
    pub data: [u8; GO_CHUNK_LEN],
}

/// Kernel struct field offsets, computed from `/sys/kernel/btf/vmlinux` at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_start_time: u32,
    pub task_real_cred: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub task_mm: u32,
    pub task_cgroups: u32,
    pub task_comm: u32,
    pub cred_uid: u32,
    pub signal_group_exit_code: u32,
    pub signal_live: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_start_code: u32,
    pub mm_end_code: u32,
    pub mm_saved_auxv: u32,
    pub mm_exe_file: u32,
    pub bprm_filename: u32,
    pub bprm_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_size: u32,
    /// `i_ctime_sec`/`i_ctime_nsec` (6.11+), else `__i_ctime`/`i_ctime`'s `tv_sec`/`tv_nsec`.
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    pub sb_dev: u32,
    pub siginfo_code: u32,
    /// The union `_sifields` (`si_addr`, or `si_pid`/`si_uid`).
    pub siginfo_fields: u32,
    pub ksig_handler: u32,
    pub pt_regs_size: u32,
    /// `css_set` → `struct cgroup *`: first hop (`dfl_cgrp`, or `subsys[memory]`).
    pub cgroup_hop1: u32,
    /// Second hop (`cgroup_subsys_state.cgroup`) or [`NO_OFFSET`].
    pub cgroup_hop2: u32,
    pub cgroup_kn: u32,
    pub kn_name: u32,
    pub kn_parent: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace.ns.inum`.
    pub mnt_ns_inum: u32,
    /// A file's path: `file.f_path`, `path.mnt`, `path.dentry`.
    pub file_f_path: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    /// `dentry.d_parent`, `dentry.d_name.name`.
    pub dentry_parent: u32,
    pub dentry_name: u32,
    /// `vfsmount.mnt_root`; `mount.mnt` (the vfsmount inside it), `mnt_parent`,
    /// `mnt_mountpoint`.
    pub vfsmount_root: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    /// `task_struct.fs`, `fs_struct.root` (a `struct path`).
    pub task_fs: u32,
    pub fs_root: u32,
    /// `signal_struct.oom_score_adj`.
    pub signal_oom_score_adj: u32,
    /// `mm_struct.rss_stat`, the bytes between its counters, and a counter's value within one
    /// (`percpu_counter.count` from 6.2, an `atomic_long_t` before).
    pub mm_rss_stat: u32,
    pub rss_stride: u32,
    pub rss_count: u32,
    /// `css_set.subsys[memory_cgrp_id]`; `mem_cgroup.css`, `mem_cgroup.memory`.
    pub css_set_memory: u32,
    pub memcg_css: u32,
    pub memcg_memory: u32,
    /// `page_counter.usage`, `.max`, `.parent`.
    pub counter_usage: u32,
    pub counter_max: u32,
    pub counter_parent: u32,
    /// What identifies an event to the copy guard (crashwatch-ebpf's `copies`):
    /// `task_struct.self_exec_id` and `nvcsw`, and `pt_regs`' `ip` and `sp`.
    pub task_self_exec_id: u32,
    pub task_nvcsw: u32,
    pub regs_ip: u32,
    pub regs_sp: u32,
}

/// Everything the programs read from their one global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    pub off: Offsets,
    /// Non-zero when `oom/mark_victim`'s first argument is a `task_struct *` (kernels >= 6.8),
    /// zero when it is an `int pid`.
    pub oom_arg_is_task: u32,
    /// Bytes of a process's argument list read (at most [`ARGS_LEN`]).
    pub args_max: u32,
    /// A handled fault-class signal is reported with a death that follows within this window.
    pub pending_window_ns: u64,
    /// Bytes of user stack copied (at most [`STACK_COPY_MAX`]); 0 turns the copy off.
    pub stack_copy: u32,
    /// Non-zero: every exec is sent (`--exits nonzero`: a plain exit's command line and
    /// executable can only be read at exec).
    pub exec_all: u32,
    /// Copies of each tracepoint program attached (1 or [`COPIES`]): with one, the first
    /// copy skips the bookkeeping only later copies read.
    pub guard_copies: u32,
    /// Tests only: the first `failpoint_copies` copies of each tracepoint program spin this
    /// many rounds after noting an event (0: off), so a test can force preemption inside them.
    pub failpoint_spin: u32,
    /// This load's generation when its state is pinned (see `ACTIVE`): a program does nothing
    /// unless it is the active one. 0: not pinned, always active.
    pub generation: u64,
    /// See `failpoint_spin`.
    pub failpoint_copies: u32,
    /// Tests only: non-zero N makes every copy of the exit programs skip the exits of
    /// processes whose pid is a multiple of N, noting nothing, as the kernel's recursion guard
    /// skips them (an exit then reaches the agent from `sched_process_free`).
    pub failpoint_skip_exit: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data with explicit padding, no pointers.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KnownFile {}
}
