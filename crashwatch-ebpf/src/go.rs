//! Uprobes on the Go runtime's fatal paths, attached by the agent to each Go binary: the panic
//! value and its type, the fatal error's message, the dying goroutine's stack (a
//! frame-pointer walk and a copy of the stack's top, as at a fatal signal), and what the
//! runtime prints on its way down.
//!
//! Go passes arguments in registers (ABIInternal, Go 1.17+): the first two words in RAX and
//! RBX. Only entry probes: uretprobes break when Go moves stacks.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel_buf, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::ProbeContext,
    EbpfContext,
};
use crashwatch_common::*;

use crate::shared::{count_lost, fill_header, output_stack, rd, user_stack, EVENTS};

/// The panic value's (type, data) per goroutine (tgid, g), from `runtime.gopanic`, for
/// `fatalpanic`: a goroutine can move to another thread between the two.
#[map]
static GOPANIC: LruHashMap<[u64; 2], [u64; 2]> = LruHashMap::with_max_entries(8192, 0);

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

/// The one program on every probed Go function: the attach cookie (`GO_AT_*`) says which
/// function it fired on. One program lets the agent attach a binary's probes as one
/// uprobe_multi link where the kernel has them (6.6+).
#[uprobe]
pub fn go_probe(ctx: ProbeContext) -> u32 {
    // SAFETY: reads the cookie the agent attached this probe with.
    match unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } {
        GO_AT_GOPANIC => on_gopanic(&ctx),
        // One call site for both: the stack capture inlined twice would take the program
        // past the 6.1 verifier's million-instruction budget.
        c @ (GO_AT_FATALPANIC | GO_AT_THROW) => on_fatal(&ctx, c == GO_AT_FATALPANIC),
        GO_AT_WRITE_ERR => on_write_err(&ctx),
        GO_AT_WRITE1 => on_write1(&ctx),
        _ => {}
    }
    0
}

/// `runtime.gopanic(e any)`: remember the value's type; it may yet be recovered.
#[inline(always)]
fn on_gopanic(ctx: &ProbeContext) {
    let (ty, data) = go_args(ctx);
    let _ = GOPANIC.insert(goroutine_key(ctx), [ty, data], 0);
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

/// `runtime.fatalpanic(msgs *_panic)` (`panic`: the panic was not recovered; its value's type
/// and string from `GOPANIC`), or `runtime.throw(s string)` / `runtime.fatal(s string)` (a
/// fatal error with its message): the process dies. Sends the stack record, then the Go
/// record with the same header, as the signal program does.
///
/// Written in place in the ring buffer: uprobe programs have no recursion guard, so on a
/// preemptible kernel two runs can share a CPU and no per-CPU scratch is safe.
#[inline(always)]
fn on_fatal(ctx: &ProbeContext, panic: bool) {
    let task = unsafe { bpf_get_current_task() };
    let mut hdr = Header::default();
    fill_header(&mut hdr, KIND_GO, task);
    // SAFETY: ctx.regs is the probed thread's saved user registers.
    let (sp, bp) = unsafe { ((*ctx.regs).rsp, (*ctx.regs).rbp) };
    send_stack(&hdr, sp);
    let Some(mut e) = EVENTS.reserve::<GoRecord>(0) else {
        count_lost();
        return;
    };
    // SAFETY: the reserved record; every field read downstream is written below (text and
    // stack only up to their lengths).
    let rec = unsafe { &mut *e.as_mut_ptr() };
    rec._pad = 0;
    rec.hdr = hdr;
    rec.what = if panic { GO_PANIC } else { GO_FATAL };
    rec.type_ptr = 0;
    rec.text_len = 0;
    rec.bp = bp;
    rec.regs_len = 0;
    let size = config!(off.pt_regs_size) as usize;
    if size > 0 && size <= REGS_WORDS * 8 {
        // SAFETY: ctx.regs is the kernel's saved copy of the thread's user registers; at
        // most REGS_WORDS words are written into `regs`.
        let dst = unsafe {
            core::slice::from_raw_parts_mut(
                rec.regs.as_mut_ptr() as *mut u8,
                size & (REGS_WORDS * 8 - 1),
            )
        };
        if unsafe { bpf_probe_read_kernel_buf(ctx.regs as *const u8, dst) }.is_ok() {
            rec.regs_len = size as u32;
        }
    }
    let mm: u64 = rd(task, config!(off.task_mm));
    rec.start_code = rd(mm, config!(off.mm_start_code));
    rec.stack_len = user_stack(ctx.as_ptr(), &mut rec.stack);
    rec.caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    if panic {
        if let Some(v) = unsafe { GOPANIC.get(goroutine_key(ctx)) } {
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
    } else {
        let (ptr, len) = go_args(ctx);
        rec.text_len = read_user_text(ptr, len, &mut rec.text);
    }
    e.submit(0);
}

/// Stack records for Go's fatal paths, a few per CPU. Uprobe programs run with migration
/// off but can be preempted, and have no recursion guard, so a task claims a slot before
/// writing into it: an insert into `GO_STACK_CLAIMS` that fails when the key exists is the
/// atomic test-and-set (the BPF target has no compare-and-swap in Rust), so a task that
/// preempts another on this CPU takes the next slot, never the same one.
#[map]
static GO_STACKS: PerCpuArray<StackRecord> = PerCpuArray::with_max_entries(GO_STACK_SLOTS, 0);
/// (cpu, slot) → the claiming task, while it writes. Room for 64 claims in flight at once.
#[map]
static GO_STACK_CLAIMS: HashMap<u32, u64> = HashMap::with_max_entries(64, 0);
const GO_STACK_SLOTS: u32 = 3;
const BPF_NOEXIST: u64 = 1;

/// The stack copy (see `stack`), so Go's fatal path is unwound like a fatal signal's. Not the
/// loaded-object list: Go's fatal paths run Go code, in the executable, which the agent
/// places from `mm->start_code` alone.
#[inline(always)]
fn send_stack(hdr: &Header, sp: u64) {
    let task = unsafe { bpf_get_current_task() };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    for slot in 0..GO_STACK_SLOTS {
        let key = cpu.wrapping_mul(GO_STACK_SLOTS).wrapping_add(slot);
        if GO_STACK_CLAIMS.insert(key, task, BPF_NOEXIST).is_err() {
            continue;
        }
        if let Some(st) = GO_STACKS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot, claimed by this task until the claim is removed.
            let st = unsafe { &mut *st };
            st.hdr = *hdr;
            st.hdr.kind = KIND_STACK;
            crate::stack::capture_copy(st, sp);
            output_stack(st);
        }
        let _ = GO_STACK_CLAIMS.remove(key);
        return;
    }
    count_lost();
}

/// `runtime.writeErrData(data *byte, n int32)` (Go 1.23+): what the runtime prints to stderr.
fn on_write_err(ctx: &ProbeContext) {
    let (ptr, len) = go_args(ctx);
    send_output(ptr, len & 0xffff_ffff);
}

/// `runtime.write1(fd uintptr, p unsafe.Pointer, n int32)` (Go before 1.23), stderr only.
/// Assembly (ABI0): the arguments are on the stack, above the return address.
fn on_write1(ctx: &ProbeContext) {
    // SAFETY: ctx.regs is the probed thread's saved user registers.
    let sp = unsafe { (*ctx.regs).rsp };
    let args: [u64; 3] =
        unsafe { bpf_probe_read_user((sp + 8) as *const [u64; 3]) }.unwrap_or([0; 3]);
    if args[0] == 2 {
        send_output(args[1], args[2] & 0xffff_ffff);
    }
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
