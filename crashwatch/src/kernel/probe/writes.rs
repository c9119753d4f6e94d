//! Attaches the last-words programs (the eBPF crate's `writes`): fentry on `ksys_write` and
//! `do_writev` where the kernel allows it, else the `syscalls:sys_enter_write`/`writev`
//! tracepoints, which cost every task on the host a slower syscall path, so the agent says
//! which one it got and why.
use anyhow::{Context, Result};
use aya::{
    programs::{FEntry, TracePoint},
    Btf, Ebpf,
};

/// How processes' writes to stderr are watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// fentry where the kernel allows it, else the syscall tracepoints.
    Auto,
    /// fentry only: no last words where the kernel refuses it.
    Fentry,
    /// The syscall tracepoints (slower for every syscall of every task).
    Tracepoint,
    /// No last words.
    Off,
}

/// What was attached, for the start-up line and `check`.
#[derive(Clone, Debug)]
pub enum Attached {
    Fentry,
    /// Tracepoints, and why not fentry (when it was tried).
    Tracepoint(Option<String>),
    Off,
    /// Neither could be attached.
    Unavailable(String),
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attached::Fentry => write!(f, "fentry on ksys_write and do_writev"),
            Attached::Tracepoint(None) => write!(
                f,
                "syscalls:sys_enter_write/writev tracepoints (every syscall on the host takes the slower path)"
            ),
            Attached::Tracepoint(Some(why)) => write!(
                f,
                "syscalls:sys_enter_write/writev tracepoints, because the kernel refused fentry ({why}): every syscall on the host takes the slower path; --last-words off turns them off"
            ),
            Attached::Off => write!(f, "off"),
            Attached::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

impl Attached {
    /// A few words for the agent's ready line (the whole story is its Display, at debug
    /// level and in `crashwatch check`).
    pub fn short(&self) -> &'static str {
        match self {
            Attached::Fentry => "last words via fentry",
            Attached::Tracepoint(_) => "last words via syscall tracepoints",
            Attached::Off => "last words off",
            Attached::Unavailable(_) => "no last words",
        }
    }
}

const FENTRY: [(&str, &str); 2] = [
    ("write_fentry", "ksys_write"),
    ("writev_fentry", "do_writev"),
];
const TRACEPOINTS: [(&str, &str); 2] = [
    ("write_tp", "sys_enter_write"),
    ("writev_tp", "sys_enter_writev"),
];

/// Attaches by `mode`; the names of the programs attached go to `names`.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    mode: Mode,
    names: &mut Vec<&'static str>,
    pins: Option<&super::pin::Pins>,
) -> Attached {
    let fentry_refused = match mode {
        Mode::Off => return Attached::Off,
        Mode::Tracepoint => None,
        Mode::Auto | Mode::Fentry => match fentry(ebpf, btf, pins) {
            Ok(()) => {
                names.extend(FENTRY.map(|p| p.0));
                return Attached::Fentry;
            }
            Err(e) if mode == Mode::Fentry => {
                return Attached::Unavailable(terse(&format!("{e:#}")))
            }
            Err(e) => Some(terse(&format!("{e:#}"))),
        },
    };
    match tracepoints(ebpf, pins) {
        Ok(()) => {
            names.extend(TRACEPOINTS.map(|p| p.0));
            Attached::Tracepoint(fentry_refused)
        }
        Err(e) => Attached::Unavailable(match fentry_refused {
            Some(f) => format!("fentry: {f}; tracepoints: {e:#}"),
            None => format!("{e:#}"),
        }),
    }
}

/// An error without the empty verifier log a refusal before verification leaves.
fn terse(e: &str) -> String {
    e.trim_end()
        .trim_end_matches("Verifier output:")
        .trim_end()
        .trim_end_matches('.')
        .to_string()
}

fn fentry(ebpf: &mut Ebpf, btf: &Btf, pins: Option<&super::pin::Pins>) -> Result<()> {
    let mut done = Vec::new();
    let mut links = Vec::new();
    for (prog, func) in FENTRY {
        let r = (|| -> Result<aya::programs::fentry::FEntryLinkId> {
            let p: &mut FEntry = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the object"))?
                .try_into()?;
            p.load(func, btf)
                .map_err(|e| anyhow::anyhow!("{}", super::short_log(&format!("{e:#}"))))
                .with_context(|| format!("loading {prog} for {func}"))?;
            p.attach()
                .with_context(|| format!("attaching {prog} to {func}"))
        })();
        if let Err(e) = r {
            // Half of the pair would see only `write`s: take both out.
            for p in done {
                if let Some(p) = ebpf
                    .program_mut(p)
                    .and_then(|p| <&mut FEntry>::try_from(p).ok())
                {
                    let _ = p.unload();
                }
            }
            return Err(e);
        }
        if let Ok(id) = r {
            links.push((prog, id));
        }
        done.push(prog);
    }
    // Pinned once both are in, so taking the pair out above never leaves a pinned half.
    if let Some(pins) = pins {
        for (prog, id) in links {
            let p: &mut FEntry = ebpf
                .program_mut(prog)
                .context("fentry program")?
                .try_into()?;
            pins.pin_link(p.take_link(id)?.into(), prog)?;
        }
    }
    Ok(())
}

fn tracepoints(ebpf: &mut Ebpf, pins: Option<&super::pin::Pins>) -> Result<()> {
    for (prog, tp) in TRACEPOINTS {
        let p: &mut TracePoint = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the object"))?
            .try_into()?;
        p.load()
            .map_err(|e| anyhow::anyhow!("{}", super::short_log(&format!("{e:#}"))))
            .with_context(|| format!("loading {prog}"))?;
        let id = p
            .attach("syscalls", tp)
            .with_context(|| format!("attaching {prog} to syscalls:{tp}"))?;
        if let Some(pins) = pins {
            let link = aya::programs::links::FdLink::try_from(p.take_link(id)?).context(
                "a tracepoint link that cannot be pinned (Linux 5.15+ makes them bpf links)",
            )?;
            pins.pin_link(link, prog)?;
        }
    }
    Ok(())
}
