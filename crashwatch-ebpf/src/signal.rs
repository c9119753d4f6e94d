//! `signal_deliver`: the fatal-class signals, with the faulting thread's registers, user stack
//! and command line.
//!
//! Only what can end a process gets through: default-action fatal signals, and faults
//! (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS) the process handles itself. A
//! handled one (Go's and the JVM's handlers) is parked in `PENDING` and sent only if the process
//! then dies, so processes that survive their faults cost no records. The SIGKILLs `exit_group`
//! sends to sibling threads are dropped. A stop request the process handles itself (SIGTERM,
//! SIGINT: a graceful shutdown begins) is only noted in `ASKED`, for its exit record: a
//! SIGKILL that follows is a stop that outlived its grace period, not a crash.
//!
//! What goes missing from a record (registers, the frame-pointer stack, the record itself on a
//! full ring buffer) is said through aya-log at debug level: the agent turns it on only with
//! `--log-level debug`, and off it costs one load of a constant the verifier prunes on.
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel_buf,
        generated::bpf_task_pt_regs,
    },
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
    EbpfContext,
};
use crashwatch_common::*;

use aya_log_ebpf::debug;

use crate::shared::{fill_header, output_stack, output_with_args, rd, read_args, user_stack, word};

/// Scratch space for signal records, one per program copy.
#[map]
static SCRATCH_SIG: PerCpuArray<SignalRecord> = PerCpuArray::with_max_entries(COPIES, 0);
#[map]
static SCRATCH_STACK: PerCpuArray<StackRecord> = PerCpuArray::with_max_entries(COPIES, 0);

/// The last handled fault-class signal per process (tgid), until that process exits.
#[map]
pub static PENDING: LruHashMap<u32, SignalRecord> = LruHashMap::with_max_entries(2048, 0);
/// The stack record of each `PENDING` signal. Fewer slots (32 KiB each, allocated up front):
/// a signal whose stack was evicted is still reported, unwound by frame pointers only.
#[map]
pub static PENDING_STACK: LruHashMap<u32, StackRecord> = LruHashMap::with_max_entries(256, 0);

/// The last stop request each process (tgid) handled itself, until it dies (see `exec_exit`).
#[map]
pub static ASKED: LruHashMap<u32, Asked> = LruHashMap::with_max_entries(4096, 0);

const SIGKILL: i32 = 9;

/// SIGINT and SIGTERM: someone asks the process to stop. (SIGHUP and SIGQUIT, when handled,
/// usually ask for a reload or a thread dump.)
fn stop_request(sig: i32) -> bool {
    sig == 2 || sig == 15
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
    delivery_id,
    may_end_the_process,
    on_signal,
    signal_deliver,
    signal_deliver_2,
    signal_deliver_3
);

/// A delivery's identity for the copy guard (see `copies`): what it delivers, where the
/// thread was, how often it has blocked, and which task it is (its start time: a reused
/// task_struct's stale note must never match). All of it stays the same while the copies run
/// (none can sleep), so every copy computes the same identity; a task's CPU time and
/// involuntary switches do not (a tick or a preemption between two copies changes them),
/// which made a later copy take an event the first had done. Two deliveries alike in all of
/// it (a fault handled, then the same fault again at the same place, as crash handlers that
/// return to re-fault do) carry the same facts, so seeing only the first loses nothing.
#[inline(always)]
fn delivery_id(ctx: &BtfTracePointContext) -> u64 {
    let sig: i32 = ctx.arg(0);
    let info: u64 = ctx.arg(1);
    let info = if info > 1 { info } else { 0 };
    let task = unsafe { bpf_get_current_task() };
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let parts = [
        sig as u64,
        word(info, config!(off.siginfo_code)),
        word(info, config!(off.siginfo_fields)),
        word(regs, config!(off.regs_ip)),
        word(regs, config!(off.regs_sp)),
        word(task, config!(off.task_nvcsw)),
        // Another task in this task_struct later is another event.
        word(task, config!(off.task_start_time)),
    ];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        h = (h ^ p).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    h | 1
}

/// A signal that can end the process: default-action fatal, or a fault it handles itself.
#[inline(always)]
fn may_end_the_process(ctx: &BtfTracePointContext) -> bool {
    let sig: i32 = ctx.arg(0);
    if !fatal_class(sig) {
        return false;
    }
    let handler: u64 = rd(ctx.arg::<u64>(2), config!(off.ksig_handler));
    // SIG_IGN (1) never kills; a handled signal matters only if it is a fault, or a stop
    // request (noted, not sent).
    !(handler == 1 || (handler != 0 && !fault_class(sig) && !stop_request(sig)))
}

/// Notes a stop request the current process handles, for its exit record.
#[inline(always)]
fn note_asked(sig: i32, task: u64) {
    let leader: u64 = rd(task, config!(off.task_group_leader));
    let pid: u32 = rd(task, config!(off.task_tgid));
    let asked = Asked {
        sig: sig as u32,
        _pad: 0,
        ktime_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        start_ns: rd(leader, config!(off.task_start_time)),
    };
    let _ = ASKED.insert(pid, asked, 0);
}

#[inline(always)]
fn on_signal(ctx: &BtfTracePointContext, copy: u32) -> u32 {
    let sig: i32 = ctx.arg(0);
    let handler: u64 = rd(ctx.arg::<u64>(2), config!(off.ksig_handler));
    let task = unsafe { bpf_get_current_task() };
    if handler != 0 && !fault_class(sig) {
        // A handled stop request (the only handled non-fault `may_end_the_process` lets by).
        note_asked(sig, task);
        return 0;
    }
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
    // si_addr for a fault, si_pid/si_uid for a signal a process sent: userspace tells which
    // by si_code.
    rec.fields = rd(info, config!(off.siginfo_fields));
    let mm: u64 = rd(task, config!(off.task_mm));
    rec.start_code = rd(mm, config!(off.mm_start_code));
    rec.end_code = rd(mm, config!(off.mm_end_code));
    (rec.args_len, rec.args_total) = read_args(task, &mut rec.args);
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
    if rec.regs_len == 0 {
        debug!(
            ctx,
            "pid {} signal {}: registers unreadable", rec.hdr.pid, sig
        );
    }
    rec.stack_len = user_stack(ctx.as_ptr(), &mut rec.stack);
    if rec.stack_len == 0 {
        debug!(
            ctx,
            "pid {} signal {}: no frame-pointer stack", rec.hdr.pid, sig
        );
    }
    #[cfg(feature = "upgrade-test")]
    debug!(ctx, "pid {} signal {}: upgraded program", rec.hdr.pid, sig);
    let Some(st) = SCRATCH_STACK.get_ptr_mut(copy) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let st = unsafe { &mut *st };
    st.hdr = rec.hdr;
    st.hdr.kind = KIND_STACK;
    // pt_regs.sp: word 19 of the x86_64 layout (r15 ... ss).
    let sp = if rec.regs_len as usize >= 20 * 8 {
        rec.regs[19]
    } else {
        0
    };
    crate::stack::capture(st, task, sp);
    // Before the crash's records: who the process is, when the agent does not know.
    let pid = rec.hdr.pid;
    // Its memory is whole now: what its writes to stderr left unread can be read.
    if let Some(w) = crate::writes::WORDS.get_ptr_mut(pid) {
        // SAFETY: the dying process's entry (its other threads may write it too).
        crate::writes::retry_unread(unsafe { &mut *w });
    }
    crate::ident::send_ident_once(pid, copy);
    if handler != 0 {
        // Survivors cost no signal records downstream: keep it until the process exits.
        if PENDING.insert(pid, rec, 0).is_err() || PENDING_STACK.insert(pid, st, 0).is_err() {
            debug!(ctx, "pid {} signal {}: handled fault not parked", pid, sig);
        }
    } else {
        let stack = output_stack(st);
        let sent = output_with_args(rec, core::mem::offset_of!(SignalRecord, args), rec.args_len);
        if !(stack && sent) {
            debug!(
                ctx,
                "pid {} signal {}: lost to a full ring buffer (stack sent: {}, signal sent: {})",
                pid,
                sig,
                stack as u8,
                sent as u8
            );
        }
    }
    0
}
