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
        })
    }
}

/// `crashwatch dump ID`: the minidump kept with a report.
#[derive(clap::Args, Debug, Clone)]
pub struct DumpCmd {
    /// The report's id (the crash page's "Report N", `/api/reports/N`).
    pub id: i64,
    /// Where to write it; without it, stdout (unless that is a terminal).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[arg(long, default_value_os_t = crate::outputs::store::default_dir())]
    pub state_dir: PathBuf,
}

pub fn dump(a: DumpCmd) -> std::process::ExitCode {
    match minidump_of(&a) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            crate::say!("crashwatch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn minidump_of(a: &DumpCmd) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    use std::io::IsTerminal;
    let store = crate::outputs::store::Store::open_read(&a.state_dir)?;
    let Some((_, json)) = store.report(a.id)? else {
        bail!(
            "no report {} in the crash history under {}",
            a.id,
            a.state_dir.display()
        );
    };
    let r = crate::model::report::Report::from_json(&json)?;
    let Some(path) = r.dump.as_ref().and_then(|d| d.minidump.clone()) else {
        bail!(
            "report {} has no minidump (its crash was not dumped: `run --dumps`)",
            a.id
        );
    };
    let mut from = std::fs::File::open(&path).with_context(|| {
        format!("{path} (minidumps are removed, oldest first, to keep them under their bound)")
    })?;
    match &a.output {
        Some(out) => {
            let mut to =
                std::fs::File::create(out).with_context(|| format!("{}", out.display()))?;
            std::io::copy(&mut from, &mut to)?;
        }
        None if std::io::stdout().is_terminal() => {
            bail!("a minidump is binary: give -o FILE, or redirect stdout")
        }
        None => {
            std::io::copy(&mut from, &mut std::io::stdout().lock())?;
        }
    }
    Ok(())
}
