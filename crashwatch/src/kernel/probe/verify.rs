//! Loading the programs into the kernel, each on a thread of its own.
//!
//! `BPF_PROG_LOAD` is where the kernel's verifier runs, and it is most of the agent's
//! start: measured here (Linux 6.18) `signal_deliver` alone walks 163,000 instructions in
//! 0.25 s, the exit program 97,000 in 0.2 s, and the start of `crashwatch exec`, which a CI job
//! pays at every step, was mostly these loads one after another. The verifier runs in the
//! loading thread, so loads on separate threads verify on separate CPUs. Only the loads run
//! here; attaching stays on the caller's thread, in the order the copies need.
use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{BtfTracePoint, Program, UProbe},
    Btf, Ebpf,
};

use super::{uprobe_multi, writes};

/// The object's maps' descriptors by name.
pub(super) type MapFds = Vec<(String, std::os::fd::RawFd)>;

/// What is loaded, and how.
pub(super) struct Plan<'a> {
    /// Tracepoint programs (name, tracepoint), attached later in this order.
    pub tracepoints: Vec<(&'static str, &'static str)>,
    pub last_words: writes::Mode,
    /// The Go program's name; loaded for uprobe_multi when `multi` is set, else as aya's
    /// uprobe.
    pub go: &'static str,
    /// The object and the maps' descriptors for the uprobe_multi copy.
    pub multi: Option<(&'a [u8], MapFds)>,
}

/// What the loads gave.
pub(super) struct Loaded {
    /// Each tracepoint program's load, in the plan's order.
    pub tracepoints: Vec<(&'static str, &'static str, Result<()>)>,
    pub last_words: writes::Loaded,
    /// The aya uprobe was loaded (when it was tried).
    pub go: Option<Result<()>>,
    pub multi: Option<Result<uprobe_multi::MultiProgram>>,
}

/// Loads every program the plan names, each on a scoped thread.
pub(super) fn load(ebpf: &mut Ebpf, btf: &Btf, plan: Plan<'_>) -> Result<Loaded> {
    let mut programs: HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let mut take = |name: &str| {
        programs
            .remove(name)
            .with_context(|| format!("program {name} missing from the object"))
    };
    let mut tps = Vec::new();
    for (name, tp) in plan.tracepoints {
        tps.push((name, tp, take(name)?));
    }
    let words = writes::programs(&mut take)?;
    let go = match plan.multi {
        None => Some(take(plan.go)?),
        Some(_) => None,
    };
    std::thread::scope(|s| {
        let tps: Vec<_> = tps
            .into_iter()
            .map(|(name, tp, p)| (name, tp, s.spawn(move || load_tracepoint(p, tp, btf))))
            .collect();
        let words = s.spawn(move || writes::load(words, btf, plan.last_words));
        let go = go.map(|p| s.spawn(move || load_uprobe(p)));
        let multi = plan.multi.map(|(object, fds)| {
            s.spawn(move || uprobe_multi::MultiProgram::load(object, &fds, plan.go))
        });
        Ok(Loaded {
            tracepoints: tps
                .into_iter()
                .map(|(name, tp, h)| (name, tp, joined(h.join())))
                .collect(),
            last_words: words.join().unwrap_or_else(|_| {
                writes::Loaded::Unavailable("the loading thread panicked".into())
            }),
            go: go.map(|h| joined(h.join())),
            multi: multi.map(|h| joined(h.join())),
        })
    })
}

/// The kernel's refusal of a load, its verifier log cut to its head and tail.
pub(super) fn refused(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}", short_log(&format!("{e:#}")))
}

/// A verifier log can run to thousands of lines: keep its head and its tail.
pub(super) fn short_log(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() <= 24 {
        return s.to_string();
    }
    let mut out = lines[..4].join("\n");
    out += &format!("\n[... {} lines of verifier log ...]\n", lines.len() - 20);
    out += &lines[lines.len() - 16..].join("\n");
    out
}

fn joined<T>(r: std::thread::Result<Result<T>>) -> Result<T> {
    r.unwrap_or_else(|_| Err(anyhow!("the loading thread panicked")))
}

fn load_tracepoint(p: &mut Program, tp: &str, btf: &Btf) -> Result<()> {
    let p: &mut BtfTracePoint = p.try_into()?;
    p.load(tp, btf).map_err(refused)
}

pub(super) fn load_uprobe(p: &mut Program) -> Result<()> {
    let p: &mut UProbe = p.try_into()?;
    p.load().map_err(refused)
}
