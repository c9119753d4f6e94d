//! One dead process, as the assemble stage closes it and the stages after it read it: its
//! [`Kind`], its records, what its runtime printed ([`Output`]) and what it ran ([`ProcInfo`]).
use std::collections::VecDeque;

use super::{
    death::Death,
    process::{FileId, RootKey},
    record::{Exec, Go, Head, LastWords, Oom, Signal},
};

/// What a process runs, captured at exec, at its first crash sign when its exec was not sent,
/// or by the start-up scan of /proc.
#[derive(Clone, Debug, Default)]
pub struct ProcInfo {
    /// Absolute path of the executable in the process's view; None when it could not be
    /// resolved (a relative execve path is never taken for it).
    pub exe: Option<String>,
    pub args: Vec<String>,
    pub args_truncated: bool,
    pub cgroup: String,
    /// The executable's identity: how binaries are known.
    pub file: Option<FileId>,
    /// Its root directory, when not the agent's (a container).
    pub root: Option<RootKey>,
    /// Where its exec record was in the ring buffer, and when (kernel time); None when it
    /// was not read from there.
    pub exec_at: Option<(u64, u64)>,
}

impl From<&Exec> for ProcInfo {
    fn from(e: &Exec) -> Self {
        ProcInfo {
            exe: e
                .exe
                .clone()
                .or_else(|| Some(e.filename.clone()).filter(|f| f.starts_with('/'))),
            args: e.args.clone(),
            args_truncated: e.args_truncated,
            cgroup: e.cgroup.clone(),
            file: Some(e.file),
            root: e.root,
            exec_at: None,
        }
    }
}

/// A report's `kind`. The one list of kinds: `report --kind` and the crash page's filter
/// take theirs from here ([`Kind::names`]: the kinds a crash history holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Kind {
    Signal,
    OomKill,
    Exit,
    GoPanic,
    GoFatal,
    /// A non-zero exit its runtime announced in its own words (a Python traceback and exit
    /// 1, a Rust panic and exit 101): see the crash's `error`.
    RuntimeError,
    /// Not a crash: a death someone asked for (SIGTERM, SIGINT, SIGKILL, ...; see
    /// `pipeline::assemble::policy`). Counted, reported only when asked for; never stored, so no
    /// filter of the crash history offers it.
    #[value(skip)]
    Termination,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Signal => "signal",
            Kind::OomKill => "oom_kill",
            Kind::Exit => "exit",
            Kind::GoPanic => "go_panic",
            Kind::GoFatal => "go_fatal",
            Kind::RuntimeError => "runtime_error",
            Kind::Termination => "termination",
        }
    }

    /// The kind a report's `kind` names.
    pub fn parse(name: &str) -> Option<Kind> {
        use Kind::*;
        [
            Signal,
            OomKill,
            Exit,
            GoPanic,
            GoFatal,
            RuntimeError,
            Termination,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    /// The names of the kinds a crash history holds (all but `termination`).
    pub fn names() -> Vec<&'static str> {
        use clap::ValueEnum;
        Kind::value_variants().iter().map(|k| k.as_str()).collect()
    }
}

/// One dead process, with everything the kernel told us about its death.
#[derive(Clone, Debug)]
pub struct Crash {
    pub kind: Kind,
    /// The exit record's header (pid, ppid, uid, comm, time of death).
    pub head: Head,
    pub proc: Option<ProcInfo>,
    /// The fatal signal, as delivered to the faulting thread.
    pub signal: Option<Signal>,
    /// wait(2) status.
    pub status: u32,
    /// The Go runtime's first fatal-path record (unrecovered panic or fatal error).
    pub go: Option<Go>,
    /// What the Go runtime printed, capped.
    pub output: Output,
    /// What the process wrote to stderr, when it died abnormally.
    pub last_words: Option<LastWords>,
    /// The runtime's own account of the death, from the last words.
    pub error: Option<Death>,
    /// The ring buffer position of the oldest record this crash was built from (see
    /// `pipeline::assemble::Assembler::push_at`).
    pub hold: u64,
    /// The last stop request (SIGTERM, SIGINT) the process handled itself before it died,
    /// and how long before its death (ns).
    pub asked: Option<(i32, u64)>,
    /// What the kernel said as the OOM killer chose it.
    pub oom: Option<Oom>,
}

/// A process's captured runtime output: the head and the tail of it when it runs long.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub head: Vec<u8>,
    pub tail: VecDeque<u8>,
    /// Bytes seen in all, including what the cap dropped and what the kernel cut.
    pub total: u64,
    /// The kernel cut at least one long write short.
    pub cut: bool,
}

impl Output {
    pub fn push(&mut self, data: &[u8], cap: usize) {
        self.total += data.len() as u64;
        let room = (cap / 2).saturating_sub(self.head.len());
        let (h, t) = data.split_at(room.min(data.len()));
        self.head.extend_from_slice(h);
        self.tail.extend(t);
        let keep = cap - cap / 2;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
    }

    /// Bytes dropped between head and tail.
    pub fn dropped(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }
}

/// How long after a handled stop request (SIGTERM, SIGINT) a SIGKILL counts as the stop's
/// grace period running out rather than a kill of its own.
pub const GRACE_WINDOW_NS: u64 = 600 * 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        use Kind::*;
        for k in [
            Signal,
            OomKill,
            Exit,
            GoPanic,
            GoFatal,
            RuntimeError,
            Termination,
        ] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("segfault"), None);
        assert!(!Kind::names().contains(&"termination"));
    }
}
