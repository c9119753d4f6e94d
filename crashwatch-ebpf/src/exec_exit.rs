//! `sched_process_exec` and `sched_process_exit`: who runs what, and how each process ended.
//!
//! An exec is sent only when the agent has something to learn from it (see `ident`): then
//! its record names the executable (its file identity), the command line and the cgroup while
//! the new image is in place. An exit is sent for the last thread of a process only (a
//! whole-process death), and only when it is abnormal or the agent tracks the process; a
//! parked handled fault of that process goes out just before it when the death came within
//! the pending window, and so do its last words (`writes`) when it died abnormally, with its
//! identity when the agent had none. An exit record says the last stop request (SIGTERM,
//! SIGINT) the process handled, so the agent tells a kill after a grace period from a crash.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::map,
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::debug;
use crashwatch_common::*;

use crate::{
    ident,
    shared::{count_lost, fill_header, output, output_stack, output_with_args, rd, word, EVENTS},
    signal::{ASKED, PENDING, PENDING_STACK},
    writes::{stdout_done, WORDS},
};

/// Scratch space for the exec record (too large for the 512-byte BPF stack), one per program
/// copy: the copies can all be mid-run on one CPU when tasks are preempted.
#[map]
static SCRATCH_EXEC: PerCpuArray<ExecRecord> = PerCpuArray::with_max_entries(COPIES, 0);

three_copies!(
    "sched_process_exec",
    SITE_EXEC,
    exec_id,
    every_exec,
    on_exec,
    sched_process_exec,
    sched_process_exec_2,
    sched_process_exec_3
);

/// An exec's identity for the copy guard (see `copies`): the task's count of its execs, and
/// its start time. The count alone is not enough: a child inherits its parent's, so a task
/// in a reused task_struct often has the count the last one there had, and its exec looked
/// done already (the 7.3 VM lost execs of Go binaries so).
#[inline(always)]
fn exec_id(_ctx: &BtfTracePointContext) -> u64 {
    let task = unsafe { bpf_get_current_task() };
    let start = word(task, config!(off.task_start_time));
    (start.wrapping_mul(0x0000_0100_0000_01b3) ^ word(task, config!(off.task_self_exec_id))) | 1
}

/// An exit's identity for the copy guard: the task's start time (it exits once; a task_struct
/// reused later starts later).
#[inline(always)]
fn exit_id(_ctx: &BtfTracePointContext) -> u64 {
    let task = unsafe { bpf_get_current_task() };
    word(task, config!(off.task_start_time)) | 1
}

#[inline(always)]
fn every_exec(_ctx: &BtfTracePointContext) -> bool {
    true
}

#[inline(always)]
fn on_exec(ctx: &BtfTracePointContext, copy: u32) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let bprm: u64 = ctx.arg(2);
    let key = ident::file_key(rd(bprm, config!(off.bprm_file)));
    let tracked = ident::is_tracked(pid);
    if let Some(w) = WORDS.get_ptr_mut(pid) {
        // SAFETY: this process's entry; its other threads are gone (exec kills them).
        let w = unsafe { &mut *w };
        if w.has_ident != 0 {
            // A launcher wrote to stderr before this exec (pyenv's shim, a script that execs
            // python): the identity read then is what ran, not what runs now.
            ident::fill_ident(&mut w.ident, unsafe { bpf_get_current_task() });
        }
    }
    if !tracked && config!(exec_all) == 0 && ident::quiet(&key) {
        return 0;
    }
    let Some(rec) = SCRATCH_EXEC.get_ptr_mut(copy) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let rec = unsafe { &mut *rec };
    let task = unsafe { bpf_get_current_task() };
    ident::fill(rec, KIND_EXEC, task, &key);
    rec.filename[0] = 0;
    let name: u64 = rd(bprm, config!(off.bprm_filename));
    if name != 0 {
        let _ = unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name as *const u8, &mut rec.filename)
        };
    }
    if rec.filename[0] != b'/' {
        // `./bin/app`: where that is, the process may not live long enough to be asked.
        ident::file_path(rd(bprm, config!(off.bprm_file)), task, &mut rec.path);
    }
    if tracked {
        // A new image is not to blame for a fault its predecessor handled (only tracked
        // processes have parked faults: parking sends their identity).
        let _ = PENDING.remove(pid);
        let _ = PENDING_STACK.remove(pid);
    }
    ident::send(rec);
    ident::track(pid);
    0
}

/// Sends the death of `task`'s process. `AT_FREE`: from its task's free, not from the dying
/// task itself (its memory is gone, and the current task is another). A constant, so the
/// exit programs are the code they were before the free hook: inlined with a run-time flag,
/// 6.1's verifier walked past its million instructions on the exit program.
fn exit_common<const AT_FREE: bool>(task: u64) {
    let signal: u64 = rd(task, config!(off.task_signal));
    let gec: u32 = rd(signal, config!(off.signal_group_exit_code));
    let code: u32 = rd(task, config!(off.task_exit_code));
    let status = if gec != 0 { gec } else { code };
    let pid: u32 = if AT_FREE {
        rd(task, config!(off.task_tgid))
    } else {
        (bpf_get_current_pid_tgid() >> 32) as u32
    };
    let tracked = ident::untrack(pid);
    if status == 0 && !tracked {
        // Lived and ended normally: nothing to send, only its last-words entry to drop.
        if let Some(w) = WORDS.get_ptr_mut(pid) {
            // SAFETY: the dying process's entry; its threads are gone.
            stdout_done(unsafe { &*w }, pid);
            let _ = WORDS.remove(pid);
        }
        return;
    }
    let mut rec = ExitRecord::default();
    fill_header(&mut rec.hdr, KIND_EXIT, task);
    rec.status = status;
    // A stop request it handled before (a pid reused since is another process's).
    if let Some(a) = unsafe { ASKED.get(pid) } {
        if a.start_ns == rec.hdr.start_ns {
            rec.asked_sig = a.sig;
            rec.asked_ns = a.ktime_ns;
        }
        let _ = ASKED.remove(pid);
    }
    // Parked faults belong to tracked processes (parking sends the identity), but one whose
    // tracking was evicted still dies with its fault: looked up on every death sent.
    if let Some(p) = unsafe { PENDING.get(pid) } {
        let fresh = rec.hdr.ktime_ns.wrapping_sub(p.hdr.ktime_ns) <= config!(pending_window_ns);
        if rec.status != 0 && fresh {
            if let Some(st) = unsafe { PENDING_STACK.get(pid) } {
                output_stack(st);
            }
            output_with_args(p, core::mem::offset_of!(SignalRecord, args), p.args_len);
        }
        let _ = PENDING.remove(pid);
        let _ = PENDING_STACK.remove(pid);
    }
    if let Some(w) = WORDS.get_ptr_mut(pid) {
        // SAFETY: the dying process's entry; its threads are gone.
        let w = unsafe { &mut *w };
        if rec.status != 0 {
            // Where the process's memory is still there at this point (6.16+), what its
            // writes left unread is read now.
            if !AT_FREE {
                crate::writes::retry_unread(w);
            }
            if !tracked && w.has_ident != 0 {
                ident::send(&w.ident);
            }
            w.hdr = rec.hdr;
            w.hdr.kind = KIND_LAST_WORDS;
            output_last_words(w);
        }
        stdout_done(w, pid);
        let _ = WORDS.remove(pid);
    }
    if !output(&rec) {
        debug!(
            &(),
            "pid {} exit status {:x}: lost to a full ring buffer", pid, status
        );
    }
}

/// The fixed fields, the whole tail and the head as far as it goes.
#[inline(always)]
fn output_last_words(w: &LastWordsRecord) {
    let bytes = w as *const LastWordsRecord as *const u8;
    let base = WORDS_FIXED + WORDS_TAIL;
    // Two sends with two sizes, each bounded on its own (see `output_head`).
    let r = if w.head_len as usize >= WORDS_HEAD {
        // SAFETY: within the record.
        EVENTS.output::<[u8]>(
            unsafe { core::slice::from_raw_parts(bytes, base + WORDS_HEAD) },
            0,
        )
    } else {
        // SAFETY: a read of a local, so the compiler keeps the mask the verifier needs.
        let h = unsafe { core::ptr::read_volatile(&(w.head_len as usize)) } & (WORDS_HEAD - 1);
        // SAFETY: within the record.
        EVENTS.output::<[u8]>(unsafe { core::slice::from_raw_parts(bytes, base + h) }, 0)
    };
    if r.is_err() {
        count_lost();
        debug!(
            &(),
            "pid {}: last words lost to a full ring buffer", w.hdr.pid
        );
    }
}

// Kernels before 6.16: no `group_dead` argument; `signal->live` reached 0 for the last thread.
three_copies!(
    "sched_process_exit",
    SITE_EXIT,
    exit_id,
    last_thread,
    exit_live,
    sched_process_exit,
    sched_process_exit_2,
    sched_process_exit_3
);

#[inline(always)]
fn last_thread(_ctx: &BtfTracePointContext) -> bool {
    let task = unsafe { bpf_get_current_task() };
    let signal: u64 = rd(task, config!(off.task_signal));
    rd::<i32>(signal, config!(off.signal_live)) == 0
}

#[inline(always)]
fn exit_live(_ctx: &BtfTracePointContext, _copy: u32) -> u32 {
    exit_common::<false>(unsafe { bpf_get_current_task() });
    0
}

// Kernels 6.16+: `sched_process_exit(struct task_struct *p, bool group_dead)`.
three_copies!(
    "sched_process_exit",
    SITE_EXIT,
    exit_id,
    group_dead,
    exit_group_dead,
    sched_process_exit_gd,
    sched_process_exit_gd_2,
    sched_process_exit_gd_3
);

#[inline(always)]
fn group_dead(ctx: &BtfTracePointContext) -> bool {
    ctx.arg::<u64>(1) & 0xff != 0
}

#[inline(always)]
fn exit_group_dead(_ctx: &BtfTracePointContext, _copy: u32) -> u32 {
    exit_common::<false>(unsafe { bpf_get_current_task() });
    0
}

/// With the copies attached (7.x), `sched_process_free(struct task_struct *p)`: the task is
/// dead and reaped, and an exit every copy skipped is taken here. The hook runs from an RCU
/// callback with preemption off, so nothing can be running it when it fires: the kernel's
/// recursion guard never skips it. Each freed task whose exit no copy noted is counted taken
/// (`copies::exit_skipped_at_free`). The process's death is sent from its leader's free once
/// its whole group is dead (a leader freed by another thread's exec leaves a live group),
/// when the process still has what its exit would have used and removed: it is tracked, or
/// has last words (a pid freed at reaping and reused within the RCU grace period before
/// this hook would be taken for it: the pid allocator cycles, so that needs the whole pid
/// space in milliseconds). Nothing of its memory is read here: it is gone.
#[aya_ebpf::macros::btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> u32 {
    if !crate::shared::active() {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    crate::copies::exit_skipped_at_free(task, word(task, config!(off.task_start_time)));
    // Whichever thread's exit was skipped, the process's death is sent once, from its leader.
    if rd::<u64>(task, config!(off.task_group_leader)) != task {
        return 0;
    }
    let signal: u64 = rd(task, config!(off.task_signal));
    if rd::<i32>(signal, config!(off.signal_live)) != 0 {
        return 0;
    }
    let pid: u32 = rd(task, config!(off.task_tgid));
    // SAFETY: a lookup; the value is not kept.
    if ident::is_tracked(pid) || unsafe { WORDS.get(pid) }.is_some() {
        exit_common::<true>(task);
        crate::copies::sent_at_free();
    }
    0
}
