//! `oom/mark_victim`: the OOM killer chose this process.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
    EbpfContext,
};
use crashwatch_common::*;

use crate::shared::{fill_header, output};

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> u32 {
    if !crate::shared::active() {
        return 0;
    }
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
