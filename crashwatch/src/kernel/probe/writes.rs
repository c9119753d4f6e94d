//! Attaches the last-words programs (the eBPF crate's `writes`): fentry on `ksys_write` and
//! `do_writev` where the kernel allows it, else the `syscalls:sys_enter_write`/`writev`
//! tracepoints, which cost every task on the host a slower syscall path, so the agent says
//! which one it got and why.
use anyhow::{Context, Result};
use aya::{
    programs::{FEntry, Program, TracePoint},
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

/// The four programs, taken from the object for [`load`] on another thread.
pub(super) struct Programs<'a> {
    fentry: [&'a mut Program; 2],
    tracepoint: [&'a mut Program; 2],
}

/// Takes the programs out of the object's table.
pub(super) fn programs<'a>(
    take: &mut impl FnMut(&str) -> Result<&'a mut Program>,
) -> Result<Programs<'a>> {
    Ok(Programs {
        fentry: [take(FENTRY[0].0)?, take(FENTRY[1].0)?],
        tracepoint: [take(TRACEPOINTS[0].0)?, take(TRACEPOINTS[1].0)?],
    })
}

/// Which pair loaded (the verifier's part, done on a thread of its own), or why none.
pub(super) enum Loaded {
    Fentry,
    /// Tracepoints, and why not fentry (when it was tried).
    Tracepoint(Option<String>),
    Off,
    Unavailable(String),
}

/// Loads by `mode`: fentry first where asked, the tracepoints where it is refused.
pub(super) fn load(mut p: Programs<'_>, btf: &Btf, mode: Mode) -> Loaded {
    let fentry_refused = match mode {
        Mode::Off => return Loaded::Off,
        Mode::Tracepoint => None,
        Mode::Auto | Mode::Fentry => match load_fentry(&mut p.fentry, btf) {
            Ok(()) => return Loaded::Fentry,
            Err(e) if mode == Mode::Fentry => return Loaded::Unavailable(terse(&format!("{e:#}"))),
            Err(e) => Some(terse(&format!("{e:#}"))),
        },
    };
    match load_tracepoints(&mut p.tracepoint) {
        Ok(()) => Loaded::Tracepoint(fentry_refused),
        Err(e) => Loaded::Unavailable(match fentry_refused {
            Some(f) => format!("fentry: {f}; tracepoints: {e:#}"),
            None => format!("{e:#}"),
        }),
    }
}

fn load_fentry(p: &mut [&mut Program; 2], btf: &Btf) -> Result<()> {
    for (i, (prog, func)) in FENTRY.into_iter().enumerate() {
        let r = <&mut FEntry>::try_from(&mut *p[i])
            .map_err(anyhow::Error::from)
            .and_then(|f| f.load(func, btf).map_err(super::verify::refused))
            .with_context(|| format!("loading {prog} for {func}"));
        if let Err(e) = r {
            // Half of the pair would see only `write`s: take both out.
            for done in p.iter_mut().take(i) {
                if let Ok(f) = <&mut FEntry>::try_from(&mut **done) {
                    let _ = f.unload();
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

fn load_tracepoints(p: &mut [&mut Program; 2]) -> Result<()> {
    for (i, (prog, _)) in TRACEPOINTS.into_iter().enumerate() {
        load_tracepoint(&mut *p[i], prog)?;
    }
    Ok(())
}

fn load_tracepoint(p: &mut Program, prog: &str) -> Result<()> {
    let t: &mut TracePoint = p.try_into()?;
    t.load()
        .map_err(super::verify::refused)
        .with_context(|| format!("loading {prog}"))
}

/// Attaches what [`load`] loaded; the names of the programs attached go to `names`. A
/// fentry pair the kernel loads but will not attach falls back to the tracepoints (`Auto`).
pub(super) fn attach(
    ebpf: &mut Ebpf,
    loaded: Loaded,
    mode: Mode,
    names: &mut Vec<&'static str>,
    pins: Option<&super::pin::Pins>,
) -> Attached {
    let why_not_fentry = match loaded {
        Loaded::Off => return Attached::Off,
        Loaded::Unavailable(why) => return Attached::Unavailable(why),
        Loaded::Tracepoint(why) => why,
        Loaded::Fentry => match attach_fentry(ebpf, pins) {
            Ok(()) => {
                names.extend(FENTRY.map(|p| p.0));
                return Attached::Fentry;
            }
            Err(e) => {
                for (prog, _) in FENTRY {
                    if let Some(Ok(f)) = ebpf.program_mut(prog).map(<&mut FEntry>::try_from) {
                        let _ = f.unload();
                    }
                }
                let why = terse(&format!("{e:#}"));
                if mode == Mode::Fentry {
                    return Attached::Unavailable(why);
                }
                let loaded = TRACEPOINTS.into_iter().try_for_each(|(prog, _)| {
                    let p = ebpf
                        .program_mut(prog)
                        .with_context(|| format!("program {prog} missing from the object"))?;
                    load_tracepoint(p, prog)
                });
                if let Err(e) = loaded {
                    return Attached::Unavailable(format!("fentry: {why}; tracepoints: {e:#}"));
                }
                Some(why)
            }
        },
    };
    match attach_tracepoints(ebpf, pins) {
        Ok(()) => {
            names.extend(TRACEPOINTS.map(|p| p.0));
            Attached::Tracepoint(why_not_fentry)
        }
        Err(e) => Attached::Unavailable(match why_not_fentry {
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

fn attach_fentry(ebpf: &mut Ebpf, pins: Option<&super::pin::Pins>) -> Result<()> {
    let mut links = Vec::new();
    for (prog, func) in FENTRY {
        let p: &mut FEntry = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the object"))?
            .try_into()?;
        // A failure drops the links made so far with the unload that follows.
        let id = p
            .attach()
            .with_context(|| format!("attaching {prog} to {func}"))?;
        links.push((prog, id));
    }
    // Pinned once both are in, so taking the pair out never leaves a pinned half.
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

fn attach_tracepoints(ebpf: &mut Ebpf, pins: Option<&super::pin::Pins>) -> Result<()> {
    for (prog, tp) in TRACEPOINTS {
        let p: &mut TracePoint = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the object"))?
            .try_into()?;
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
