//! The tracepoint programs and their copies, in attach order: the list the loader attaches
//! and the loss reader sums by site (see the module doc of [`super`] for the copies).
use crashwatch_common::{COPIES, SITE_EXEC, SITE_EXIT, SITE_SIGNAL};

/// A tracepoint program: its name, its tracepoint, and for the copied ones which copy it is
/// and at which site.
pub(super) struct TracepointProgram {
    pub(super) name: &'static str,
    pub(super) tracepoint: &'static str,
    pub(super) copy: Option<(Role, u32)>,
    /// For the exit programs: whether it needs the `group_dead` argument (6.16+) or must not
    /// have it.
    pub(super) group_dead: Option<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    First,
    Later,
}

/// Every tracepoint program in attach order: a tracepoint's copies first to last, `copies`
/// of each.
pub(super) fn tracepoint_programs(copies: u32) -> Vec<TracepointProgram> {
    type Copies = [&'static str; COPIES as usize];
    let sites: [(Copies, &str, u32, Option<bool>); 4] = [
        (
            [
                "sched_process_exec",
                "sched_process_exec_2",
                "sched_process_exec_3",
            ],
            "sched_process_exec",
            SITE_EXEC,
            None,
        ),
        (
            ["signal_deliver", "signal_deliver_2", "signal_deliver_3"],
            "signal_deliver",
            SITE_SIGNAL,
            None,
        ),
        (
            [
                "sched_process_exit",
                "sched_process_exit_2",
                "sched_process_exit_3",
            ],
            "sched_process_exit",
            SITE_EXIT,
            Some(false),
        ),
        (
            [
                "sched_process_exit_gd",
                "sched_process_exit_gd_2",
                "sched_process_exit_gd_3",
            ],
            "sched_process_exit",
            SITE_EXIT,
            Some(true),
        ),
    ];
    let mut out = Vec::new();
    for (names, tracepoint, site, group_dead) in sites {
        for (i, name) in names.into_iter().enumerate().take(copies as usize) {
            let role = if i == 0 { Role::First } else { Role::Later };
            out.push(TracepointProgram {
                name,
                tracepoint,
                copy: Some((role, site)),
                group_dead,
            });
        }
    }
    if copies > 1 {
        // Takes the exits every copy skipped (crashwatch-ebpf's `exec_exit`).
        out.push(TracepointProgram {
            name: "sched_process_free",
            tracepoint: "sched_process_free",
            copy: None,
            group_dead: None,
        });
    }
    out.push(TracepointProgram {
        name: "mark_victim",
        tracepoint: "mark_victim",
        copy: None,
        group_dead: None,
    });
    out
}
