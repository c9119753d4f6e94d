//! Symbolize (the pipeline's second stage, after assemble): turns a dying thread's captured state
//! into frames, each with its module, file offset, function, source file and line.
//!
//! - **Where the frames are** ([`unwind`]): the kernel's frame-pointer walk, and a CFI walk
//!   (framehop) over the stack copy the kernel took at the fatal signal, spliced together.
//! - **What file each frame is in** ([`space`]): the process's mappings when the agent read
//!   them in time, else the loaded-object list the kernel read from its memory at the signal,
//!   so a process reaped before its record is read is named as fully as one that lingers.
//! - **What each frame is** ([`names`]): Go code from the binary's pclntab (function, file,
//!   line; stripped binaries too), everything else through blazesym (ELF symbols, DWARF with
//!   inlined functions, demangled C++ and Rust names, `.gnu_debuglink` into
//!   `/usr/lib/debug/.build-id`, MiniDebugInfo in `.gnu_debugdata` with a liblzma built in).
//! - **Python among the native frames** ([`python`]): a dumped CPython's own frames put
//!   before each eval-loop frame they ran in.
//! - **Each file once** ([`files`]): parsed data keyed by file identity and build id, shared by
//!   all processes, bounded in bytes, least recently used dropped first.
//!
//! No path from another process's view is opened as it stands: files come through the
//! process (`/proc/<pid>/root`, checked against the inode its maps name), through the root of
//! its view held since its exec ([`roots`]), or by identity (the exec's device, inode, change
//! time and size; a build id) — see [`space`].
mod files;
mod maps;
#[cfg(test)]
mod mutations;
mod names;
pub mod python;
mod roots;
mod space;
mod stats;
mod threads;
mod unwind;

pub use crate::model::frame::Frame;
pub use crate::model::process::Maps;
pub use roots::{Roots, ROOTS_MAX};

use crate::model::crash::Crash;
use files::FileCache;
use space::{Exe, Space};
use unwind::{Step, Via};

/// Symbolizer state shared by all crashes: the module file cache.
pub struct Symbolizer {
    files: FileCache,
    stats: stats::Stats,
}

impl Symbolizer {
    pub fn new(cache_bytes: usize) -> Symbolizer {
        Symbolizer {
            files: FileCache::new(cache_bytes),
            stats: stats::Stats::default(),
        }
    }

    /// Per-report symbolization time (cold and warm) and the cache's estimated size.
    pub fn summary(&self) -> String {
        format!(
            "{}; symbol cache {} KiB in {} files",
            self.stats.summary(),
            self.files.used_bytes() / 1024,
            self.files.len()
        )
    }

    /// The crash's stack (see [`Self::stack`]), timed for [`Self::summary`]. `held` hands
    /// out a handle on a file the agent keeps open anyway, by identity, and `root` is the
    /// process's root directory when the agent holds it (see [`space`], [`roots`]).
    pub fn frames(
        &mut self,
        crash: &Crash,
        held: &dyn Fn(crate::read::elf::FileId) -> Option<std::fs::File>,
        root: Option<&std::fs::File>,
    ) -> Vec<Frame> {
        let start = std::time::Instant::now();
        let parsed = self.files.parsed();
        let frames = self.stack(crash, held, root);
        self.stats
            .add(start.elapsed(), self.files.parsed() != parsed);
        frames
    }

    /// The crash's stack: the faulting thread's at the signal, else the Go runtime's at its
    /// fatal path. A SIGABRT after the Go runtime's fatal path (`GOTRACEBACK=crash`) is the
    /// runtime killing itself from its signal handler: the stack where it panicked or threw
    /// says what happened, the one in the handler does not.
    fn stack(
        &mut self,
        crash: &Crash,
        held: &dyn Fn(crate::read::elf::FileId) -> Option<std::fs::File>,
        root: Option<&std::fs::File>,
    ) -> Vec<Frame> {
        let signal = crash
            .signal
            .as_ref()
            .filter(|s| !(crash.go.is_some() && s.sig == crate::model::signals::SIGABRT));
        let exe_path = crash
            .proc
            .as_ref()
            .and_then(|p| p.exe.clone())
            .unwrap_or_default();
        let exe_id = crash.proc.as_ref().and_then(|p| p.file);
        let (fp, maps, captured, start_code, regs, go_caller) = match (signal, &crash.go) {
            (Some(s), _) => (
                &s.stack,
                s.maps.as_deref(),
                s.captured.as_deref(),
                s.start_code,
                regs_of(&s.regs),
                None,
            ),
            (None, Some(g)) => (
                &g.stack,
                g.maps.as_deref(),
                g.captured.as_deref(),
                g.start_code,
                // At the probed function's entry (the walk's first address) with the stack
                // copy's pointer.
                regs_of(&g.regs).or_else(|| {
                    g.captured
                        .as_deref()
                        .zip(g.stack.first())
                        .map(|(st, &ip)| (ip, st.sp, g.bp))
                }),
                Some(g.caller).filter(|&c| c != 0),
            ),
            _ => return Vec::new(),
        };
        let exe = Exe {
            path: &exe_path,
            id: exe_id,
            start_code,
            held,
            root,
        };
        let space = self.space(maps, captured, &exe);
        let cfi = match (captured, regs) {
            (Some(st), Some((ip, sp, bp))) if !st.data.is_empty() => {
                unwind::cfi(&space, st, ip, sp, bp)
            }
            _ => unwind::Walk::default(),
        };
        let mut steps = unwind::merge(cfi, fp);
        // The kernel's frame-pointer walk follows whatever RBP holds (past the root of Go's
        // scheduler stack, say): from a return address a module says is not code, it is junk.
        if let Some(cut) = steps
            .iter()
            .skip(1)
            .position(|s| s.via == Via::Fp && space.is_not_code(s.lookup()))
        {
            steps.truncate(cut + 1);
        }
        // Go's traceback ends at a function nothing called (TOPFRAME); past one that set SP by
        // hand (SPWRITE: mcall, morestack) a frame-pointer chain is whatever the other stack
        // held, unless it lands in code again (systemstack leaves a frame to cross by).
        let placed = |a: u64| space.find(a).is_some() && !space.is_not_code(a);
        if let Some(end) = (1..steps.len()).find(|&i| {
            let s = &steps[i];
            let rule = space.go_rule(s.lookup());
            s.via == Via::Fp
                && rule.is_some_and(|r| {
                    r.top || (r.sp_write && steps.get(i + 1).is_some_and(|n| !placed(n.lookup())))
                })
        }) {
            steps.truncate(end + 1);
        }
        if let Some(caller) = go_caller {
            // At a function's first instruction the frame-pointer walk skips its caller.
            if steps.get(1).is_none_or(|s| s.ip != caller) {
                let at = steps.len().min(1);
                steps.insert(
                    at,
                    Step {
                        ip: caller,
                        is_return: true,
                        via: Via::Go,
                    },
                );
            }
        }
        let mut frames: Vec<Frame> = steps.iter().flat_map(|s| names::name(&space, s)).collect();
        // Say why the kernel's list of loaded objects could not place a frame.
        let why = match captured {
            None if maps.is_none() => Some("no stack record came with the crash"),
            None => None,
            Some(st) if st.modules_unreadable => {
                Some("the process's loaded-object list was unreadable")
            }
            Some(st) if st.modules_truncated => {
                Some("the process's loaded-object list was cut short")
            }
            Some(st) if st.modules_not_taken && maps.is_none() => Some(
                "the process was gone, and Go's fatal-path probes do not read its loaded-object list",
            ),
            Some(_) => None,
        };
        for f in frames.iter_mut().filter(|f| f.module.is_none()) {
            if let (Some(r), Some(why)) = (&mut f.reason, why) {
                r.push_str(&format!("; {why}"));
            }
        }
        frames
    }
}

impl Symbolizer {
    /// Where a process's code was: its mappings as the agent read them, and the kernel's list
    /// of loaded objects (maps read while the process was already tearing down its memory
    /// can be partial: the kernel's list fills what they miss).
    fn space(
        &mut self,
        maps: Option<&Maps>,
        captured: Option<&crate::kernel::decode::Stack>,
        exe: &Exe<'_>,
    ) -> Space {
        let mut space = match maps {
            Some(m) => Space::of_maps(m, &mut self.files),
            None => Space::default(),
        };
        let empty = crate::kernel::decode::Stack::default();
        space.add(Space::of_modules(
            captured.unwrap_or(&empty),
            &mut self.files,
            exe,
        ));
        space
    }
}

/// Where `crashwatch symbolize` looks addresses up.
pub enum Target {
    /// An ELF file opened by the caller, and its path for display: addresses are its own
    /// (link-time) addresses.
    File(std::fs::File, String),
    /// A running process: addresses are where its mappings put them.
    Pid(u32),
}

impl Symbolizer {
    /// Names each address as a report names a frame there: one list per address, more
    /// than one frame where calls were inlined. Return addresses are looked up at the call
    /// before them, as a report does for every frame but the first.
    pub fn lookup(
        &mut self,
        target: Target,
        addrs: &[u64],
        are_returns: bool,
    ) -> anyhow::Result<Vec<Vec<Frame>>> {
        let space = match target {
            Target::File(file, path) => {
                let m = self
                    .files
                    .load(file)
                    .map_err(|why| anyhow::anyhow!("{path}: {why}"))?;
                Space {
                    placed: vec![space::Placed {
                        range: m.span.clone(),
                        bias: 0,
                        path,
                        file: Ok(m),
                    }],
                }
            }
            Target::Pid(pid) => {
                let maps = Maps::capture(pid).ok_or_else(|| {
                    anyhow::anyhow!("process {pid}: gone, or its maps are unreadable")
                })?;
                Space::of_maps(&maps, &mut self.files)
            }
        };
        Ok(addrs
            .iter()
            .map(|&ip| {
                let step = Step {
                    ip,
                    is_return: are_returns,
                    via: Via::Fp,
                };
                names::name(&space, &step)
            })
            .collect())
    }
}

/// (ip, sp, bp) from the raw x86_64 `pt_regs` words (r15 … ss: bp is 4, ip 16, sp 19).
fn regs_of(regs: &[u64]) -> Option<(u64, u64, u64)> {
    Some((*regs.get(16)?, *regs.get(19)?, *regs.get(4)?))
}
