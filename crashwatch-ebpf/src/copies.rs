//! Three copies of each tracepoint's program, so the kernel's recursion guard cannot lose an
//! event to a preempted task.
//!
//! The kernel skips a tracing program, and counts a recursion miss, on a CPU where that same
//! program is already running. Since Linux 7.0 tracepoint programs are preemptible, so on a
//! preemptible kernel one task preempted inside a program makes it skip every other task on
//! that CPU until the first resumes. The agent attaches the copies in order: the first notes
//! the task in `DONE`; a later copy does nothing when the note is there, and otherwise does the
//! work, notes it and counts it in `COVERED`; the last clears the note. An event is lost only
//! when all three copies were skipped. Two were not enough: while the first is held, the second
//! does every task's work and is as likely to be preempted in turn.
//!
//! Before 7.0 the tracepoint runs its programs with preemption off, and these tracepoints
//! (exec, exit, signal delivery) fire only in task context, so no run can find its own
//! program busy: the agent attaches the first copy alone there (`CONFIG.guard_copies` = 1)
//! and it skips the marks only later copies read. Any miss it still has is counted a loss.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};
use crashwatch_common::SITES;

/// Tasks (`task_struct` addresses) whose current event a copy has handled and the last copy
/// has not yet seen, per CPU and site. A few slots: several tasks can be preempted between
/// copies.
const SLOTS: usize = 4;
#[map]
static DONE: PerCpuArray<[u64; SLOTS]> = PerCpuArray::with_max_entries(SITES, 0);
/// Runs a later copy made because the kernel skipped the earlier ones, per CPU and site.
#[map]
static COVERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(SITES, 0);
/// Whether the first and the second copy are mid-run on this CPU, per site: set at a copy's
/// entry, cleared at its end. While one is held by a preempted task the kernel skips it for
/// every other task on the CPU, so a later copy that turns an unwanted event away while an
/// earlier one is held knows that copy missed it: nothing was lost, and `UNWANTED_MISSES`
/// says so. The guard itself never sees unwanted events.
#[map]
static HELD: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(SITES, 0);
/// First-copy misses of events no copy wanted, per CPU and site: not losses.
#[map]
static UNWANTED_MISSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(SITES, 0);

/// Marks copy `copy` (0 or 1) of `site` mid-run on this CPU; give the result to [`leave`].
#[inline(always)]
pub fn enter(site: u32, copy: usize) -> Option<*mut [u64; 2]> {
    let h = HELD.get_ptr_mut(site)?;
    // SAFETY: per-CPU slot; only this copy writes its half, and the kernel runs no second
    // instance of it on this CPU meanwhile.
    if let Some(x) = unsafe { (*h).get_mut(copy) } {
        *x = 1;
    }
    Some(h)
}

#[inline(always)]
pub fn leave(held: Option<*mut [u64; 2]>, copy: usize) {
    if let Some(h) = held {
        // SAFETY: as in `enter`.
        if let Some(x) = unsafe { (*h).get_mut(copy) } {
            *x = 0;
        }
    }
}

/// A later copy (1 or 2) turned an unwanted event away: counts it when every earlier copy
/// is held by another task, i.e. was skipped for this event.
#[inline(always)]
pub fn unwanted(site: u32, copy: usize) {
    let Some(h) = HELD.get_ptr(site) else {
        return;
    };
    // SAFETY: per-CPU slot, read only.
    let h = unsafe { &*h };
    let skipped = h[0] != 0 && (copy < 2 || h[1] != 0);
    if skipped {
        if let Some(n) = UNWANTED_MISSES.get_ptr_mut(site) {
            // SAFETY: per-CPU counter; a lost increment only over-reports losses.
            unsafe { *n += 1 };
        }
    }
}

/// Notes that the current task's event at `site` is handled.
#[inline(always)]
pub fn note_done(site: u32) {
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
pub fn later_copy(site: u32, last: bool) -> bool {
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
/// takes the context and the copy's index (its scratch slot). `$wanted` is the first test of
/// every copy, before the guard: events no program wants (a non-fatal signal, a thread that
/// is not the last of its process) leave at once, unseen by the guard (`HELD` tells a later
/// copy whether an earlier one missed such an event). It must give the same answer in each
/// copy for one event.
macro_rules! three_copies {
    ($tp:tt, $site:expr, $wanted:ident, $body:ident, $first:ident, $second:ident, $third:ident) => {
        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $first(ctx: aya_ebpf::programs::BtfTracePointContext) -> u32 {
            if !$crate::shared::active() {
                return 0;
            }
            // Alone (kernels whose tracepoint programs cannot be preempted), no later copy
            // reads the marks.
            let alone = config!(guard_copies) <= 1;
            let held = if alone {
                None
            } else {
                $crate::copies::enter($site, 0)
            };
            let r = if $wanted(&ctx) {
                if !alone {
                    $crate::copies::note_done($site);
                }
                $body(&ctx, 0)
            } else {
                0
            };
            $crate::copies::leave(held, 0);
            r
        }

        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $second(ctx: aya_ebpf::programs::BtfTracePointContext) -> u32 {
            if !$crate::shared::active() {
                return 0;
            }
            let held = $crate::copies::enter($site, 1);
            let r = if !$wanted(&ctx) {
                $crate::copies::unwanted($site, 1);
                0
            } else if $crate::copies::later_copy($site, false) {
                $body(&ctx, 1)
            } else {
                0
            };
            $crate::copies::leave(held, 1);
            r
        }

        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $third(ctx: aya_ebpf::programs::BtfTracePointContext) -> u32 {
            if !$crate::shared::active() {
                return 0;
            }
            if !$wanted(&ctx) {
                $crate::copies::unwanted($site, 2);
                return 0;
            }
            if $crate::copies::later_copy($site, true) {
                $body(&ctx, 2)
            } else {
                0
            }
        }
    };
}
