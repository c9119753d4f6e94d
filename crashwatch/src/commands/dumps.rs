//! `run`'s core-dump flags (`--dumps`): the agent as the kernel's core handler
//! (`kernel::coredump`, docs/dumps.md).
use std::{path::PathBuf, time::Duration};

#[derive(clap::Args, Debug, Clone)]
pub struct DumpArgs {
    /// Be the kernel's core handler: each crash's core is streamed to the agent while the
    /// kernel holds the process, and its report gains every thread (`threads`), each with
    /// its registers and its stack named. Sets `core_pattern` (Linux 6.16+) and puts the
    /// previous one back at the stop; while it runs, the previous handler gets no cores.
    #[arg(long)]
    pub dumps: bool,
    /// The socket the kernel hands cores to: a path in the host's initial mount namespace
    /// (the kernel resolves it from init's root).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/crashwatch/coredump.sock"
    )]
    pub dump_socket: PathBuf,
    /// Seconds a crashing process is held for its dump at most: past it the agent closes
    /// the stream, the process finishes dying, and the report says its dump was cut.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = timeout)]
    pub dump_timeout: f64,
    /// How the kernel hands a core over: `auto`, the best this kernel has (the coredump
    /// socket on Linux 6.16+, else the pipe helper); `pipe`, the pipe helper on any kernel
    /// (`core_pattern` runs this binary, `crashwatch core-helper`, which hands the core to the
    /// agent's socket).
    #[arg(long, value_enum, default_value_t = Via::Auto)]
    pub dump_via: Via,
    /// Keep each crash's whole core too, zstd-compressed as it streams past, under the state
    /// directory's dumps/ (0600, removed with its report; at most 5 per cluster, its first
    /// and latest). `crashwatch dump ID --core` writes one out, `crashwatch debug ID` opens
    /// it in gdb. A minidump is kept of every dump either way.
    #[arg(long, requires = "dumps")]
    pub keep_cores: bool,
    /// MiB the kept cores may take in all; the oldest go first.
    #[arg(long, value_name = "MIB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub cores_max: u64,
    /// Percent of the state directory's filesystem that dumps never take (at most 4 GiB, as
    /// systemd-coredump's KeepFree=): past it a core is dropped as it grows, no minidump is
    /// written, and the oldest make room first.
    #[arg(long, value_name = "PERCENT", default_value_t = 15, value_parser = clap::value_parser!(u8).range(0..=90))]
    pub dumps_keep_free: u8,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Auto,
    Pipe,
}

/// `crashwatch core-helper`: run by the kernel for each crash when the agent hands cores
/// over through the pipe helper; not for people.
#[derive(clap::Args, Debug, Clone)]
pub struct HelperArgs {
    /// The agent's socket.
    #[arg(short, long)]
    pub socket: PathBuf,
    /// Seconds the helper lives at most.
    #[arg(short, long, default_value_t = 11)]
    pub timeout: u32,
    /// The crashing process (the kernel's `%P`).
    pub pid: u32,
}

/// Hands the core on stdin to the agent: exit 0 when an agent took it, 1 when none listened.
pub fn helper(a: HelperArgs) -> std::process::ExitCode {
    if crate::kernel::coredump::helper::run(&a.socket, a.timeout, a.pid) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn timeout(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.1..=600.0).contains(&v) {
        Ok(v)
    } else {
        Err("between 0.1 and 600 seconds".into())
    }
}

impl DumpArgs {
    pub fn options(&self) -> Option<crate::agent::DumpOptions> {
        self.dumps.then(|| crate::agent::DumpOptions {
            socket: self.dump_socket.clone(),
            timeout: Duration::from_secs_f64(self.dump_timeout),
            via: (self.dump_via == Via::Pipe).then_some(crate::kernel::coredump::Protocol::Pipe),
            keep_cores: self.keep_cores.then_some(crate::util::quota::Quota {
                max_bytes: self.cores_max.saturating_mul(1 << 20),
                keep_free_pct: self.dumps_keep_free,
            }),
            keep_free_pct: self.dumps_keep_free,
        })
    }
}

/// `crashwatch dump ID`: the minidump kept with a report, or its core.
#[derive(clap::Args, Debug, Clone)]
pub struct DumpCmd {
    /// The report's id (the crash page's "Report N", `/api/reports/N`).
    pub id: i64,
    /// Where to write it; without it, stdout (unless that is a terminal).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The whole core (`run --keep-cores`), uncompressed, instead of the minidump.
    #[arg(long)]
    pub core: bool,
    #[arg(long, default_value_os_t = crate::outputs::store::default_dir())]
    pub state_dir: PathBuf,
}

pub fn dump(a: DumpCmd) -> std::process::ExitCode {
    match write_out(&a) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            crate::say!("crashwatch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The report `id` from the crash history under `state_dir`.
fn report_of(state_dir: &std::path::Path, id: i64) -> anyhow::Result<crate::model::report::Report> {
    let store = crate::outputs::store::Store::open_read(state_dir)?;
    let Some((_, json)) = store.report(id)? else {
        anyhow::bail!(
            "no report {id} in the crash history under {}",
            state_dir.display()
        );
    };
    Ok(crate::model::report::Report::from_json(&json)?)
}

/// The kept file of a report: its minidump, or its core; opened.
fn kept_file(
    r: &crate::model::report::Report,
    id: i64,
    core: bool,
) -> anyhow::Result<std::fs::File> {
    use anyhow::{bail, Context};
    let d = r.dump.as_ref();
    let path = if core {
        match d.and_then(|d| d.core.clone()) {
            Some(p) => p,
            None => match d.and_then(|d| d.core_missing.as_deref()) {
                Some(why) => bail!("report {id}'s core was not kept: {why}"),
                None => bail!(
                    "report {id} has no kept core (cores are kept with `run --dumps --keep-cores`)"
                ),
            },
        }
    } else {
        match d.and_then(|d| d.minidump.clone()) {
            Some(p) => p,
            None => match d.and_then(|d| d.minidump_missing.as_deref()) {
                Some(why) => bail!("report {id}'s minidump was not kept: {why}"),
                None => {
                    bail!("report {id} has no minidump (its crash was not dumped: `run --dumps`)")
                }
            },
        }
    };
    std::fs::File::open(&path).with_context(|| {
        format!("{path} (kept files are removed, oldest first, to keep them under their bounds, and with their reports)")
    })
}

fn write_out(a: &DumpCmd) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    use std::io::{IsTerminal, Write};
    let r = report_of(&a.state_dir, a.id)?;
    let mut from = kept_file(&r, a.id, a.core)?;
    let mut to: Box<dyn Write> = match &a.output {
        Some(out) => {
            Box::new(std::fs::File::create(out).with_context(|| format!("{}", out.display()))?)
        }
        None if std::io::stdout().is_terminal() => {
            bail!("a dump is binary: give -o FILE, or redirect stdout")
        }
        None => Box::new(std::io::stdout().lock()),
    };
    if a.core {
        zstd::stream::copy_decode(&mut from, &mut to).context("decompressing the core")?;
    } else {
        std::io::copy(&mut from, &mut to)?;
    }
    to.flush()?;
    Ok(())
}

/// `crashwatch debug ID`: gdb on a report's kept core.
#[derive(clap::Args, Debug, Clone)]
pub struct DebugCmd {
    /// The report's id.
    pub id: i64,
    /// The root directory the crashed process saw, whose program and libraries gdb reads.
    /// Default: the container's root the report names while it is still mounted, else `/`.
    #[arg(long, value_name = "DIR")]
    pub sysroot: Option<PathBuf>,
    /// The debugger to run.
    #[arg(long, value_name = "PROGRAM", default_value = "gdb")]
    pub debugger: String,
    #[arg(long, default_value_os_t = crate::outputs::store::default_dir())]
    pub state_dir: PathBuf,
    /// Arguments for the debugger, after `--` (e.g. `-- -batch -ex 'thread apply all bt'`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

pub fn debug(a: DebugCmd) -> std::process::ExitCode {
    match run_debugger(&a) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            crate::say!("crashwatch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The sysroot for a report: asked for, the container's root while mounted, or `/`.
fn sysroot(a: &DebugCmd, r: &crate::model::report::Report) -> anyhow::Result<PathBuf> {
    if let Some(s) = &a.sysroot {
        return Ok(s.clone());
    }
    match r.dump.as_ref().and_then(|d| d.root.as_deref()) {
        // Unmounted, a container's root directory is gone or left empty.
        Some(root) if std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some()) => {
            Ok(root.into())
        }
        Some(root) => anyhow::bail!(
            "the root the process saw ({}, a container's) is gone: the container stopped. \
             Give --sysroot DIR with its image's files (e.g. `podman image mount IMAGE`), or \
             --sysroot / to read the node's",
            crate::util::escape::escape(root)
        ),
        None => Ok("/".into()),
    }
}

fn run_debugger(a: &DebugCmd) -> anyhow::Result<u8> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let r = report_of(&a.state_dir, a.id)?;
    let mut from = kept_file(&r, a.id, true)?;
    let root = sysroot(a, &r)?;
    // Uncompressed where temporary files of this size belong, not a RAM-backed /tmp.
    let tmp = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let core = tmp.join(format!("crashwatch-{}-{}.core", a.id, std::process::id()));
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&core)
        .with_context(|| format!("{}", core.display()))?;
    let _gone = Remove(core.clone());
    zstd::stream::copy_decode(&mut from, &mut to).context("decompressing the core")?;
    drop(to);
    let mut cmd = std::process::Command::new(&a.debugger);
    cmd.arg("-q")
        .arg("-iex")
        .arg(format!("set sysroot {}", root.display()))
        .args(&a.args);
    let exe = r
        .exe
        .as_deref()
        .map(|e| root.join(e.trim_start_matches('/')))
        .filter(|e| e.is_file());
    match exe {
        Some(e) => {
            cmd.arg(e);
        }
        None => crate::say!(
            "crashwatch: the crashed program is not at {} under {}: gdb reads the core alone",
            crate::util::escape::escape(r.exe.as_deref().unwrap_or("(unknown)")),
            crate::util::escape::escape(&root.display().to_string())
        ),
    }
    cmd.arg("-c").arg(&core);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {} (install gdb, or give --debugger)", a.debugger))?;
    // Ctrl-C is the debugger's: it interrupts the program under it, not this command.
    // SAFETY: setting a signal's disposition to ignore.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let st = child.wait()?;
    Ok(st.code().map_or(1, |c| c.clamp(0, 255) as u8))
}

/// Removes a temporary file when dropped.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
