//! Assemble (the pipeline's first stage, fed by `kernel::decode`): folds the kernel's records into
//! exactly one [`Crash`] per dying process.
//!
//! Owns the per-process state: what each live process runs (from exec and identity records and the
//! start-up scan) and the open case of each process that showed a crash sign (a fatal signal, an
//! OOM mark). The process's whole-group exit closes its case: only then is the kind known (SIGTERM
//! by default action is a crash). A Go process's case also gathers its runtime's fatal-path record
//! and printed output.
//!
//! A fault the process handled itself is blamed for its death only when the death says so:
//! the process died of a signal, a Go binary exited 2 after its handler ran (that is how Go's
//! handler ends a program), or the runtime's own output names the signal. JVMs fault on
//! purpose (a CPU-feature probe at start-up, implicit null checks) and then exit 1 for
//! reasons of their own: that exit is not a segfault.
pub use crate::model::crash::{Crash, Kind, Output, ProcInfo};
use std::collections::{HashMap, HashSet, VecDeque};

use crate::{
    kernel::decode::{Exit, Go, GoWhat, Head, LastWords, Record, Signal},
    read::elf::FileId,
};

pub mod policy;

/// The case's stack record sent with the record of header `h` (same thread and kernel time).
fn take_stack(case: &mut Case, h: &Head) -> Option<std::sync::Arc<crate::kernel::decode::Stack>> {
    let at = case
        .stacks
        .iter()
        .position(|st| st.head.tid == h.tid && st.head.ktime_ns == h.ktime_ns)?;
    case.stacks.remove(at)
}

/// Stack records kept per case until their signal or Go record arrives: threads of one
/// process die at once (two goroutines both find the map written concurrently), and their
/// records interleave.
const STACKS_PER_CASE: usize = 4;

/// The runtime's own output names signal `sig` (Go: `SIGSEGV: segmentation violation`,
/// `[signal SIGSEGV: ...`; a JVM's fatal error banner: `SIGSEGV (0xb) at pc=`).
fn output_names_signal(o: &Output, sig: i32) -> bool {
    if o.head.is_empty() {
        return false;
    }
    let name = crate::model::signals::name(sig);
    let (a, b) = o.tail.as_slices();
    [o.head.as_slice(), a, b].iter().any(|part| {
        let text = String::from_utf8_lossy(part);
        text.contains(&format!("{name}: ")) || text.contains(&format!("{name} (0x"))
    })
}

/// The signal crash header the Go runtime printed (only its own output is captured):
/// `SIGSEGV: segmentation violation`, `SIGQUIT: quit`.
fn runtime_signal_crash(o: &Output) -> Option<String> {
    if o.head.is_empty() {
        return None;
    }
    crate::read::parse::go::parse(&String::from_utf8_lossy(&o.head)).signal_crash
}

#[derive(Default)]
struct Case {
    /// Ring buffer position from which this case's records (and a recent exec) lie.
    hold: u64,
    start_ns: u64,
    opened_ns: u64,
    /// The newest record's time: a case is idle, not old, when it expires.
    last_ns: u64,
    signal: Option<Signal>,
    oom: Option<crate::kernel::decode::Oom>,
    go: Option<Go>,
    output: Output,
    /// The latest stack records, until the signal or Go record each goes with arrives.
    stacks: std::collections::VecDeque<std::sync::Arc<crate::kernel::decode::Stack>>,
    last_words: Option<LastWords>,
}

pub struct Assembler {
    report_nonzero_exits: bool,
    /// Bytes of Go runtime output kept per process.
    output_cap: usize,
    procs: HashMap<u32, ProcInfo>,
    cases: HashMap<u32, Case>,
    /// Recently closed processes: late duplicates of their records are dropped.
    closed: HashSet<(u32, u64)>,
    closed_order: VecDeque<(u32, u64)>,
    /// The ring buffer position of the record being folded in.
    pos: u64,
}

/// An exec this close before a process's first crash sign is kept with its crash's records
/// (a short-lived process's identity); an older one is not (the process can be read from
/// /proc by the next agent, or its identity is sent again at its crash sign).
const EXEC_HOLD_NS: u64 = 10_000_000_000;

const CLOSED_KEEP: usize = 4096;
const PROCS_MAX: usize = 1 << 17;

impl Assembler {
    pub fn new(report_nonzero_exits: bool, output_cap: usize) -> Self {
        Assembler {
            report_nonzero_exits,
            output_cap,
            procs: HashMap::new(),
            cases: HashMap::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
            pos: 0,
        }
    }

    /// [`Assembler::push_with`] for the record at ring buffer position `pos`: the crash it
    /// completes says from which position its records lie ([`Crash::hold`]).
    pub fn push_at(
        &mut self,
        rec: Record,
        pos: u64,
        is_go: &dyn Fn(FileId) -> bool,
    ) -> Option<Crash> {
        self.pos = pos;
        let exec = match &rec {
            Record::Exec(e) if e.at_exec => Some((e.head.pid, e.head.ktime_ns)),
            _ => None,
        };
        let crash = self.push_with(rec, is_go);
        if let Some((pid, at)) = exec {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.exec_at = Some((pos, at));
            }
        }
        crash
    }

    /// The oldest ring buffer position an open case still needs.
    pub fn min_hold(&self) -> Option<u64> {
        self.cases.values().map(|c| c.hold).min()
    }
}

/// Where a case of `pid` opened by the record at `pos`, kernel time `now`, starts: at that
/// record, or at the process's exec when that was recent.
fn hold_for(procs: &HashMap<u32, ProcInfo>, pid: u32, pos: u64, now: u64) -> u64 {
    match procs.get(&pid).and_then(|p| p.exec_at) {
        Some((at_pos, at)) if now.saturating_sub(at) <= EXEC_HOLD_NS => at_pos.min(pos),
        _ => pos,
    }
}

impl Assembler {
    /// Seeds a process that was running before the agent started.
    pub fn seed(&mut self, pid: u32, info: ProcInfo) {
        self.procs.insert(pid, info);
    }

    /// Folds in one record, knowing no Go binaries.
    #[cfg(test)]
    pub fn push(&mut self, rec: Record) -> Option<Crash> {
        self.push_with(rec, &|_| false)
    }

    /// Folds in one record; an exit record of a crashed process returns its crash. `is_go`
    /// tells whether a file is a Go binary (a handled fault followed by exit 2 is Go's way of
    /// dying of it).
    pub fn push_with(&mut self, rec: Record, is_go: &dyn Fn(FileId) -> bool) -> Option<Crash> {
        match rec {
            Record::Exec(e) => {
                // A process that execs survived whatever signal came before (an identity
                // read at a crash sign comes before that crash's records).
                if e.at_exec {
                    self.cases.remove(&e.head.pid);
                }
                if self.procs.len() < PROCS_MAX || self.procs.contains_key(&e.head.pid) {
                    self.procs.insert(e.head.pid, ProcInfo::from(&e));
                }
                None
            }
            Record::Stack(st) => {
                let case = self.case(&st.head)?;
                if case.stacks.len() >= STACKS_PER_CASE {
                    case.stacks.pop_front();
                }
                case.stacks.push_back(std::sync::Arc::new(st));
                None
            }
            Record::Signal(mut s) => {
                let case = self.case(&s.head)?;
                s.captured = take_stack(case, &s.head);
                // The first fatal signal is the cause; later ones are the way down.
                if case.signal.is_none() {
                    case.signal = Some(s);
                }
                None
            }
            Record::Oom(o) => {
                let h = o.head.clone();
                if let Some(case) = self.case(&h) {
                    case.oom = Some(o);
                }
                None
            }
            Record::Go(mut g) => {
                let case = self.case(&g.head)?;
                g.captured = take_stack(case, &g.head);
                // fatalpanic can be followed by a throw (a panic while printing): the first
                // fatal path is the cause.
                if case.go.is_none() {
                    case.go = Some(g);
                }
                None
            }
            Record::GoOutput(o) => {
                let cap = self.output_cap;
                let case = self.case(&o.head)?;
                case.output.push(&o.data, cap);
                case.output.cut |= o.cut;
                None
            }
            Record::LastWords(w) => {
                let h = w.head.clone();
                self.case(&h)?.last_words = Some(w);
                None
            }
            Record::Exit(x) => self.close(x, is_go),
        }
    }

    fn case(&mut self, h: &Head) -> Option<&mut Case> {
        if self.closed.contains(&(h.pid, h.start_ns)) {
            return None;
        }
        let case = self.cases.entry(h.pid).or_default();
        if case.opened_ns == 0
            || (h.start_ns != 0 && case.start_ns != 0 && case.start_ns != h.start_ns)
        {
            *case = Case {
                hold: hold_for(&self.procs, h.pid, self.pos, h.ktime_ns),
                start_ns: h.start_ns,
                opened_ns: h.ktime_ns,
                ..Default::default()
            };
        }
        case.last_ns = case.last_ns.max(h.ktime_ns);
        Some(case)
    }

    fn close(&mut self, x: Exit, is_go: &dyn Fn(FileId) -> bool) -> Option<Crash> {
        let key = (x.head.pid, x.head.start_ns);
        if !self.closed.insert(key) {
            return None;
        }
        self.closed_order.push_back(key);
        if self.closed_order.len() > CLOSED_KEEP {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
        let case = self
            .cases
            .remove(&x.head.pid)
            .filter(|c| c.start_ns == 0 || x.head.start_ns == 0 || c.start_ns == x.head.start_ns)
            .unwrap_or_else(|| Case {
                hold: hold_for(&self.procs, x.head.pid, self.pos, x.head.ktime_ns),
                ..Case::default()
            });
        let proc = self
            .procs
            .remove(&x.head.pid)
            .or_else(|| self.inherited(&x.head));
        let term_sig = (x.status & 0x7f) as i32;
        let code = (x.status >> 8) & 0xff;
        // Asked only for a handled fault: most exits have none, and need no lookup.
        let signal = case.signal.filter(|s| {
            if term_sig != 0 {
                // A fault handled earlier explains a crash by signal (a JVM's fatal error
                // ends in abort()), not a kill someone asked for (the JVM's null checks fault
                // on purpose).
                return !s.handled || s.sig == term_sig || policy::crash_signal(term_sig);
            }
            !s.handled
                || (code == 2 && proc.as_ref().and_then(|p| p.file).is_some_and(is_go))
                || output_names_signal(&case.output, s.sig)
        });
        // Only a process that died abnormally has last words sent.
        let error = case
            .last_words
            .as_ref()
            .and_then(|w| crate::read::parse::recognise(&String::from_utf8_lossy(&w.text)));
        // Its runtime's words explain an exit only with that runtime's code for them.
        let announced = error
            .as_ref()
            .filter(|d| term_sig == 0 && code != 0 && d.explains_exit(code));
        let dump = runtime_signal_crash(&case.output);
        let kind = if case.oom.is_some() {
            Kind::OomKill
        } else if let Some(g) = &case.go {
            match g.what {
                GoWhat::Panic => Kind::GoPanic,
                GoWhat::Fatal => Kind::GoFatal,
            }
        } else if let Some(line) = &dump {
            // Go's signal handler ended the program itself: a fault in cgo code is a crash,
            // a SIGQUIT's goroutine dump was asked for.
            if policy::asked_dump(line) {
                Kind::Termination
            } else {
                Kind::GoFatal
            }
        } else if term_sig != 0 {
            let delivered = signal.as_ref().filter(|s| s.sig == term_sig);
            if policy::is_crash_signal(term_sig, delivered.map(|s| s.code)) {
                Kind::Signal
            } else {
                Kind::Termination
            }
        } else if signal.is_some() {
            // A fault it handled, and the death says so.
            Kind::Signal
        } else if let Some(d) = announced {
            // A Go binary's first run dies before its uprobes are attached.
            match (d.runtime, d.reason) {
                _ if policy::asked_death(d) => Kind::Termination,
                ("go", "panic") => Kind::GoPanic,
                ("go", _) => Kind::GoFatal,
                _ => Kind::RuntimeError,
            }
        } else if code != 0 && self.report_nonzero_exits {
            Kind::Exit
        } else {
            return None;
        };
        let asked = x
            .asked
            .map(|(sig, at)| (sig, x.head.ktime_ns.saturating_sub(at)));
        Some(Crash {
            kind,
            head: x.head,
            proc,
            signal,
            status: x.status,
            go: case.go,
            output: case.output,
            last_words: case.last_words,
            error,
            hold: case.hold,
            asked,
            oom: case.oom,
        })
    }

    /// A child that forked without exec runs its parent's program.
    fn inherited(&self, h: &Head) -> Option<ProcInfo> {
        self.procs.get(&h.ppid).cloned()
    }

    /// Drops cases that saw no record for `idle_ns` (a fatal-class signal the process
    /// survived) unless the Go runtime is known to be dying (printing a 22-million-frame
    /// stack overflow takes minutes on a slow machine); forgets processes that are gone.
    /// `alive` may answer true when it cannot tell.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64, alive: impl Fn(u32) -> bool) -> usize {
        let before = self.cases.len();
        self.cases.retain(|&pid, c| {
            let idle = now_ns.saturating_sub(c.last_ns) >= idle_ns;
            !idle || (c.go.is_some() && alive(pid))
        });
        self.procs.retain(|&pid, _| alive(pid));
        before - self.cases.len()
    }
}

#[cfg(test)]
mod tests;
