//! Probe (the kernel layer, under the pipeline): loads crashwatch's eBPF programs into the running
//! kernel, attaches them, and exposes the ring buffer and the loss counters (failed ring buffer
//! writes, recursion misses).
//!
//! Each tracepoint's program is attached as three copies, in order (see the eBPF crate's docs):
//! the kernel's recursion guard skips a program on a CPU where a preempted task is inside it,
//! and a later copy redoes what an earlier one was kept from. A run skipped by the first copy
//! is a lost event only if no later copy redid it. Before Linux 7.0 tracepoint programs run
//! with preemption off and these tracepoints fire only in task context, so nothing can find a
//! program busy: the first copy goes in alone (`--guard-copies` overrides).
//!
//! Go binaries get the one Go uprobe program at each probed runtime function, told apart by the
//! attach cookie: as one uprobe_multi link per binary where the kernel has them (6.6+, see
//! [`uprobe_multi`]), else as one perf-event uprobe per function through aya.
pub mod btf;
mod failpoints;
pub mod go;
pub mod klog;
pub mod known;
mod losses;
pub mod pin;
pub mod ring;
mod tracepoints;
mod uprobe_multi;
mod verify;
pub mod writes;

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        BtfTracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use crashwatch_common::COPIES;
pub use losses::{LossReader, Losses};
use tracepoints::{tracepoint_programs, Role};

use crate::read::gobin::GoProbe;

/// The uprobe program attached to each Go binary as it is found.
const GO_PROGRAM: &str = "go_probe";

/// What the programs need from the agent's settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Kernel ring buffer size in bytes.
    pub ring_bytes: u32,
    /// A handled fault is sent with a death that follows within this window.
    pub pending_window_ns: u64,
    /// Bytes of a process's argument list read.
    pub args_max: u32,
    /// Bytes of user stack copied at a fatal signal or Go fatal path.
    pub stack_copy: u32,
    /// How writes to stderr are watched for last words.
    pub last_words: writes::Mode,
    /// Send every exec, not only those of files the agent has not classified.
    pub exec_all: bool,
    /// Copies of each tracepoint program (1 or 3); None: [`default_guard_copies`].
    pub guard_copies: Option<u32>,
}

/// Three copies where tracepoint programs are preemptible (Linux 7.0+), else one. A
/// release this cannot read gets three: the safe side.
pub fn default_guard_copies(release: &str) -> u32 {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    match (
        parts.next().and_then(|m| m.parse::<u32>().ok()),
        parts.next().and_then(|m| m.parse::<u32>().ok()),
    ) {
        (Some(major), Some(_)) if major < 7 => 1,
        _ => COPIES,
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// One Go binary's probes in the kernel; they go away with [`Probe::detach_go`].
pub enum GoLinks {
    /// One uprobe_multi link: closing it removes every probe.
    Multi(OwnedFd),
    /// aya's perf-event links, one per probe.
    Perf(Vec<UProbeLinkId>),
}

/// The compiled programs, built by build.rs through aya-build.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/crashwatch"));

pub struct Probe {
    ebpf: Ebpf,
    /// Names of the loaded programs.
    attached: Vec<&'static str>,
    pub layout: btf::KernelLayout,
    /// The Go program loaded for uprobe_multi, or why it could not be.
    multi: std::result::Result<uprobe_multi::MultiProgram, String>,
    /// A uprobe_multi link was made: later refusals are about the binary, not the kernel.
    multi_worked: bool,
    /// How last words are captured here.
    pub last_words: writes::Attached,
    /// The pinned state this agent's programs live in, unless unpinned.
    pub pins: Option<pin::Pins>,
    /// The programs' own diagnostics, when the agent logs at debug.
    pub klog: Option<klog::KernelLog>,
}

impl Probe {
    /// Loads and attaches the programs; with `pin_dir`, into the state pinned there (adopting
    /// a previous agent's, see [`pin`]).
    pub fn load(settings: Settings, pin_dir: Option<&std::path::Path>) -> Result<Probe> {
        raise_memlock();
        raise_nofile();
        let t0 = std::time::Instant::now();
        // The two readings of the kernel's BTF (our layouts, aya's relocations) side by side.
        let (layout, kernel_btf) = std::thread::scope(|s| {
            let aya_btf = s.spawn(aya::Btf::from_sys_fs);
            let layout = btf::load(
                settings.pending_window_ns,
                settings.args_max,
                settings.stack_copy,
            );
            let aya_btf = aya_btf
                .join()
                .unwrap_or(Err(aya::BtfError::InvalidHeader))
                .context("reading kernel BTF");
            (layout, aya_btf)
        });
        let (mut layout, kernel_btf) = (layout?, kernel_btf?);
        let read_btf = t0.elapsed();
        layout.config.exec_all = settings.exec_all as u32;
        let guard_copies = settings
            .guard_copies
            .unwrap_or_else(|| default_guard_copies(&kernel_release()))
            .clamp(1, COPIES);
        layout.config.guard_copies = guard_copies;
        failpoints::apply(&mut layout.config);
        let pins = match pin_dir {
            None => {
                if std::path::Path::new(pin::DEFAULT_DIR).exists() {
                    tracing::warn!(
                        "programs pinned by an earlier agent under {} are still attached and \
                         recording (for nobody, with --no-pin): `crashwatch uninstall-bpf` \
                         removes them",
                        pin::DEFAULT_DIR
                    );
                }
                None
            }
            Some(dir) => match pin::layout(PROGRAMS).and_then(|l| pin::Pins::prepare(dir, l)) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(
                        "running with less: kernel state not pinned ({e:#}): crashes while no \
                         agent runs are not recorded"
                    );
                    None
                }
            },
        };
        layout.config.generation = pins.as_ref().map_or(0, |p| p.generation);
        let log_level = klog::level();
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&kernel_btf))
            .override_global("CONFIG", &layout.config, true)
            .override_global(klog::LEVEL_GLOBAL, &log_level, false)
            .map_max_entries("EVENTS", settings.ring_bytes);
        if let Some(p) = &pins {
            p.apply(&mut loader);
        }
        let mut ebpf = loader
            .load(PROGRAMS)
            .context("loading the eBPF programs into the kernel")?;
        let klog = klog::start(&mut ebpf);
        let tracepoints: Vec<_> = tracepoint_programs(guard_copies)
            .into_iter()
            .filter(|t| t.group_dead.is_none_or(|g| g == layout.exit_has_group_dead))
            .map(|t| (t.name, t.tracepoint))
            .collect();
        let plan = verify::Plan {
            tracepoints,
            last_words: settings.last_words,
            go: GO_PROGRAM,
            multi: layout
                .has_uprobe_multi
                .then(|| (PROGRAMS, uprobe_multi::map_fds(&ebpf))),
        };
        let loaded = verify::load(&mut ebpf, &kernel_btf, plan)?;
        let verified = t0.elapsed();
        let mut attached = Vec::new();
        for (prog, tp, r) in loaded.tracepoints {
            r.with_context(|| format!("the kernel refused {prog} for tracepoint {tp}"))?;
            let p: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the object"))?
                .try_into()?;
            let id = p
                .attach()
                .with_context(|| format!("attaching {prog} to tracepoint {tp}"))?;
            if let Some(pins) = &pins {
                pins.pin_link(p.take_link(id)?.into(), prog)?;
            }
            attached.push(prog);
        }
        let last_words = writes::attach(
            &mut ebpf,
            loaded.last_words,
            settings.last_words,
            &mut attached,
            pins.as_ref(),
        );
        // With uprobe_multi the aya uprobe is loaded only if a binary needs it after all
        // ([`Probe::attach_go`]).
        if let Some(r) = loaded.go {
            r.with_context(|| format!("the kernel refused {GO_PROGRAM}"))?;
        }
        attached.push(GO_PROGRAM);
        let multi = match loaded.multi {
            Some(r) => r.map_err(|e| format!("{e:#}")),
            None => Err("the kernel has no uprobe_multi links (6.6+)".into()),
        };
        tracing::debug!(
            "start-up: kernel BTF read in {} ms, programs verified by {} ms (one thread each), attached by {} ms",
            read_btf.as_millis(),
            verified.as_millis(),
            t0.elapsed().as_millis()
        );
        let mut pins = pins;
        if let Some(p) = &mut pins {
            p.activate(&mut ebpf)
                .context("switching to this agent's programs")?;
        }
        // From now on every exit runs this load's programs: the free hook may count an exit
        // with no note as skipped only for tasks started after this (crashwatch-ebpf's
        // `copies`).
        let mut since: aya::maps::Array<&mut aya::maps::MapData, u64> = aya::maps::Array::try_from(
            ebpf.map_mut("SINCE")
                .context("map SINCE missing from the object")?,
        )?;
        since.set(0, crate::model::clock::monotonic_ns(), 0)?;
        Ok(Probe {
            ebpf,
            attached,
            layout,
            multi,
            multi_worked: false,
            last_words,
            pins,
            klog,
        })
    }

    /// The Go probes go in as uprobe_multi links.
    pub fn has_uprobe_multi(&self) -> bool {
        self.multi.is_ok()
    }

    /// How Go binaries are probed here, for the start-up line.
    pub fn go_attach_mode(&self) -> String {
        match &self.multi {
            Ok(_) => "one uprobe_multi link per binary".into(),
            Err(e) => format!("one perf-event uprobe per function (no uprobe_multi: {e})"),
        }
    }

    /// The ring buffer the programs write to; call once.
    pub fn take_events(&mut self) -> Result<ring::Ring> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("map EVENTS missing or already taken")?;
        ring::Ring::new(map)
    }

    /// The known-files map the agent marks classified executables in; call once.
    pub fn take_known(&mut self) -> Result<known::KnownFiles> {
        known::KnownFiles::new(
            self.ebpf
                .take_map("KNOWN")
                .context("map KNOWN missing or already taken")?,
        )
    }

    /// The loss counters, readable from elsewhere; call once.
    pub fn take_losses(&mut self) -> Result<LossReader> {
        let lost = PerCpuArray::try_from(
            self.ebpf
                .take_map("LOST")
                .context("map LOST missing or already taken")?,
        )?;
        let first_later = PerCpuArray::try_from(
            self.ebpf
                .take_map("FIRST_LATER")
                .context("map FIRST_LATER missing or already taken")?,
        )?;
        let unnoted = PerCpuArray::try_from(
            self.ebpf
                .take_map("UNNOTED")
                .context("map UNNOTED missing or already taken")?,
        )?;
        let at_free = PerCpuArray::try_from(
            self.ebpf
                .take_map("AT_FREE")
                .context("map AT_FREE missing or already taken")?,
        )?;
        let mut programs = Vec::new();
        for name in &self.attached {
            if let Some(Ok(fd)) = self.ebpf.program(name).map(|p| p.fd()) {
                programs.push((*name, fd.as_fd().try_clone_to_owned()?));
            }
        }
        Ok(LossReader {
            lost,
            first_later,
            unnoted,
            at_free,
            programs,
            readings: Default::default(),
            said: 0,
        })
    }

    pub fn program_names(&self) -> &[&'static str] {
        &self.attached
    }

    /// Attaches the Go runtime probes to one binary (`target` is a path the kernel can open
    /// now, e.g. `/proc/self/fd/N`).
    /// `key`: the binary's (device, inode), naming its pinned link.
    pub fn attach_go(
        &mut self,
        target: &std::path::Path,
        probes: &[GoProbe],
        key: (u64, u64),
    ) -> Result<GoLinks> {
        if let Ok(m) = &self.multi {
            let points: Vec<(u64, u64)> = probes.iter().map(|p| (p.offset, p.cookie)).collect();
            match m.attach(target, &points) {
                Ok(fd) => {
                    self.multi_worked = true;
                    if let Some(pins) = &self.pins {
                        // Unpinned, the probes still work; they just end with this agent.
                        if let Err(e) = pins.pin_go(fd.as_fd(), key) {
                            tracing::warn!("{e:#}: this binary's probes end with this agent");
                        }
                    }
                    return Ok(GoLinks::Multi(fd));
                }
                // The kernel does not know the link type after all: perf events from now on.
                Err(e)
                    if !self.multi_worked
                        && e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                            matches!(io.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
                        }) =>
                {
                    tracing::warn!(
                        "uprobe_multi refused ({e:#}): attaching Go probes as perf events"
                    );
                    self.multi = Err(format!("{e:#}"));
                }
                Err(e) => return Err(e),
            }
        }
        let program = self
            .ebpf
            .program_mut(GO_PROGRAM)
            .context("uprobe program missing")?;
        if program.fd().is_err() {
            verify::load_uprobe(program)
                .with_context(|| format!("the kernel refused {GO_PROGRAM}"))?;
        }
        let p: &mut UProbe = program.try_into()?;
        let mut links = Vec::new();
        for g in probes {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(g.offset),
                cookie: Some(g.cookie),
            };
            match p.attach(point, target, UProbeScope::AllProcesses) {
                Ok(id) => links.push(id),
                Err(e) => {
                    for id in links {
                        let _ = p.detach(id);
                    }
                    return Err(e).with_context(|| {
                        format!(
                            "attaching to {} at {:#x} in {}",
                            g.func,
                            g.offset,
                            target.display()
                        )
                    });
                }
            }
        }
        Ok(GoLinks::Perf(links))
    }

    /// The processes whose identity the programs believe the agent holds; call once.
    pub fn take_tracked(&mut self) -> Option<aya::maps::HashMap<MapData, u32, u32>> {
        aya::maps::HashMap::try_from(self.ebpf.take_map("TRACKED")?).ok()
    }

    /// Unpins a binary's uprobe_multi link, so that closing it detaches it.
    pub fn unpin_go(&self, key: (u64, u64)) {
        if let Some(pins) = &self.pins {
            pins.unpin_go(key);
        }
    }

    /// The kernel state outlives the agent: probes are left in place at exit.
    pub fn pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// Detaches what is left of the previous agent's Go probes once the handover is over;
    /// returns how many binaries' links.
    pub fn sweep_previous_go(&mut self) -> usize {
        self.pins.as_mut().map_or(0, |p| p.sweep_previous_go())
    }

    /// Removes one binary's probes (slow in the kernel for perf-event links: a grace period
    /// each).
    pub fn detach_go(&mut self, links: GoLinks) {
        match links {
            GoLinks::Multi(fd) => drop(fd),
            GoLinks::Perf(ids) => {
                if let Some(Ok(p)) = self
                    .ebpf
                    .program_mut(GO_PROGRAM)
                    .map(<&mut UProbe>::try_from)
                {
                    for id in ids {
                        let _ = p.detach(id);
                    }
                }
            }
        }
    }
}

/// The type (`statfs` magic) of the filesystem holding `path`.
pub(crate) fn fs_magic(path: &std::path::Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: all-zero is a valid statfs buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs buffer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// Each probed Go binary holds two descriptors (its uprobe_multi link and the binary itself),
/// six on kernels without uprobe_multi: `--go-max-binaries` of them can need more than the
/// usual soft limit of 1024.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

#[cfg(test)]
mod tests {
    use super::default_guard_copies;

    #[test]
    fn three_copies_from_7_0_and_when_the_release_is_unreadable() {
        for (release, copies) in [
            ("6.1.0-13-amd64", 1),
            ("6.18.44-fc-v657", 1),
            ("6.12.58", 1),
            ("7.0.0-rc1", 3),
            ("7.3.1", 3),
            ("10.2.0", 3),
            ("", 3),
            ("garbage", 3),
        ] {
            assert_eq!(default_guard_copies(release), copies, "{release}");
        }
    }
}
