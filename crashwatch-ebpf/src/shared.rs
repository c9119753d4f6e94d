//! What every program shares: the agent's configuration (`CONFIG`, struct offsets from BTF),
//! the ring buffer and its loss counter, and helpers that read the kernel's and the process's
//! memory at those offsets.
use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user_buf, generated::bpf_get_stack,
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use crashwatch_common::*;

#[unsafe(no_mangle)]
pub static CONFIG: Config = unsafe { core::mem::zeroed() };

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Failed ring buffer writes, per CPU: loss is counted, never silent.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `[generation, layout, losses acknowledged, 0]`: the programs that do the work, and the
/// ring-buffer losses an agent has already made visible (so the next one reports the rest). With the agent's state pinned,
/// two generations are attached for a moment during a restart (the new one attached before
/// the old one's links go); the agent switches them with one write here, so an event is
/// handled by one of them, never by none.
#[map]
static ACTIVE: Array<[u64; 4]> = Array::with_max_entries(1, 0);

/// Reads a field of `CONFIG`. Volatile: the compiler would otherwise fold the all-zero
/// initializer into the code, and the loader's values would never be seen.
macro_rules! config {
    ($($f:ident).+) => {
        // SAFETY: CONFIG is a read-only global the loader fills in before verification.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::shared::CONFIG.$($f).+)) }
    };
}

/// Whether this program's generation is the active one (always, unpinned).
#[inline(always)]
pub fn active() -> bool {
    let mine: u64 = config!(generation);
    mine == 0 || ACTIVE.get(0).is_some_and(|a| a[0] == mine)
}

#[inline(always)]
pub fn rd<T: Default>(base: u64, off: u32) -> T {
    if base == 0 || off == NO_OFFSET {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).unwrap_or_default() }
}

/// A kernel word at `base + off`, 0 when unreadable, with no branch on the outcome (the
/// helper zeroes what it could not read): a walk that branches on every read gives the
/// verifier more paths than it will follow.
#[inline(always)]
pub fn word(base: u64, off: u32) -> u64 {
    let mut v = 0u64;
    if off == NO_OFFSET {
        return 0;
    }
    // SAFETY: the helper writes at most 8 bytes into `v` and faults safely.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            &mut v as *mut u64 as *mut core::ffi::c_void,
            8,
            base.wrapping_add(off as u64) as *const core::ffi::c_void,
        )
    };
    v
}

pub fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

/// Sends `rec`; false when it was lost (counted).
pub fn output<T>(rec: &T) -> bool {
    let sent = EVENTS.output::<T>(rec, 0).is_ok();
    if !sent {
        count_lost();
    }
    sent
}

/// Fills the header from `task` (any thread of the process).
pub fn fill_header(hdr: &mut Header, kind: u32, task: u64) {
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

/// Copies up to `CONFIG.args_max` bytes of the process's argument list from its memory;
/// returns (bytes copied, bytes the list has).
pub fn read_args(task: u64, dst: &mut [u8; ARGS_LEN]) -> (u32, u32) {
    let mm: u64 = rd(task, config!(off.task_mm));
    let start: u64 = rd(mm, config!(off.mm_arg_start));
    let end: u64 = rd(mm, config!(off.mm_arg_end));
    if start == 0 || end <= start {
        return (0, 0);
    }
    let total = (end - start).min(u32::MAX as u64) as u32;
    let max = (config!(args_max) as u64).min(ARGS_LEN as u64);
    let len = (end - start).min(max) as usize;
    // Two fixed sizes keep the verifier happy; a short read of a long buffer is still useful.
    let n = if len == ARGS_LEN {
        ARGS_LEN
    } else {
        len & (ARGS_LEN - 1)
    };
    if n == 0 {
        return (0, total);
    }
    match unsafe { bpf_probe_read_user_buf(start as *const u8, &mut dst[..n]) } {
        Ok(()) => (n as u32, total),
        Err(_) => (0, total),
    }
}

/// Sends `rec`, whose last field is an args array of [`ARGS_LEN`] bytes starting at `head`,
/// only as far as `args_len` of them: most command lines are short.
#[inline(always)]
pub fn output_with_args<T>(rec: &T, head: usize, args_len: u32) -> bool {
    output_head::<T, ARGS_LEN>(rec, head, args_len)
}

/// Sends the first `head + n` bytes of `rec` (`n` capped at `MAX`, a power of two, and
/// `head + MAX` within the record). False when it was lost (counted).
#[inline(always)]
pub fn output_head<T, const MAX: usize>(rec: &T, head: usize, n: u32) -> bool {
    let bytes = rec as *const T as *const u8;
    let n = n as usize;
    // Two calls with two sizes, each bounded on its own: older verifiers lose a bound merged
    // from two branches.
    let r = if n >= MAX {
        // SAFETY: head + MAX <= size_of::<T>() (the caller's contract).
        let all = unsafe { core::slice::from_raw_parts(bytes, head + MAX) };
        EVENTS.output::<[u8]>(all, 0)
    } else {
        // SAFETY: head + n < head + MAX.
        let part = unsafe { core::slice::from_raw_parts(bytes, head + (n & (MAX - 1))) };
        EVENTS.output::<[u8]>(part, 0)
    };
    if r.is_err() {
        count_lost();
    }
    r.is_ok()
}

/// Sends a stack record packed: its fixed fields, its module entries, its copy. False when it
/// was lost (counted).
#[inline(always)]
pub fn output_stack(rec: &StackRecord) -> bool {
    let copy = (rec.copy_len as usize).min(STACK_COPY_MAX);
    // At most STACK_HEAD + MODULES_ROOM + STACK_COPY_MAX: the mask changes nothing, and gives
    // the verifier (6.1's loses sums of bounded terms) a bound inside the record. Through a
    // volatile read, or the compiler, which knows the mask changes nothing, drops it.
    let len = STACK_HEAD + crate::stack::copy_start(rec) + copy;
    // SAFETY: a read of a local.
    let len = unsafe { core::ptr::read_volatile(&len) } & (STACK_RECORD_SIZE - 1);
    // SAFETY: len < STACK_RECORD_SIZE = size_of::<StackRecord>().
    let bytes = unsafe { core::slice::from_raw_parts(rec as *const StackRecord as *const u8, len) };
    let sent = EVENTS.output::<[u8]>(bytes, 0).is_ok();
    if !sent {
        count_lost();
    }
    sent
}

/// The current thread's user stack (frame pointers), innermost first; returns bytes filled.
pub fn user_stack(ctx: *mut core::ffi::c_void, stack: &mut [u64; STACK_DEPTH]) -> u32 {
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
