//! What counts as a crash (docs/report.md, "What is a crash"), decided once per dead process.
//!
//! A crash is a death the program did not ask for: a signal whose default action dumps core
//! (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS) whoever sent it; an OOM kill;
//! a runtime's own death (a Go panic or fatal error, an uncaught exception its last words
//! explain); a limit's kill (SIGXCPU, SIGXFSZ sent by the kernel). Every other death by a
//! signal — SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGKILL, SIGQUIT, SIGALRM, SIGUSR1/2 — is a
//! *termination*: someone (a process, the terminal, the kernel on a broken pipe) asked for it.
//! Terminations are counted, and reported only when asked for (`--report-terminations`),
//! never clustered, stored or sent to the alerting outputs.
//!
//! SIGQUIT dumps core by default, but a person sends it (Ctrl-\, `kill -QUIT`) to get a dump
//! or a goroutine listing: a termination. A SIGKILL never is a crash unless the OOM killer
//! chose the process (that is an `oom_kill`).
pub use crate::model::crash::GRACE_WINDOW_NS;

/// Signals whose default action dumps core and that nobody sends to stop a program: a death
/// by one is a crash whoever sent it.
pub fn crash_signal(sig: i32) -> bool {
    matches!(sig, 4..=8 | 11 | 31)
}

/// SIGXCPU and SIGXFSZ: the kernel sends them when a process passes its CPU-time or file-size
/// limit (a crash); a process can send them too (a termination).
pub fn limit_signal(sig: i32) -> bool {
    matches!(sig, 24 | 25)
}

/// How a death by signal `sig` is classed, given the `si_code` of its delivery when the
/// kernel sent a record of it (a default-action SIGTERM has none: the kernel turns it into a
/// group kill at once).
pub fn is_crash_signal(sig: i32, code: Option<i32>) -> bool {
    crash_signal(sig)
        || (limit_signal(sig) && code.is_some_and(|c| !crate::model::signals::has_sender(c)))
}

/// Whether the signal a Go runtime's signal dump names (`SIGQUIT: quit`, `SIGSEGV:
/// segmentation violation`) is one a person sends to stop or inspect a program.
pub fn asked_dump(signal_line: &str) -> bool {
    let name = signal_line.split(':').next().unwrap_or_default().trim();
    crate::model::signals::number(name).is_some_and(|n| !crash_signal(n) && !limit_signal(n))
}

/// A runtime's account of a stop someone asked for: a Python `KeyboardInterrupt` (Ctrl-C)
/// printed as an uncaught exception, a Go dump for SIGQUIT.
pub fn asked_death(d: &crate::read::parse::Death) -> bool {
    match d.runtime {
        "python" => d.error_type.as_deref() == Some("KeyboardInterrupt"),
        "go" => d.headline.starts_with("SIG") && asked_dump(&d.headline),
        _ => false,
    }
}

/// Which terminations are reported (`--report-terminations`): none by default, `all`, or a
/// list of signals (`SIGTERM,KILL,15`). A set of signal numbers 1-64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportTerminations(u64);

impl ReportTerminations {
    pub fn wants(self, sig: i32) -> bool {
        (1..=64).contains(&sig) && self.0 & (1 << (sig - 1)) != 0
    }

    /// Parses `none`, `all` or a comma-separated list of signal names or numbers.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" | "" => return Ok(Self(0)),
            "all" => return Ok(Self(u64::MAX)),
            _ => {}
        }
        let mut set = 0u64;
        for part in s.split(',') {
            let n = crate::model::signals::number(part).ok_or_else(|| {
                format!("`{}` is not a signal (give names such as SIGTERM or KILL, numbers, `all` or `none`)", part.trim())
            })?;
            set |= 1 << (n - 1);
        }
        Ok(Self(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_policy() {
        for sig in [4, 5, 6, 7, 8, 11, 31] {
            assert!(is_crash_signal(sig, None), "{sig}");
            assert!(is_crash_signal(sig, Some(0)), "{sig} sent by a process");
        }
        // TERM, INT, HUP, PIPE, KILL, QUIT, ALRM, USR1, USR2: asked for.
        for sig in [15, 2, 1, 13, 9, 3, 14, 10, 12] {
            assert!(!is_crash_signal(sig, None), "{sig}");
            assert!(!is_crash_signal(sig, Some(0x80)), "{sig} from the kernel");
        }
        // A limit: crash from the kernel, not from `kill -XCPU`.
        assert!(is_crash_signal(24, Some(0x80)));
        assert!(is_crash_signal(25, Some(0x80)));
        assert!(!is_crash_signal(24, Some(0)));
        assert!(!is_crash_signal(25, Some(-6)));
        assert!(!is_crash_signal(24, None));
    }

    #[test]
    fn which_terminations_are_reported() {
        let none = ReportTerminations::parse("none").unwrap();
        assert!(!none.wants(15) && !none.wants(9));
        let all = ReportTerminations::parse("all").unwrap();
        assert!(all.wants(15) && all.wants(9) && all.wants(64) && !all.wants(0));
        let some = ReportTerminations::parse("SIGTERM, kill,2").unwrap();
        assert!(some.wants(15) && some.wants(9) && some.wants(2) && !some.wants(13));
        let e = ReportTerminations::parse("TERM,bogus").unwrap_err();
        assert!(e.contains("`bogus`"), "{e}");
    }

    #[test]
    fn go_dumps_for_sigquit_are_asked_for() {
        assert!(asked_dump("SIGQUIT: quit"));
        assert!(!asked_dump("SIGSEGV: segmentation violation"));
        assert!(!asked_dump("SIGABRT: abort"));
        assert!(!asked_dump("not a signal"));
    }
}
