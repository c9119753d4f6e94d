//! Names for signal numbers and `si_code` values (x86_64 Linux, from the uapi headers).

pub const SIGABRT: i32 = 6;

pub fn name(sig: i32) -> String {
    match sig {
        1..=31 => NAMES[sig as usize].to_string(),
        34..=64 => format!("SIGRTMIN+{}", sig - 34),
        _ => format!("SIG{sig}"),
    }
}

/// The number of signal `name` (`SIGTERM`, `TERM`, `15`); None for a name no signal has.
pub fn number(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Some(k) = full.strip_prefix("SIGRTMIN+") {
        return k
            .parse::<i32>()
            .ok()
            .filter(|k| (0..=30).contains(k))
            .map(|k| 34 + k);
    }
    NAMES
        .iter()
        .position(|n| !n.is_empty() && *n == full)
        .map(|i| i as i32)
}

const NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// The symbolic name of `code` for signal `sig` (see sigaction(2)).
pub fn code_name(sig: i32, code: i32) -> Option<&'static str> {
    // Codes <= 0 are the sender's kind and mean the same for every signal.
    let generic = match code {
        0 => Some("SI_USER"),
        0x80 => Some("SI_KERNEL"),
        -1 => Some("SI_QUEUE"),
        -2 => Some("SI_TIMER"),
        -3 => Some("SI_MESGQ"),
        -4 => Some("SI_ASYNCIO"),
        -5 => Some("SI_SIGIO"),
        -6 => Some("SI_TKILL"),
        _ => None,
    };
    if generic.is_some() {
        return generic;
    }
    let table: &[&str] = match sig {
        4 => &[
            "ILL_ILLOPC",
            "ILL_ILLOPN",
            "ILL_ILLADR",
            "ILL_ILLTRP",
            "ILL_PRVOPC",
            "ILL_PRVREG",
            "ILL_COPROC",
            "ILL_BADSTK",
            "ILL_BADIADDR",
        ],
        5 => &[
            "TRAP_BRKPT",
            "TRAP_TRACE",
            "TRAP_BRANCH",
            "TRAP_HWBKPT",
            "TRAP_UNK",
            "TRAP_PERF",
        ],
        7 => &[
            "BUS_ADRALN",
            "BUS_ADRERR",
            "BUS_OBJERR",
            "BUS_MCEERR_AR",
            "BUS_MCEERR_AO",
        ],
        8 => &[
            "FPE_INTDIV",
            "FPE_INTOVF",
            "FPE_FLTDIV",
            "FPE_FLTOVF",
            "FPE_FLTUND",
            "FPE_FLTRES",
            "FPE_FLTINV",
            "FPE_FLTSUB",
            "FPE_FLTUNK",
            "FPE_CONDTRAP",
        ],
        11 => &[
            "SEGV_MAPERR",
            "SEGV_ACCERR",
            "SEGV_BNDERR",
            "SEGV_PKUERR",
            "SEGV_ACCADI",
            "SEGV_ADIDERR",
            "SEGV_ADIPERR",
            "SEGV_MTEAERR",
            "SEGV_MTESERR",
            "SEGV_CPERR",
        ],
        17 => &[
            "CLD_EXITED",
            "CLD_KILLED",
            "CLD_DUMPED",
            "CLD_TRAPPED",
            "CLD_STOPPED",
            "CLD_CONTINUED",
        ],
        31 => &["SYS_SECCOMP", "SYS_USER_DISPATCH"],
        _ => &[],
    };
    usize::try_from(code)
        .ok()
        .and_then(|c| c.checked_sub(1))
        .and_then(|i| table.get(i))
        .copied()
}

/// Signals whose `si_addr` is the faulting address, when the kernel raised them for a fault
/// (`si_code` > 0; SI_KERNEL carries no address).
pub fn has_fault_addr(sig: i32, code: i32) -> bool {
    matches!(sig, 4 | 7 | 8 | 11) && code > 0 && code != 0x80
}

/// `si_code`s of signals a process sent, whose siginfo carries the sender's pid and uid:
/// SI_USER (`kill`), SI_QUEUE (`sigqueue`), SI_MESGQ, SI_TKILL (`tkill`, `tgkill`).
pub fn has_sender(code: i32) -> bool {
    matches!(code, 0 | -1 | -3 | -6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes() {
        assert_eq!(name(11), "SIGSEGV");
        assert_eq!(name(36), "SIGRTMIN+2");
        assert_eq!(number("SIGTERM"), Some(15));
        assert_eq!(number("term"), Some(15));
        assert_eq!(number("9"), Some(9));
        assert_eq!(number("SIGRTMIN+2"), Some(36));
        assert_eq!(number("SIGNOPE"), None);
        assert_eq!(number(""), None);
        assert_eq!(code_name(11, 1), Some("SEGV_MAPERR"));
        assert_eq!(code_name(8, 1), Some("FPE_INTDIV"));
        assert_eq!(code_name(7, 2), Some("BUS_ADRERR"));
        assert_eq!(code_name(6, -6), Some("SI_TKILL"));
        assert_eq!(code_name(11, 99), None);
        assert!(has_fault_addr(11, 1) && !has_fault_addr(11, 0) && !has_fault_addr(11, 0x80));
        assert!(has_sender(0) && has_sender(-6) && !has_sender(1) && !has_sender(-2));
    }
}
