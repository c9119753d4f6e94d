//! Three copies of each tracepoint's program, so the kernel's recursion guard cannot lose an
//! event to a preempted task, and an exact count of the events it did lose.
//!
//! The kernel skips a tracing program, and counts a recursion miss, on a CPU where that same
//! program is already running. From Linux 7.0 tracepoint (and fentry) programs are
//! preemptible: one task preempted inside a program makes the kernel skip it for every other
//! task on that CPU until the first resumes. The agent attaches three copies of each program in
//! order; they run one after the other for every event, in the task that hit the tracepoint.
//!
//! Which copy does the work: the first that runs for the event. Each event has an identity the
//! kernel gives it — an exec the task's `self_exec_id` (it counts the task's execs) with its
//! start time (children inherit the count, and a task_struct is reused), an exit the
//! task's start time (a task exits once; a task_struct reused later is another task), a signal
//! delivery what it delivers (signal, `si_code`, the siginfo's first word, the user `ip` and
//! `sp`, the task's voluntary context switches; nothing a tick or a preemption between two
//! copies changes, so every copy computes the same identity) — and the first copy to run writes it into [`SEEN`],
//! keyed by the task, before anything else. A later copy that finds the same identity there
//! returns; one that finds another is the first to see this event (every earlier copy was
//! skipped), takes it, and counts it in [`FIRST_LATER`]. Keyed by the task and not by the CPU,
//! nothing depends on where the task runs between copies (on 7.x it may move), and a note left
//! by an event whose last copies were skipped can never be taken for a later event: its
//! identity differs. Every event is noted, wanted or not, so the count below is exact for both.
//!
//! An exit all three copies skipped is taken later, when the reaped task is freed
//! (`exec_exit::sched_process_free`, attached with the copies): that hook runs from an RCU
//! callback with preemption off, so the kernel never skips it, and it counts the exit taken
//! in [`FIRST_LATER`] ([`exit_skipped_at_free`]). A 300-crash burst on two CPUs of the 7.3 VM
//! had all three exit copies busy at once and lost one exit before it; a reaper that waits
//! longer than the agent's ten seconds (below) gets its child's exit counted lost first.
//!
//! What was lost: an event all three copies skipped. Each event either runs copy 1 or is
//! counted in copy 1's `recursion_misses` (m1), and each event copy 1 skipped is either first
//! seen by copy 2 or 3 (counted in `FIRST_LATER`) or lost: lost = m1 − FIRST_LATER, per site.
//! Two signal deliveries to one thread with the same identity (the same fault again at the
//! same place without blocking between, as a crash handler that returns to re-fault makes)
//! are one to this scheme: the second carries the same facts as the first, and were the
//! second's first copy skipped, it would be counted lost. A note the LRU map evicts before a later copy runs
//! (tens of thousands of tasks noted in between) makes that copy take the event again and
//! count it first seen; the agent drops the second record of a process it has closed. The
//! agent subtracts copy 1's misses as read ten seconds or more earlier, so an event whose
//! later copy has not run yet (its task preempted between copies on a loaded CPU) is not
//! counted lost in between; a count once said is never taken back.
//!
//! Cost: the identity (a few kernel reads), one hash lookup per copy that runs and one update
//! by the first, for every event at these tracepoints, wanted or not. Measured with the
//! kernel's BPF statistics on Linux 6.18 with `--guard-copies 3` forced (3,000 execs of
//! `true` and 300 SIGSEGVs, two runs; ns per event, all copies together, beside one copy):
//! exec 1,400 (1,220 alone), exit 1,610 (620–700), signal delivery 1,330 (160; most are
//! SIGCHLDs no program wants), a fatal delivery 7,800 (6,500). So about 2.3 µs more per
//! short-lived process on 7.x, where the copies are attached. The free hook, attached with them,
//! costs 660–730 ns per task freed (same host, 3,000 processes and 2,000 threads: the freed
//! task and its entry are cold by then), 0 on kernels before 7.0. Before 7.0 the tracepoint runs
//! its programs with preemption off, and these tracepoints (exec, exit, signal delivery) fire
//! only in task context, so no run can find its own program busy: the agent attaches the
//! first copy alone (`CONFIG.guard_copies` = 1), which notes nothing and costs nothing more;
//! any miss it has is counted lost.
//!
//! Failpoints (tests only): with `CONFIG.failpoint_spin` the first `failpoint_copies` copies
//! spin that many rounds after noting the event, so a test in a 7.x VM can force tasks to be
//! preempted inside them while others hit the same tracepoint; with
//! `CONFIG.failpoint_skip_exit` every copy skips some processes' exits as the kernel's guard
//! would, so a test on any kernel proves the free hook sends them.
use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use crashwatch_common::{SITES, SITE_EXIT};

/// The identity of the last event each task (`task_struct` address) had at each site, as the
/// first copy to run for it noted it.
#[map]
static SEEN: LruHashMap<u64, [u64; SLOTS]> = LruHashMap::with_max_entries(32768, 0);
/// Sites a [`SEEN`] entry has room for: [`SITES`] rounded up to a power of two (a mask keeps
/// the verifier's bound).
const SLOTS: usize = 4;
const _: () = assert!(SITES as usize <= SLOTS);
/// Events whose first copies the kernel skipped, first seen by copy 2 or 3, per CPU and site.
#[map]
static FIRST_LATER: PerCpuArray<u64> = PerCpuArray::with_max_entries(SITES, 0);
/// Notes [`SEEN`] could not take (the kernel refused the update), per CPU and site: such an
/// event may be handled twice (the agent drops the second) and counted first-seen twice.
#[map]
static UNNOTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(SITES, 0);
/// At a task's free: exits every copy skipped (index 0), and processes whose exit record was
/// sent from there (1), per CPU.
#[map]
static AT_FREE: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// When this load's programs all ran (kernel monotonic ns, written by the agent once it has
/// attached and activated them): an exit of a task started earlier may have run before the
/// exit programs did, so its missing note says nothing.
#[map]
static SINCE: Array<u64> = Array::with_max_entries(1, 0);

/// At the free of `task` (`sched_process_free`, with the copies attached), which started at
/// `start`: true when every copy of the exit programs skipped its exit, which is then counted
/// as taken ([`FIRST_LATER`]): its process's death is sent by the caller if it matters. The
/// task's entry is left to the LRU (deleting it cost a third of the hook's time; a reused
/// task_struct's new task overwrites it, its identities never matching the old). A task with
/// no entry at all is taken for skipped: an entry noted at its exit is evicted before its
/// free only when 32,768 other tasks were noted while it was a zombie.
#[inline(always)]
pub fn exit_skipped_at_free(task: u64, start: u64) -> bool {
    let s = (SITE_EXIT as usize) & (SLOTS - 1);
    // SAFETY: a read of the dead task's own entry; nothing writes it any more.
    let noted = unsafe { SEEN.get(task) }.is_some_and(|v| v[s] == start | 1);
    let since = SINCE.get(0).copied().unwrap_or(0);
    let skipped = !noted && since != 0 && start >= since;
    if skipped {
        bump(&FIRST_LATER, SITE_EXIT);
        bump(&AT_FREE, 0);
    }
    skipped
}

/// Counts an exit record sent at a task's free.
#[inline(always)]
pub fn sent_at_free() {
    bump(&AT_FREE, 1);
}

/// Copy `copy` (0, 1, 2) of `site` runs for the current task's event `id` (never 0): true when
/// no earlier copy ran for it, so this one must do the work. Notes the event either way.
#[inline(always)]
pub fn first_to_see(site: u32, copy: u32, id: u64) -> bool {
    let task = unsafe { bpf_get_current_task() };
    let s = (site as usize) & (SLOTS - 1);
    let first = match SEEN.get_ptr_mut(task) {
        Some(v) => {
            // SAFETY: this task's own entry: only the task itself writes it, one event at a
            // time.
            let v = unsafe { &mut *v };
            if v[s] == id {
                false
            } else {
                v[s] = id;
                true
            }
        }
        None => {
            let mut v = [0u64; SLOTS];
            v[s] = id;
            if SEEN.insert(task, v, 0).is_err() {
                bump(&UNNOTED, site);
            }
            true
        }
    };
    if first && copy > 0 {
        bump(&FIRST_LATER, site);
    }
    spin(copy);
    first
}

#[inline(always)]
fn bump(counter: &PerCpuArray<u64>, site: u32) {
    if let Some(n) = counter.get_ptr_mut(site) {
        // SAFETY: per-CPU counter; a lost increment (a preempting task on the same CPU
        // writing it at once) can only over-report a loss.
        unsafe { *n += 1 };
    }
}

/// The exit failpoint: true for an exit every copy must skip, noting nothing, as the
/// kernel's recursion guard would (`failpoint_skip_exit`).
#[inline(always)]
pub fn skip_forced(site: u32) -> bool {
    let every = config!(failpoint_skip_exit);
    if every == 0 || site != SITE_EXIT {
        return false;
    }
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    tgid.is_multiple_of(every)
}

/// The failpoint: spin in the first `failpoint_copies` copies.
#[inline(always)]
fn spin(copy: u32) {
    let rounds = config!(failpoint_spin);
    if rounds == 0 || copy >= config!(failpoint_copies) {
        return;
    }
    let mut x = 0u64;
    for i in 0..FAILPOINT_MAX {
        if i >= rounds {
            break;
        }
        // SAFETY: a read of a local, kept by the compiler.
        x = unsafe { core::ptr::read_volatile(&x) }.wrapping_add(i as u64);
    }
    core::hint::black_box(x);
}

/// The most rounds the failpoint spins (the verifier walks each).
const FAILPOINT_MAX: u32 = 16384;

/// The three copies of a tracepoint's program, attached by the agent in this order. `$id`
/// gives the event's identity (never 0), `$wanted` whether the programs want it at all (a
/// fatal signal, the last thread of a process), `$body` does the work given the copy's index
/// (its scratch slot). Every copy that runs notes the event; the first to see a wanted one
/// does its work.
macro_rules! three_copies {
    ($tp:tt, $site:expr, $id:ident, $wanted:ident, $body:ident, $first:ident, $second:ident, $third:ident) => {
        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $first(ctx: aya_ebpf::programs::BtfTracePointContext) -> u32 {
            if !$crate::shared::active() || $crate::copies::skip_forced($site) {
                return 0;
            }
            // Alone (kernels whose tracepoint programs cannot be preempted), nothing to note.
            if config!(guard_copies) > 1 && !$crate::copies::first_to_see($site, 0, $id(&ctx)) {
                return 0;
            }
            if $wanted(&ctx) {
                $body(&ctx, 0)
            } else {
                0
            }
        }

        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $second(ctx: aya_ebpf::programs::BtfTracePointContext) -> u32 {
            if !$crate::shared::active()
                || $crate::copies::skip_forced($site)
                || !$crate::copies::first_to_see($site, 1, $id(&ctx))
            {
                return 0;
            }
            if $wanted(&ctx) {
                $body(&ctx, 1)
            } else {
                0
            }
        }

        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $third(ctx: aya_ebpf::programs::BtfTracePointContext) -> u32 {
            if !$crate::shared::active()
                || $crate::copies::skip_forced($site)
                || !$crate::copies::first_to_see($site, 2, $id(&ctx))
            {
                return 0;
            }
            if $wanted(&ctx) {
                $body(&ctx, 2)
            } else {
                0
            }
        }
    };
}
