//! Every thread of a dumped process ([`crate::model::dump`]), unwound and named as the
//! crash's own stack is: the same process's code ([`super::space`]), the same CFI and Go
//! walk ([`super::unwind`]) over each thread's stack top from the core.
use std::collections::BTreeMap;

use super::{names, unwind, Exe, Symbolizer};
use crate::{
    model::crash::Crash,
    model::dump::{Dump, DumpThread, Image, REG_BP, REG_IP, REG_SP, X86_64_REGS},
    model::report::ThreadInfo,
};

impl Symbolizer {
    /// The dump's threads, each with its stack named, and the files mapped into the process
    /// (for a minidump's module list).
    pub fn threads(
        &mut self,
        crash: &Crash,
        dump: &Dump,
        held: &dyn Fn(crate::read::elf::FileId) -> Option<std::fs::File>,
        root: Option<&std::fs::File>,
    ) -> (Vec<ThreadInfo>, Vec<Image>) {
        let (maps, captured, start_code) = match (&crash.signal, &crash.go) {
            (Some(s), _) => (s.maps.as_deref(), s.captured.as_deref(), s.start_code),
            (None, Some(g)) => (g.maps.as_deref(), g.captured.as_deref(), g.start_code),
            _ => (None, None, 0),
        };
        let exe_path = crash
            .proc
            .as_ref()
            .and_then(|p| p.exe.clone())
            .unwrap_or_default();
        let exe = Exe {
            path: &exe_path,
            id: crash.proc.as_ref().and_then(|p| p.file),
            start_code,
            held,
            root,
        };
        let space = self.space(maps, captured, &exe);
        let threads = dump
            .threads
            .iter()
            .map(|t| ThreadInfo {
                tid: t.tid,
                name: t.name.clone(),
                crashed: t.crashed,
                state: t.state(),
                registers: registers(t),
                stack: {
                    let native = stack(&space, t);
                    match dump
                        .python
                        .as_ref()
                        .and_then(|p| super::python::frames_of(p, t))
                    {
                        Some(py) => super::python::interleave(&native, py),
                        None => native,
                    }
                },
                reason: reason(t),
            })
            .collect();
        (threads, images(&space))
    }
}

/// One image per file, from where its first loadable segment is to the end of its last (as
/// Breakpad places modules: addresses in it less `base` are its own), in address order.
fn images(space: &super::space::Space) -> Vec<Image> {
    let mut out: Vec<Image> = Vec::new();
    for p in space.placed.iter().filter(|p| !p.range.is_empty()) {
        let (span, build_id) = match &p.file {
            Ok(f) => (
                p.bias.wrapping_add(f.span.start)..p.bias.wrapping_add(f.span.end),
                f.build_id.clone(),
            ),
            Err(_) => (p.range.clone(), None),
        };
        match out.iter_mut().find(|i| i.path == p.path) {
            Some(i) => {
                i.base = i.base.min(span.start);
                i.end = i.end.max(span.end);
            }
            None => out.push(Image {
                base: span.start,
                end: span.end,
                path: p.path.clone(),
                build_id,
            }),
        }
    }
    out.sort_by_key(|i| i.base);
    out
}

fn stack(space: &super::space::Space, t: &DumpThread) -> Vec<crate::model::frame::Frame> {
    let (Some(ip), Some(sp), Some(bp)) = (t.reg(REG_IP), t.reg(REG_SP), t.reg(REG_BP)) else {
        return Vec::new();
    };
    let steps = match &t.stack {
        Some(st) if !st.data.is_empty() => unwind::cfi(space, st, ip, sp, bp).steps,
        _ => vec![unwind::Step {
            ip,
            is_return: false,
            via: unwind::Via::Cfi,
        }],
    };
    steps.iter().flat_map(|s| names::name(space, s)).collect()
}

fn registers(t: &DumpThread) -> BTreeMap<String, String> {
    X86_64_REGS
        .iter()
        .zip(&t.regs)
        .map(|(n, v)| (n.to_string(), format!("{v:#x}")))
        .collect()
}

fn reason(t: &DumpThread) -> Option<String> {
    match &t.stack {
        None => Some("its stack was not in the dump (or past the dump's bounds)".into()),
        Some(s) if s.data.is_empty() => Some("its stack was empty in the dump".into()),
        Some(_) => None,
    }
}
