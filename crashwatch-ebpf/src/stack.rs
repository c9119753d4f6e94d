//! What userspace needs to unwind and name a dying thread's stack after the process is gone:
//! a copy of the top of its user stack, and the objects the dynamic linker loaded with where
//! each sits (`StackRecord`, whose body holds the entries and then the copy, so it is sent
//! only as far as it is used).
//!
//! The stack is copied one page-bounded piece at a time: a read that meets a non-resident page
//! fails whole, and must not take the rest of the copy with it.
//!
//! The object list comes from the process's own memory, the way a debugger finds it: the
//! executable's program headers (`AT_PHDR` in `mm->saved_auxv`), its `DT_DEBUG` entry, and the
//! `r_debug.r_map` chain of `struct link_map` (`l_addr`, `l_name`, `l_ld`, `l_next`, a public
//! ABI that glibc and musl share). Everything here is read with `bpf_probe_read_user` and
//! bounded: a process that forges its list only misnames its own frames.
//!
//! Not done here, and why: `bpf_find_vma` would name each file by inode, but its callback
//! needs BTF func info, which these programs are built without; reading each object's build
//! id from its mapped notes (a loop over program headers and notes per object) took the
//! signal program past the verifier's million-instruction budget.
use aya_ebpf::helpers::{
    bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf, generated,
};
use crashwatch_common::*;

use crate::shared::rd;

const PAGE: u64 = 4096;
const AT_PHDR: u64 = 3;
const AT_PHNUM: u64 = 5;
const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;
const DT_DEBUG: u64 = 21;
/// Program headers looked at; real ones have about a dozen.
const PHDRS_MAX: u64 = 16;

/// Fills `rec` (all but the header) for the current task, whose user stack pointer is `sp`.
/// The object list first: the copy goes right after its entries.
#[inline(always)]
pub fn capture(rec: &mut StackRecord, task: u64, sp: u64) {
    read_modules(rec, task);
    copy_stack(rec, sp);
}

/// The stack copy alone, for hooks whose program cannot afford the object list (Go's
/// fatal-path probes, which share one program with everything else the Go runtime is probed
/// for: with the list inlined too it passed the 6.1 verifier's million-instruction budget).
#[inline(always)]
pub fn capture_copy(rec: &mut StackRecord, sp: u64) {
    rec.modules_len = 0;
    rec.modules_state = MODULES_NOT_TAKEN;
    copy_stack(rec, sp);
}

/// Where the copy starts in the body: right after the module entries, masked to the room
/// they have so the verifier sees the bound.
#[inline(always)]
pub fn copy_start(rec: &StackRecord) -> usize {
    (rec.modules_len as usize * MODULE_SIZE) & (MODULES_ROOM - 1)
}

/// The `i`-th module entry (`i` < MODULES_MAX).
#[inline(always)]
fn module(rec: &mut StackRecord, i: usize) -> &mut ModuleRec {
    // SAFETY: entries sit at the body's start, 8-byte aligned (the body follows u64 and u32
    // pairs), MODULES_MAX of them fit in MODULES_ROOM.
    unsafe { &mut *(rec.body.as_mut_ptr() as *mut ModuleRec).add(i) }
}

#[inline(always)]
fn copy_stack(rec: &mut StackRecord, sp: u64) {
    let want = (config!(stack_copy) as u64).min(STACK_COPY_MAX as u64);
    rec.sp = sp;
    rec.copy_len = 0;
    rec.missing = 0;
    if sp == 0 {
        return;
    }
    let start = copy_start(rec);
    let mut off: u64 = 0;
    // A copy of STACK_COPY_MAX bytes spans at most five pages.
    for piece in 0..(STACK_COPY_MAX as u64 / PAGE + 1) {
        if off >= want {
            break;
        }
        let addr = sp + off;
        let mut n = PAGE - (addr & (PAGE - 1));
        if n > want - off {
            n = want - off;
        }
        let at = start + ((off as usize) & (STACK_COPY_MAX - 1));
        // SAFETY (both reads): start < MODULES_ROOM, the offset < STACK_COPY_MAX and each
        // length <= PAGE = STACK_COPY_SLACK, so the piece lies inside the body. Two reads
        // with two sizes, each bounded on its own: 6.1's verifier loses a length merged from
        // two branches.
        let ok = if n >= PAGE {
            let dst = unsafe {
                core::slice::from_raw_parts_mut(rec.body.as_mut_ptr().add(at), PAGE as usize)
            };
            unsafe { bpf_probe_read_user_buf(addr as *const u8, dst) }.is_ok()
        } else {
            let len = (n as usize) & (PAGE as usize - 1);
            let dst =
                unsafe { core::slice::from_raw_parts_mut(rec.body.as_mut_ptr().add(at), len) };
            unsafe { bpf_probe_read_user_buf(addr as *const u8, dst) }.is_ok()
        };
        if !ok {
            rec.missing |= 1 << piece;
        }
        off += n;
    }
    rec.copy_len = off as u32;
}

fn user<T: Default>(addr: u64) -> T {
    if addr == 0 {
        return T::default();
    }
    // SAFETY: bpf_probe_read_user faults safely on bad addresses.
    unsafe { bpf_probe_read_user(addr as *const T) }.unwrap_or_default()
}

#[inline(always)]
fn read_modules(rec: &mut StackRecord, task: u64) {
    rec.modules_len = 0;
    rec.modules_state = MODULES_UNREADABLE;
    let mm: u64 = rd(task, config!(off.task_mm));
    let auxv_off = config!(off.mm_saved_auxv);
    if mm == 0 || auxv_off == NO_OFFSET {
        return;
    }
    let (mut phdr, mut phnum) = (0u64, 0u64);
    // saved_auxv holds at most 26 (type, value) pairs on x86_64.
    for i in 0..26u64 {
        let pair: [u64; 2] =
            unsafe { bpf_probe_read_kernel((mm + auxv_off as u64 + 16 * i) as *const [u64; 2]) }
                .unwrap_or_default();
        match pair[0] {
            0 => break,
            AT_PHDR => phdr = pair[1],
            AT_PHNUM => phnum = pair[1],
            _ => {}
        }
    }
    if phdr == 0 {
        return;
    }
    let (mut bias, mut dynamic) = (0u64, 0u64);
    for i in 0..PHDRS_MAX {
        if i >= phnum {
            break;
        }
        let h: [u64; 3] = user(phdr + 56 * i);
        match h[0] as u32 {
            PT_PHDR => bias = phdr.wrapping_sub(h[2]),
            PT_DYNAMIC => dynamic = h[2],
            _ => {}
        }
    }
    let exe = module(rec, 0);
    exe.bias = bias;
    exe.dynamic = if dynamic != 0 { bias + dynamic } else { 0 };
    exe.path_len = 0;
    rec.modules_len = 1;
    rec.modules_state = MODULES_STATIC;
    if dynamic == 0 {
        return;
    }
    let mut r_debug = 0u64;
    for i in 0..64u64 {
        let d: [u64; 2] = user(bias + dynamic + 16 * i);
        if d[0] == 0 {
            break;
        }
        if d[0] == DT_DEBUG {
            r_debug = d[1];
            break;
        }
    }
    if r_debug == 0 {
        return;
    }
    rec.modules_state = MODULES_OK;
    let mut lm: u64 = user(r_debug + 8);
    // Slot i + 1 for the i-th object: one index, few branches, so the verifier's walk over
    // the unrolled loop stays small. The executable's own entry (empty name) is kept too.
    for i in 0..MODULES_MAX - 1 {
        if lm == 0 {
            break;
        }
        // l_addr, l_name, l_ld, l_next
        let l: [u64; 4] = user(lm);
        let m = module(rec, i + 1);
        m.bias = l[0];
        m.dynamic = l[2];
        // SAFETY: writes at most MODULE_PATH_LEN bytes into `path`.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                m.path.as_mut_ptr() as *mut _,
                MODULE_PATH_LEN as u32,
                l[1] as *const _,
            )
        };
        m.path_len = n as u32;
        rec.modules_len = i as u32 + 2;
        lm = l[3];
    }
    if lm != 0 {
        rec.modules_state = MODULES_TRUNCATED;
    }
}
