//! crashwatch's kernel side: four BTF tracepoints feeding one ring buffer.
//!
//! Filtering happens here so userspace sees only what can matter: fatal-class signals (not the
//! SIGKILLs `exit_group` sends to sibling threads), whole-process deaths, OOM victims, and
//! execs. A handled fault (Go's and the JVM's SIGSEGV handlers) is parked in `PENDING` and sent
//! only if the process then dies abnormally, so processes that survive their faults cost no
//! records. Struct fields are read at offsets the agent computes from BTF (`CONFIG`).
//! Uprobes on the Go runtime's fatal paths (attached by the agent per Go binary) add the panic
//! value, the fatal error message and what the runtime prints on its way down.
//!
//! Each tracepoint has three copies of its program. The kernel skips a tracing program, and
//! counts a recursion miss, on a CPU where that same program is already running. Since Linux
//! 7.0 tracepoint programs are preemptible, so on a preemptible kernel one task preempted inside
//! a program makes it skip every other task on that CPU until the first resumes. The agent
//! attaches the copies in order: the first notes the task in `DONE`; a later copy does nothing
//! when the note is there, and otherwise does the work, notes it and counts it in `COVERED`;
//! the last clears the note. An event is lost only when all three copies were skipped. Two
//! were not enough: while the first is held, the second does every task's work and is as
//! likely to be preempted in turn.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{bpf_get_stack, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, map, uprobe},
    maps::{ring_buf::RingBufEntry, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, ProbeContext},
    EbpfContext,
};
use crashwatch_common::*;

#[unsafe(no_mangle)]
static CONFIG: Config = unsafe { core::mem::zeroed() };

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Failed ring buffer writes, per CPU: loss is counted, never silent.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for records too large for the 512-byte BPF stack, one per program copy: the
/// copies can all be mid-run on one CPU when tasks are preempted.
#[map]
static SCRATCH_SIG: PerCpuArray<SignalRecord> = PerCpuArray::with_max_entries(COPIES, 0);
#[map]
static SCRATCH_EXEC: PerCpuArray<ExecRecord> = PerCpuArray::with_max_entries(COPIES, 0);

/// Tasks (`task_struct` addresses) whose current event a copy has handled and the last copy
/// has not yet seen, per CPU and site. A few slots: several tasks can be preempted between
/// copies.
const SLOTS: usize = 4;
#[map]
static DONE: PerCpuArray<[u64; SLOTS]> = PerCpuArray::with_max_entries(SITES, 0);
/// Runs a later copy made because the kernel skipped the earlier ones, per CPU and site.
#[map]
static COVERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(SITES, 0);

/// The last handled fault-class signal per process (tgid), until that process exits.
#[map]
static PENDING: LruHashMap<u32, SignalRecord> = LruHashMap::with_max_entries(4096, 0);

/// The panic value's (type, data) per goroutine (tgid, g), from `runtime.gopanic`, for
/// `fatalpanic`: a goroutine can move to another thread between the two.
#[map]
static GOPANIC: LruHashMap<[u64; 2], [u64; 2]> = LruHashMap::with_max_entries(8192, 0);

const SIGKILL: i32 = 9;

/// Reads a field of `CONFIG`. Volatile: the compiler would otherwise fold the all-zero
/// initializer into the code, and the loader's values would never be seen.
macro_rules! config {
    ($($f:ident).+) => {
        // SAFETY: CONFIG is a read-only global the loader fills in before verification.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CONFIG.$($f).+)) }
    };
}

#[inline(always)]
fn rd<T: Default>(base: u64, off: u32) -> T {
    if base == 0 || off == NO_OFFSET {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).unwrap_or_default() }
}

/// Notes that the current task's event at `site` is handled.
#[inline(always)]
fn note_done(site: u32) {
    let task = unsafe { bpf_get_current_task() };
    let Some(s) = DONE.get_ptr_mut(site) else {
        return;
    };
    // SAFETY: per-CPU slots; a preempting task only writes a free slot or its own.
    let s = unsafe { &mut *s };
    let mut free = SLOTS;
    for (i, t) in s.iter().enumerate() {
        if *t == task {
            return;
        }
        if *t == 0 && free == SLOTS {
            free = i;
        }
    }
    // All taken (last copies skipped): reuse one; at worst its owner's event comes twice.
    if free == SLOTS {
        free = unsafe { bpf_ktime_get_ns() } as usize;
    }
    s[free & (SLOTS - 1)] = task;
}

/// A later copy at `site`: true when no earlier copy ran for this task's event, so this one
/// must. The last copy clears the note for the task's next event.
#[inline(always)]
fn later_copy(site: u32, last: bool) -> bool {
    let task = unsafe { bpf_get_current_task() };
    if let Some(s) = DONE.get_ptr_mut(site) {
        // SAFETY: as in note_done.
        let s = unsafe { &mut *s };
        for t in s.iter_mut() {
            if *t == task {
                if last {
                    *t = 0;
                }
                return false;
            }
        }
    }
    if let Some(n) = COVERED.get_ptr_mut(site) {
        // SAFETY: per-CPU counter; a lost increment only under-reports redos.
        unsafe { *n += 1 };
    }
    if !last {
        note_done(site);
    }
    true
}

/// The three copies of a tracepoint's program, attached by the agent in this order. `$body`
/// takes the context and the copy's index (its scratch slot).
macro_rules! three_copies {
    ($tp:tt, $site:expr, $body:ident, $first:ident, $second:ident, $third:ident) => {
        #[btf_tracepoint(function = $tp)]
        pub fn $first(ctx: BtfTracePointContext) -> u32 {
            note_done($site);
            $body(&ctx, 0)
        }

        #[btf_tracepoint(function = $tp)]
        pub fn $second(ctx: BtfTracePointContext) -> u32 {
            if later_copy($site, false) {
                $body(&ctx, 1)
            } else {
                0
            }
        }

        #[btf_tracepoint(function = $tp)]
        pub fn $third(ctx: BtfTracePointContext) -> u32 {
            if later_copy($site, true) {
                $body(&ctx, 2)
            } else {
                0
            }
        }
    };
}

fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

fn output<T>(rec: &T) {
    if EVENTS.output::<T>(rec, 0).is_err() {
        count_lost();
    }
}

/// Fills the header from `task` (any thread of the process).
fn fill_header(hdr: &mut Header, kind: u32, task: u64) {
    let leader: u64 = rd(task, config!(off.task_group_leader));
    let parent: u64 = rd(task, config!(off.task_real_parent));
    let cred: u64 = rd(task, config!(off.task_real_cred));
    hdr.kind = kind;
    hdr.pid = rd::<u32>(task, config!(off.task_tgid));
    hdr.tid = rd::<u32>(task, config!(off.task_pid));
    hdr.ppid = rd::<u32>(parent, config!(off.task_tgid));
    hdr.ktime_ns = unsafe { bpf_ktime_get_ns() };
    hdr.start_ns = rd::<u64>(leader, config!(off.task_start_time));
    hdr.uid = rd::<u32>(cred, config!(off.cred_uid));
    hdr.comm = rd::<[u8; COMM_LEN]>(leader, config!(off.task_comm));
}

/// Copies the process's argument list from its user memory; returns bytes copied.
fn read_args(task: u64, dst: &mut [u8; ARGS_LEN]) -> u32 {
    let mm: u64 = rd(task, config!(off.task_mm));
    let start: u64 = rd(mm, config!(off.mm_arg_start));
    let end: u64 = rd(mm, config!(off.mm_arg_end));
    if start == 0 || end <= start {
        return 0;
    }
    let len = (end - start).min(ARGS_LEN as u64) as usize;
    // Two fixed sizes keep the verifier happy; a short read of a long buffer is still useful.
    let n = if len == ARGS_LEN {
        ARGS_LEN
    } else {
        len & (ARGS_LEN - 1)
    };
    if n == 0 {
        return 0;
    }
    match unsafe { bpf_probe_read_user_buf(start as *const u8, &mut dst[..n]) } {
        Ok(()) => n as u32,
        Err(_) => 0,
    }
}

fn read_cgroup(task: u64, out: &mut CgroupPath) {
    let css_set: u64 = rd(task, config!(off.task_cgroups));
    let mut cg: u64 = rd(css_set, config!(off.cgroup_hop1));
    if config!(off.cgroup_hop2) != NO_OFFSET {
        cg = rd(cg, config!(off.cgroup_hop2));
    }
    let mut kn: u64 = rd(cg, config!(off.cgroup_kn));
    for i in 0..CGROUP_DEPTH {
        out.names[i][0] = 0;
        if kn == 0 {
            continue;
        }
        let name: u64 = rd(kn, config!(off.kn_name));
        if name != 0 {
            let _ =
                unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut out.names[i]) };
        }
        kn = rd(kn, config!(off.kn_parent));
    }
}

three_copies!(
    "sched_process_exec",
    SITE_EXEC,
    on_exec,
    sched_process_exec,
    sched_process_exec_2,
    sched_process_exec_3
);

#[inline(always)]
fn on_exec(ctx: &BtfTracePointContext, copy: u32) -> u32 {
    let Some(rec) = SCRATCH_EXEC.get_ptr_mut(copy) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let rec = unsafe { &mut *rec };
    let task = unsafe { bpf_get_current_task() };
    let bprm: u64 = ctx.arg(2);
    fill_header(&mut rec.hdr, KIND_EXEC, task);
    let file: u64 = rd(bprm, config!(off.bprm_file));
    let inode: u64 = rd(file, config!(off.file_inode));
    let sb: u64 = rd(inode, config!(off.inode_sb));
    rec.ino = rd(inode, config!(off.inode_ino));
    rec.dev = rd(sb, config!(off.sb_dev));
    rec.filename[0] = 0;
    let name: u64 = rd(bprm, config!(off.bprm_filename));
    if name != 0 {
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut rec.filename) };
    }
    rec.args_len = read_args(task, &mut rec.args);
    read_cgroup(task, &mut rec.cgroup);
    // A new image is not to blame for a fault its predecessor handled.
    let _ = PENDING.remove(rec.hdr.pid);
    output(rec);
    0
}

/// The current thread's user stack (frame pointers), innermost first; returns bytes filled.
fn user_stack(ctx: *mut core::ffi::c_void, stack: &mut [u64; STACK_DEPTH]) -> u32 {
    let flags = aya_ebpf::bindings::BPF_F_USER_STACK as u64;
    // SAFETY: the helper writes at most the given size into `stack`.
    let n = unsafe {
        bpf_get_stack(
            ctx,
            stack.as_mut_ptr() as *mut _,
            (STACK_DEPTH * 8) as u32,
            flags,
        )
    };
    if n > 0 {
        n as u32
    } else {
        0
    }
}

/// Signals whose default action ends the process (terminate or core).
fn fatal_class(sig: i32) -> bool {
    !matches!(sig, 17..=23 | 28) && sig > 0 && sig < 65
}

/// Synchronous faults and abort: a handled one followed by death is the cause of death.
fn fault_class(sig: i32) -> bool {
    matches!(sig, 4..=8 | 11 | 31)
}

three_copies!(
    "signal_deliver",
    SITE_SIGNAL,
    on_signal,
    signal_deliver,
    signal_deliver_2,
    signal_deliver_3
);

#[inline(always)]
fn on_signal(ctx: &BtfTracePointContext, copy: u32) -> u32 {
    let sig: i32 = ctx.arg(0);
    if !fatal_class(sig) {
        return 0;
    }
    let ka: u64 = ctx.arg(2);
    let handler: u64 = rd(ka, config!(off.ksig_handler));
    // SIG_IGN (1) never kills; a handled signal matters only if it is a fault.
    if handler == 1 || (handler != 0 && !fault_class(sig)) {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    if sig == SIGKILL {
        // exit_group, coredumps and the fast path of other fatal signals SIGKILL every thread;
        // only a real SIGKILL leaves 9 as the group's exit code.
        let signal: u64 = rd(task, config!(off.task_signal));
        let gec: u32 = rd(signal, config!(off.signal_group_exit_code));
        if gec & 0x7f != SIGKILL as u32 {
            return 0;
        }
    }
    let Some(rec) = SCRATCH_SIG.get_ptr_mut(copy) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let rec = unsafe { &mut *rec };
    fill_header(&mut rec.hdr, KIND_SIGNAL, task);
    let info: u64 = ctx.arg(1);
    rec.sig = sig;
    rec.handled = (handler != 0) as u32;
    rec.sa_handler = handler;
    // SEND_SIG_NOINFO/SEND_SIG_PRIV are the pointers 0 and 1: no siginfo behind them.
    let info = if info > 1 { info } else { 0 };
    rec.code = rd(info, config!(off.siginfo_code));
    rec.addr = if matches!(sig, 4 | 5 | 7 | 8 | 11) {
        rd(info, config!(off.siginfo_addr))
    } else {
        0
    };
    let mm: u64 = rd(task, config!(off.task_mm));
    rec.start_code = rd(mm, config!(off.mm_start_code));
    rec.end_code = rd(mm, config!(off.mm_end_code));
    rec.args_len = read_args(task, &mut rec.args);
    rec.regs_len = 0;
    let size = config!(off.pt_regs_size) as usize;
    if size > 0 && size <= REGS_WORDS * 8 {
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
        let dst = unsafe {
            core::slice::from_raw_parts_mut(
                rec.regs.as_mut_ptr() as *mut u8,
                size & (REGS_WORDS * 8 - 1),
            )
        };
        if regs != 0 && unsafe { bpf_probe_read_kernel_buf(regs as *const u8, dst) }.is_ok() {
            rec.regs_len = size as u32;
        }
    }
    rec.stack_len = user_stack(ctx.as_ptr(), &mut rec.stack);
    if handler != 0 {
        // Survivors must cost nothing downstream: keep it until the process exits.
        let pid = rec.hdr.pid;
        let _ = PENDING.insert(pid, rec, 0);
    } else {
        output(rec);
    }
    0
}

fn exit_common(task: u64) {
    let signal: u64 = rd(task, config!(off.task_signal));
    let gec: u32 = rd(signal, config!(off.signal_group_exit_code));
    let code: u32 = rd(task, config!(off.task_exit_code));
    let mut rec = ExitRecord::default();
    fill_header(&mut rec.hdr, KIND_EXIT, task);
    rec.status = if gec != 0 { gec } else { code };
    let pid = rec.hdr.pid;
    if let Some(p) = unsafe { PENDING.get(pid) } {
        let fresh = rec.hdr.ktime_ns.wrapping_sub(p.hdr.ktime_ns) <= config!(pending_window_ns);
        if rec.status != 0 && fresh {
            output(p);
        }
        let _ = PENDING.remove(pid);
    }
    output(&rec);
}

// Kernels before 6.16: no `group_dead` argument; `signal->live` reached 0 for the last thread.
three_copies!(
    "sched_process_exit",
    SITE_EXIT,
    exit_live,
    sched_process_exit,
    sched_process_exit_2,
    sched_process_exit_3
);

#[inline(always)]
fn exit_live(_ctx: &BtfTracePointContext, _copy: u32) -> u32 {
    let task = unsafe { bpf_get_current_task() };
    let signal: u64 = rd(task, config!(off.task_signal));
    let live: i32 = rd(signal, config!(off.signal_live));
    if live == 0 {
        exit_common(task);
    }
    0
}

// Kernels 6.16+: `sched_process_exit(struct task_struct *p, bool group_dead)`.
three_copies!(
    "sched_process_exit",
    SITE_EXIT,
    exit_group_dead,
    sched_process_exit_gd,
    sched_process_exit_gd_2,
    sched_process_exit_gd_3
);

#[inline(always)]
fn exit_group_dead(ctx: &BtfTracePointContext, _copy: u32) -> u32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        exit_common(unsafe { bpf_get_current_task() });
    }
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> u32 {
    // Read the argument as a plain number: it is a `task_struct *` or an `int pid` by kernel.
    let arg: u64 = unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }.unwrap_or(0);
    let mut rec = OomRecord::default();
    if config!(oom_arg_is_task) != 0 {
        fill_header(&mut rec.hdr, KIND_OOM, arg);
    } else {
        // Old kernels pass only the victim's pid; the rest is the agent's to find.
        rec.hdr.kind = KIND_OOM;
        rec.hdr.pid = arg as u32;
        rec.hdr.tid = arg as u32;
        rec.hdr.ktime_ns = unsafe { bpf_ktime_get_ns() };
    }
    output(&rec);
    0
}

// Go runtime uprobes. Go passes arguments in registers (ABIInternal, Go 1.17+): the first two
// words in RAX and RBX. Only entry probes: uretprobes break when Go moves stacks.

fn go_args(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: ctx.regs is the probed thread's saved user registers.
    unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx) }
}

/// The running goroutine: Go's register ABI keeps `g` in R14.
fn goroutine_key(ctx: &ProbeContext) -> [u64; 2] {
    // SAFETY: as above.
    let g = unsafe { (*ctx.regs).r14 };
    [bpf_get_current_pid_tgid() >> 32, g]
}

/// `runtime.gopanic(e any)`: remember the value's type; it may yet be recovered.
#[uprobe]
pub fn go_gopanic(ctx: ProbeContext) -> u32 {
    let (ty, data) = go_args(&ctx);
    let _ = GOPANIC.insert(goroutine_key(&ctx), [ty, data], 0);
    0
}

/// A Go record written in place in the ring buffer: uprobe programs have no recursion guard,
/// so on a preemptible kernel two runs can share a CPU and no per-CPU scratch is safe.
/// Inlined: the 6.1 verifier loses track of a reservation returned from a subprogram.
#[inline(always)]
fn go_record(ctx: &ProbeContext, what: u32) -> Option<RingBufEntry<GoRecord>> {
    let Some(mut e) = EVENTS.reserve::<GoRecord>(0) else {
        count_lost();
        return None;
    };
    // SAFETY: the reserved record; every field read downstream is written below (text and
    // stack only up to their lengths).
    let rec = unsafe { &mut *e.as_mut_ptr() };
    rec._pad = 0;
    let task = unsafe { bpf_get_current_task() };
    fill_header(&mut rec.hdr, KIND_GO, task);
    rec.what = what;
    rec.type_ptr = 0;
    rec.text_len = 0;
    let mm: u64 = rd(task, config!(off.task_mm));
    rec.start_code = rd(mm, config!(off.mm_start_code));
    rec.stack_len = user_stack(ctx.as_ptr(), &mut rec.stack);
    Some(e)
}

/// Copies `len` bytes of user memory at `ptr` into `dst`; returns the bytes copied.
fn read_user_text(ptr: u64, len: u64, dst: &mut [u8; GO_TEXT_LEN]) -> u32 {
    let n = if len >= GO_TEXT_LEN as u64 {
        GO_TEXT_LEN
    } else {
        len as usize & (GO_TEXT_LEN - 1)
    };
    if n == 0 || ptr == 0 {
        return 0;
    }
    match unsafe { bpf_probe_read_user_buf(ptr as *const u8, &mut dst[..n]) } {
        Ok(()) => n as u32,
        Err(_) => 0,
    }
}

/// `runtime.fatalpanic(msgs *_panic)`: the panic was not recovered; the process dies.
#[uprobe]
pub fn go_fatalpanic(ctx: ProbeContext) -> u32 {
    let key = goroutine_key(&ctx);
    let Some(mut e) = go_record(&ctx, GO_PANIC) else {
        return 0;
    };
    // SAFETY: the reserved record, filled by go_record.
    let rec = unsafe { &mut *e.as_mut_ptr() };
    if let Some(v) = unsafe { GOPANIC.get(key) } {
        let (ty, data) = (v[0], v[1]);
        rec.type_ptr = ty;
        // abi.Type.Kind_ (offset 23, stable since Go 1.?-1.27); kind 24 is string: copy it.
        let kind: u8 = unsafe { bpf_probe_read_user((ty + 23) as *const u8) }.unwrap_or(0);
        if kind & 0x1f == 24 {
            let hdr: [u64; 2] =
                unsafe { bpf_probe_read_user(data as *const [u64; 2]) }.unwrap_or([0, 0]);
            rec.text_len = read_user_text(hdr[0], hdr[1], &mut rec.text);
        }
    }
    e.submit(0);
    0
}

/// `runtime.throw(s string)` and `runtime.fatal(s string)`: a fatal error with its message.
#[uprobe]
pub fn go_throw(ctx: ProbeContext) -> u32 {
    let (ptr, len) = go_args(&ctx);
    let Some(mut e) = go_record(&ctx, GO_FATAL) else {
        return 0;
    };
    // SAFETY: the reserved record, filled by go_record.
    let rec = unsafe { &mut *e.as_mut_ptr() };
    rec.text_len = read_user_text(ptr, len, &mut rec.text);
    e.submit(0);
    0
}

/// `runtime.writeErrData(data *byte, n int32)` (Go 1.23+): what the runtime prints to stderr.
#[uprobe]
pub fn go_write_err(ctx: ProbeContext) -> u32 {
    let (ptr, len) = go_args(&ctx);
    send_output(ptr, len & 0xffff_ffff);
    0
}

/// `runtime.write1(fd uintptr, p unsafe.Pointer, n int32)` (Go before 1.23), stderr only.
/// Assembly (ABI0): the arguments are on the stack, above the return address.
#[uprobe]
pub fn go_write1(ctx: ProbeContext) -> u32 {
    // SAFETY: ctx.regs is the probed thread's saved user registers.
    let sp = unsafe { (*ctx.regs).rsp };
    let args: [u64; 3] =
        unsafe { bpf_probe_read_user((sp + 8) as *const [u64; 3]) }.unwrap_or([0; 3]);
    if args[0] == 2 {
        send_output(args[1], args[2] & 0xffff_ffff);
    }
    0
}

/// Sends `len` bytes of user memory at `ptr` as output chunks.
fn send_output(ptr: u64, len: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = rd(task, config!(off.task_group_leader));
    let start_ns: u64 = rd(leader, config!(off.task_start_time));
    let now = unsafe { bpf_ktime_get_ns() };
    for i in 0..GO_CHUNKS_PER_WRITE {
        let off = (i * GO_CHUNK_LEN) as u64;
        if off >= len {
            break;
        }
        let Some(mut e) = EVENTS.reserve::<GoOutputRecord>(0) else {
            count_lost();
            break;
        };
        let rec = e.as_mut_ptr();
        let left = len - off;
        let src = (ptr + off) as *const u8;
        // SAFETY: rec points at the reserved record; every field is written before submit.
        unsafe {
            (*rec).kind = KIND_GO_OUTPUT;
            (*rec).pid = (pid_tgid >> 32) as u32;
            (*rec).tid = pid_tgid as u32;
            (*rec).ktime_ns = now;
            (*rec).start_ns = start_ns;
            (*rec).cut = (i == GO_CHUNKS_PER_WRITE - 1 && left > GO_CHUNK_LEN as u64) as u32;
            (*rec)._pad = 0;
            let data = &mut (*rec).data;
            // Two reads, not one of a computed size: older verifiers (6.1) lose the bound of
            // a length merged from two branches. A constant, and a masked length.
            (*rec).len = if left >= GO_CHUNK_LEN as u64 {
                match bpf_probe_read_user_buf(src, &mut data[..]) {
                    Ok(()) => GO_CHUNK_LEN as u32,
                    Err(_) => 0,
                }
            } else {
                let n = left as usize & (GO_CHUNK_LEN - 1);
                match bpf_probe_read_user_buf(src, &mut data[..n]) {
                    Ok(()) => n as u32,
                    Err(_) => 0,
                }
            };
        }
        e.submit(0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
