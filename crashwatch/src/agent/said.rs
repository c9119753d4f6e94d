//! What the agent says at stop of the kernel side: what stays pinned, the recursion guard's
//! skips and takes, and the malloc trim that follows.
use crate::kernel::probe::{LossReader, Losses};

/// What stays in the kernel after the agent, said at every stop. A run stopped with Ctrl-C
/// (someone trying it at a terminal) takes its pinned state with it; one stopped with
/// SIGTERM (systemd, the kubelet, an upgrade) leaves it recording for the next agent.
pub fn kernel_state_at_stop(pin_dir: Option<&std::path::Path>, interrupted: bool) -> String {
    let Some(dir) = pin_dir else {
        return "kernel state: nothing stays (not pinned): the programs ended with the agent"
            .into();
    };
    if interrupted {
        return match crate::kernel::probe::pin::uninstall(dir) {
            Ok(n) => format!(
                "kernel state: removed ({n} pinned objects under {}): stopped with Ctrl-C, nothing of crashwatch stays in the kernel (stop with SIGTERM, as a service manager does, to keep recording for the next agent)",
                dir.display()
            ),
            Err(e) => format!(
                "kernel state: could not be removed ({e:#}): the programs still record every exec and stderr write; `crashwatch uninstall-bpf --pin-dir {}` removes them",
                dir.display()
            ),
        };
    }
    format!(
        "kernel state: kept pinned under {}: the kernel goes on recording crashes for the next agent (every exec and stderr write on this host keeps paying for it); `crashwatch uninstall-bpf --pin-dir {}` removes it",
        dir.display(),
        dir.display()
    )
}

/// Returns the heap's free pages to the kernel. Start-up (the kernel's BTF, /proc, the
/// first Go binaries' tables) and crash bursts free megabytes that glibc's allocator would
/// otherwise keep resident for the life of the agent; a few ms a minute.
pub fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the kernel's recursion guard skipped, by program, and how much later copies and the
/// free hook redid.
pub fn guard_note(reader: &LossReader, l: Losses) -> String {
    let by_program: Vec<String> = reader
        .recursion_misses()
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    let mut note = if by_program.is_empty() {
        "recursion guard skipped no runs".to_string()
    } else {
        format!(
            "runs skipped by the recursion guard so far: {}; {} events taken by a later copy",
            by_program.join(", "),
            l.redone
        )
    };
    if l.exits_at_free > 0 {
        note += &format!(
            "; {} exits every copy skipped, taken when the task was freed ({} deaths sent from there)",
            l.exits_at_free, l.sent_at_free
        );
    }
    if l.writes_skipped > 0 {
        note += &format!(
            "; last words: {} writes skipped by the write hooks (bytes possibly missing from a crash's last words)",
            l.writes_skipped
        );
    }
    if l.unnoted > 0 {
        note += &format!(
            "; {} events the guard could not note (maybe handled twice)",
            l.unnoted
        );
    }
    note
}
