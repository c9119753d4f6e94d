//! `oom/mark_victim`: the OOM killer chose this process. Read while the victim is whole (the
//! kill comes after): its resident memory by kind, its `oom_score_adj`, and the usage and
//! limit of its memory cgroup and each parent, so the agent can say which limit was hit (or
//! that none was: the host ran out).
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
    EbpfContext,
};
use crashwatch_common::*;

use crate::shared::{fill_header, output, word};

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> u32 {
    if !crate::shared::active() {
        return 0;
    }
    // Read the argument as a plain number: it is a `task_struct *` or an `int pid` by kernel.
    let arg: u64 = unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }.unwrap_or(0);
    let mut rec = OomRecord::default();
    let current = unsafe { bpf_get_current_task() };
    if config!(oom_arg_is_task) != 0 {
        fill_header(&mut rec.hdr, KIND_OOM, arg);
        facts(&mut rec, arg, true);
    } else {
        // Old kernels pass only the victim's pid; the rest is the agent's to find. The task
        // at hand is the one whose allocation failed: the victim itself, or one in the same
        // memory cgroup (whose limits tell where the OOM happened).
        rec.hdr.kind = KIND_OOM;
        rec.hdr.pid = arg as u32;
        rec.hdr.tid = arg as u32;
        rec.hdr.ktime_ns = unsafe { bpf_ktime_get_ns() };
        let own = (bpf_get_current_pid_tgid() >> 32) as u32 == arg as u32;
        facts(&mut rec, current, own);
    }
    output(&rec);
    0
}

/// Fills the facts from `task`; `victim`: it is the victim (else only its memory cgroups are
/// taken).
#[inline(always)]
fn facts(rec: &mut OomRecord, task: u64, victim: bool) {
    if victim {
        rec.victim_read = 1;
        let signal = word(task, config!(off.task_signal));
        rec.oom_score_adj = word(signal, config!(off.signal_oom_score_adj)) as i16 as i32;
        let mm = word(task, config!(off.task_mm));
        let stat = mm.wrapping_add(config!(off.mm_rss_stat) as u64);
        let stride = config!(off.rss_stride) as u64;
        for (i, pages) in rec.rss_pages.iter_mut().enumerate() {
            let at = stat.wrapping_add(stride.wrapping_mul(i as u64));
            *pages = if mm == 0 || config!(off.mm_rss_stat) == NO_OFFSET {
                0
            } else {
                word(at, config!(off.rss_count)) as i64
            };
        }
    }
    let css = word(
        word(task, config!(off.task_cgroups)),
        config!(off.css_set_memory),
    );
    if css == 0 || config!(off.memcg_memory) == NO_OFFSET {
        return;
    }
    let mut counter = css
        .wrapping_sub(config!(off.memcg_css) as u64)
        .wrapping_add(config!(off.memcg_memory) as u64);
    for level in 0..OOM_LEVELS {
        if counter == 0 {
            break;
        }
        rec.memcg[level] = [
            word(counter, config!(off.counter_usage)),
            word(counter, config!(off.counter_max)),
        ];
        rec.levels = level as u32 + 1;
        counter = word(counter, config!(off.counter_parent));
    }
}
