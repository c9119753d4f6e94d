//! The command line, the top layer: what each command takes, and handing it to the agent and
//! the layers below. Thin on purpose:
//! `run` starts the agent ([`crate::agent`]), `check` probes the host ([`check`]),
//! `symbolize` names addresses as reports do ([`symbolize`]), `report` reads the crash
//! history ([`report`]), `analyze` finds crashes in logs ([`analyze`]), `exec` runs a command and
//! reports its tree's crashes ([`exec`]).
pub mod analyze;
mod check;
mod config;
mod dumps;
pub mod exec;
mod hub;
pub mod out;
mod outputs;
mod reload;
mod report;
mod symbolize;

use std::{process::ExitCode, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::{
    agent,
    kernel::probe::{go::Limits, writes},
    outputs as sink,
};

#[derive(Parser)]
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("CRASHWATCH_REVISION"), ")"),
    about,
    long_about = "crashwatch watches every process on this host from the kernel \
(eBPF on signal_deliver, sched_process_exec/exit, oom/mark_victim and the Go runtime's fatal \
paths) and prints one report per crash: who died, how (signal, si_code, fault address or \
sender, registers, exit status, core dump, OOM kill, Go panic or fatal error) and where (the \
faulting thread's user stack). Needs root, or CAP_BPF and CAP_PERFMON (CAP_SYS_PTRACE and \
CAP_DAC_READ_SEARCH for processes of other users)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Find the crashes in logs already written: Go panics (nested too), fatal errors,
    /// signal and goroutine dumps, the other runtimes' crash texts, and gctrace lines; each
    /// crash with its line range and the agent's fingerprint, goroutine dumps folded, GC
    /// statistics. Exit status: 0 no crash, 1 crashes found, 2 an input unreadable or the
    /// output unwritable (a reader that stopped early, `| head`, is not a failure).
    Analyze(analyze::cli::AnalyzeArgs),
    /// Run a command and report every crash in its tree (children, grandchildren, daemons
    /// that double-fork away) and nothing else on the host; exit with a status that fails a
    /// CI job when anything crashed (docs/exec.md). Needs what `run` needs.
    Exec(exec::cli::ExecArgs),
    /// The fleet's hub: receives every node's reports and heartbeats (agents' --hub),
    /// stores them in PostgreSQL, and serves the fleet's clusters, nodes and /metrics
    /// (docs/fleet.md). Stateless: run as many replicas as you like beside one database.
    Hub(hub::HubArgs),
    /// The crash history (what `run` stored under --state-dir): clusters, most recent activity
    /// first, with counts, first and last seen, what they hit and crash loops; or one cluster
    /// with its latest reports. Reads while the agent runs.
    Report(report::ReportArgs),
    /// Watch the host and report each crash (stop with Ctrl-C or SIGTERM; SIGHUP reads the
    /// configuration file again for the outputs and redaction rules).
    Run {
        #[command(flatten)]
        config: ConfigFile,
        /// Print the effective configuration (every key, where its value came from, secrets
        /// masked) as a configuration file would say it, and exit.
        #[arg(long)]
        print_config: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Tell whether crashwatch can run on this host with `run`'s flags (the programs are
    /// loaded with their settings), and what to do if not; with --sinks, try each output
    /// `run` would use with the same flags once instead. Takes every flag of `run`, so a
    /// service's command line can be checked as it is.
    Check {
        #[command(flatten)]
        config: ConfigFile,
        /// Try the outputs: open the --output-file for appending (writing nothing), send
        /// each --webhook a test message and --otlp-endpoint an empty export, bind --listen,
        /// open the crash history under --state-dir.
        #[arg(long)]
        sinks: bool,
        #[command(
            flatten,
            next_help_heading = "The flags of `run`, checked as it would use them"
        )]
        run: RunArgs,
    },
    /// Write out the minidump kept with a report (`run --dumps`): threads, registers, stacks,
    /// modules with build ids, for minidump_stackwalk, Sentry or any Breakpad tool; or, with
    /// --core, its whole core (`run --dumps --keep-cores`), uncompressed.
    Dump(dumps::DumpCmd),
    /// Open a report's kept core in gdb (`run --dumps --keep-cores`), as `coredumpctl debug`
    /// does, with the crashed program and its libraries read from the root it saw (a
    /// container's, while mounted).
    Debug(dumps::DebugCmd),
    /// Run by the kernel for each crash when `run --dumps` hands cores over through the pipe
    /// helper (kernels before 6.16, `--dump-via pipe`): hands the core on stdin to the agent.
    #[command(hide = true)]
    CoreHelper(dumps::HelperArgs),
    /// Remove the kernel state `run` pins (programs, links, ring buffer, maps) so nothing of
    /// crashwatch stays in the kernel once no agent runs. Stop the agent first.
    UninstallBpf {
        /// The directory `run` pinned into (its --pin-dir).
        #[arg(long, value_name = "DIR", default_value = crate::kernel::probe::pin::DEFAULT_DIR)]
        pin_dir: std::path::PathBuf,
    },
    /// Name addresses the way reports name frames: function, file and line (Go frames from
    /// the pclntab, others from ELF symbols and DWARF), one line per frame, inlined calls
    /// first.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["exe", "pid"])))]
    Symbolize {
        /// An ELF file; ADDRs are its own link-time addresses (as `addr2line -e` takes
        /// them; for a PIE, the report's `offset` in its first segment).
        #[arg(long, value_name = "PATH")]
        exe: Option<String>,
        /// A running process; ADDRs are addresses in it (a report's `ip`).
        #[arg(long, value_name = "PID")]
        pid: Option<u32>,
        /// One JSON object per frame, with the fields of a report's stack frames.
        #[arg(long)]
        json: bool,
        /// The addresses are return addresses (a report's frames below the first): look up
        /// the call just before each, as reports do.
        #[arg(long)]
        return_addresses: bool,
        /// Say on stderr how many addresses were named and how long it took.
        #[arg(long)]
        stats: bool,
        /// Addresses: hexadecimal with 0x, or decimal; `-` reads more from stdin.
        #[arg(value_name = "ADDR", required = true)]
        addrs: Vec<String>,
    },
}

/// The flags of `run`: the agent's settings. `check` takes them too, to check them.
#[derive(clap::Args)]
struct RunArgs {
    /// The agent's own messages on stderr: `text` lines (`crashwatch: ...`) or one JSON
    /// object per line (timestamp, level, message) for log pipelines.
    #[arg(long, value_enum, default_value_t = crate::util::log::Format::Text)]
    log_format: crate::util::log::Format,
    /// The least severe of the agent's own messages shown (`debug` adds detail: what was
    /// loaded at start and how, and the kernel programs' own diagnostics).
    #[arg(long, value_enum, default_value_t = crate::util::log::Level::Info)]
    log_level: crate::util::log::Level,
    /// Report format: readable blocks on a terminal, JSON lines (schema: docs/report.md).
    /// `none`: nothing on stdout (with --output-file, or the crash history alone).
    #[arg(long, value_enum, default_value_t = sink::Format::Auto)]
    output: sink::Format,
    #[command(flatten)]
    outputs: outputs::OutputArgs,
    /// Which plain exits are crashes: none, or every non-zero exit code (`nonzero` has
    /// the kernel send every exec, which costs each process a record: a plain exit's
    /// command line can only be read at exec).
    #[arg(long, value_enum, default_value_t = Exits::None)]
    exits: Exits,
    /// Also report terminations: deaths someone asked for (SIGTERM, SIGINT, SIGHUP,
    /// SIGPIPE, SIGKILL, SIGQUIT, SIGALRM, SIGUSR1/2), which are not crashes
    /// (docs/report.md, "What is a crash"). `all` (the flag alone), or a list of signals
    /// (`TERM,KILL`). They are written to stdout and --output-file only, as `kind:
    /// termination`: never to the crash history, the page, webhooks or OTLP. Every
    /// termination is counted in crashwatch_terminations_total either way.
    #[arg(long, value_name = "SIGNALS", num_args = 0..=1, default_value = "none",
          default_missing_value = "all",
          value_parser = crate::pipeline::assemble::policy::ReportTerminations::parse)]
    report_terminations: crate::pipeline::assemble::policy::ReportTerminations,
    /// Kernel ring buffer size in bytes: a power of two, at least 4096. It holds the
    /// crashes the agent has not read yet, about 20 KiB each with the default stack copy:
    /// 8 MiB takes a burst of some 400 at once. When pinned, up to a quarter of it also
    /// holds read crashes until they are written (so a killed agent loses none).
    #[arg(long, default_value_t = 8 << 20, value_parser = parse_ring_size)]
    ring_size: u32,
    /// A handled SIGSEGV/SIGBUS/... can be blamed for a death within this many seconds
    /// (only when the death says so: see docs/report.md).
    #[arg(long, default_value_t = 30)]
    pending_window: u64,
    /// Bytes of a Go program's dying output kept per crash (head and tail when longer).
    #[arg(long, default_value_t = 64 * 1024)]
    go_stderr_max: usize,
    /// Bytes of a process's command line read at exec and at a fatal signal (at most
    /// 4096); longer ones are reported with `cmdline_truncated`.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(0..=4096))]
    cmdline_max: u32,
    /// Bytes of the user stack copied at a fatal signal (at most 16384; 0 turns the copy
    /// off), so code built without frame pointers can be unwound from its CFI.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(0..=16384))]
    stack_copy: u32,
    /// How what processes write to stderr is watched, so a dying process's last words
    /// (a Python traceback, a Rust panic) are in its report: fentry where the kernel
    /// allows it, else the syscall tracepoints (every syscall on the host takes a slower
    /// path: `auto` says which in the ready line), or off.
    #[arg(long, value_enum, default_value_t = writes::Mode::Auto)]
    last_words: writes::Mode,
    /// Bytes of a dying process's last words kept in its report (at most 16384: the
    /// first lines of its runtime's message and the last ones).
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(0..=16384))]
    last_words_max: u32,
    /// Copies of each tracepoint program attached, so a run the kernel skips (the same
    /// program busy on that CPU) is done by the next. Default: 3 on Linux 7.0+, where a
    /// task preempted inside a tracepoint program makes the kernel skip that program for
    /// the CPU's other tasks; 1 before, where nothing can interrupt a run. Skipped runs
    /// are counted either way.
    #[arg(long, value_parser = clap::builder::TypedValueParser::map(
        clap::builder::PossibleValuesParser::new(["1", "3"]),
        |s| s.parse::<u32>().unwrap_or(3),
    ))]
    guard_copies: Option<u32>,
    /// Where the host's filesystem is mounted, for a DaemonSet that mounts it elsewhere:
    /// the container runtimes' files (containerd's and CRI-O's bundles, podman's and
    /// docker's container lists, the kubelet's /var/log/pods) are read under it.
    #[arg(long, default_value = "/", env = "CRASHWATCH_HOST_ROOT")]
    host_root: std::path::PathBuf,
    #[command(flatten)]
    runtime_files: RuntimeFiles,
    #[command(flatten)]
    history: report::History,
    #[command(flatten)]
    dumps: dumps::DumpArgs,
    /// Bytes of parsed symbol data kept in memory, shared by all processes; least recently
    /// used binaries are dropped first.
    #[arg(long, default_value_t = 256 << 20)]
    symbol_cache_bytes: usize,
    /// Let the kernel state end with the agent, as before pinning: crashes while no agent
    /// runs are not recorded.
    #[arg(long)]
    no_pin: bool,
    /// Where the programs' links, the ring buffer and the per-process maps are pinned, so
    /// the kernel goes on recording while no agent runs and the next agent takes over
    /// (a BPF filesystem; the DaemonSet mounts the host's /sys/fs/bpf).
    #[arg(long, value_name = "DIR", default_value = crate::kernel::probe::pin::DEFAULT_DIR)]
    pin_dir: std::path::PathBuf,
    /// Go binaries probed at once at most; more are reported without probes and counted.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    go_max_binaries: u64,
    /// Seconds after the last process running a Go binary ended before its probes (and
    /// its open descriptors) are released; a deleted binary's go at once.
    #[arg(long, default_value_t = 600)]
    go_release_after: u64,
}

impl RunArgs {
    /// What the kernel side is loaded with: `check` loads the programs as `run` would.
    fn probe_settings(&self) -> crate::kernel::probe::Settings {
        crate::kernel::probe::Settings {
            ring_bytes: self.ring_size,
            pending_window_ns: self.pending_window.saturating_mul(1_000_000_000),
            args_max: self.cmdline_max,
            stack_copy: self.stack_copy,
            last_words: self.last_words,
            exec_all: self.exits == Exits::Nonzero,
            guard_copies: self.guard_copies,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Exits {
    /// Only signals and OOM kills are crashes (grep exiting 1 is not).
    None,
    /// Also report processes that exit with a non-zero code.
    Nonzero,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two of at least 4096 bytes"));
    }
    Ok(n)
}

/// `--config`, taken by the commands that read the configuration ([`config`]).
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigFile {
    /// Read flags from this TOML file: keys are `run`'s long flag names (`output-file =
    /// "/var/log/crashwatch.json"`, `webhook = ["https://..."]`, `no-store = true`).
    /// Precedence: flag > CRASHWATCH_<FLAG> environment > file > default. Default:
    /// /etc/crashwatch/config.toml when it exists. `run` reads it again at SIGHUP (outputs
    /// and redaction rules; other keys at the next start).
    #[arg(long, value_name = "FILE", env = "CRASHWATCH_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

pub fn main() -> ExitCode {
    let cmd = config::command(Cli::command());
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (matches, from_file) = match config::parse(&cmd, &argv) {
        Ok(parsed) => parsed,
        Err(config::Refused::Args(e)) => e.exit(),
        Err(config::Refused::File(e)) => {
            crate::say!("crashwatch: {e:#}");
            return ExitCode::from(2);
        }
        Err(config::Refused::InFile(path, e)) => {
            if let Some(p) = path {
                crate::say!("crashwatch: in the configuration file {}:", p.display());
            }
            e.exit()
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.cmd {
        Cmd::Check {
            sinks: true, run, ..
        } => {
            let h = &run.history;
            if check::sinks(&run.outputs, &h.state_dir, h.no_store) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Check { run, .. } => {
            if check::run(run.probe_settings()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Report(args) => report::run(args),
        Cmd::Analyze(args) => analyze::cli::run(args),
        Cmd::Exec(args) => exec::cli::run(args),
        Cmd::Hub(args) => hub::run(args),
        Cmd::CoreHelper(a) => dumps::helper(a),
        Cmd::Dump(a) => dumps::dump(a),
        Cmd::Debug(a) => dumps::debug(a),
        Cmd::UninstallBpf { pin_dir } => match crate::kernel::probe::pin::uninstall(&pin_dir) {
            Ok(0) => out::print(
                &format!("nothing pinned under {}\n", pin_dir.display()),
                ExitCode::SUCCESS,
            ),
            Ok(n) => out::print(
                &format!("removed {n} pinned objects under {}\n", pin_dir.display()),
                ExitCode::SUCCESS,
            ),
            Err(e) => {
                crate::say!("crashwatch: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Symbolize {
            exe,
            pid,
            json,
            return_addresses,
            stats,
            addrs,
        } => symbolize::run(symbolize::Args {
            exe,
            pid,
            json,
            returns: return_addresses,
            stats,
            addrs,
        }),
        Cmd::Run {
            print_config: true, ..
        } => {
            let run = matches.subcommand_matches("run").expect("run was parsed");
            let file = from_file.expect("run reads the configuration");
            out::print(&config::print(&cmd, run, &file), ExitCode::SUCCESS)
        }
        Cmd::Run { run, .. } => {
            let RunArgs {
                log_format,
                log_level,
                output,
                outputs,
                exits,
                report_terminations,
                ring_size,
                pending_window,
                go_stderr_max,
                cmdline_max,
                stack_copy,
                last_words,
                last_words_max,
                guard_copies,
                host_root,
                runtime_files,
                history,
                dumps,
                symbol_cache_bytes,
                go_max_binaries,
                go_release_after,
                no_pin,
                pin_dir,
            } = run;
            let run_matches = matches.subcommand_matches("run").expect("run was parsed");
            let redactor = match outputs.redactor() {
                Ok(r) => r,
                Err(e) => {
                    crate::say!("crashwatch: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let listen_token = match outputs.listen_token() {
                Ok(t) => t,
                Err(e) => {
                    crate::say!("crashwatch: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let file = outputs.file();
            let webhooks = match outputs.network(&history.state_dir) {
                Ok(w) => w,
                Err(e) => {
                    crate::say!("crashwatch: {e:#}");
                    return ExitCode::from(2);
                }
            };
            if output == sink::Format::None
                && file.is_none()
                && webhooks.is_empty()
                && history.no_store
            {
                crate::say!("crashwatch: --output none with --no-store and no --output-file: reports would go nowhere");
                return ExitCode::from(2);
            }
            crate::util::log::init(log_format, log_level);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = agent::Options {
                format: output,
                report_nonzero_exits: exits == Exits::Nonzero,
                report_terminations,
                ring_bytes: ring_size,
                pending_window: Duration::from_secs(pending_window),
                go_stderr_max,
                cmdline_max,
                stack_copy,
                last_words,
                last_words_max: last_words_max as usize,
                guard_copies,
                host_root,
                sources: runtime_files.sources(),
                redactor,
                file,
                listen: outputs.listen(),
                listen_token,
                listen_token_metrics: outputs.listen_token_metrics(),
                webhooks,
                state_dir: (!history.no_store).then(|| history.state_dir.clone()),
                retention: history.retention(),
                policy: history.policy(),
                symbol_cache_bytes,
                go: Limits {
                    max_binaries: go_max_binaries as usize,
                    release_after: Duration::from_secs(go_release_after),
                },
                pin_dir: (!no_pin).then_some(pin_dir),
                reload: Some(reload::reloader(
                    cmd.clone(),
                    argv,
                    config::print(
                        &cmd,
                        run_matches,
                        from_file.as_ref().expect("run reads the configuration"),
                    ),
                    history.state_dir.clone(),
                )),
                embed: None,
                dumps: dumps.options(),
            };
            // Through the log, which survives a closed stderr (and is JSON with
            // --log-format json).
            match rt.block_on(agent::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Where the container runtimes keep their files on the host (read under `--host-root`), for
/// nodes that moved them.
#[derive(clap::Args, Clone, Debug)]
struct RuntimeFiles {
    /// A containers/storage root (podman's, CRI-O's `graphroot` or `runroot`); repeatable.
    /// Default: /var/lib/containers/storage and /run/containers/storage.
    #[arg(long, value_name = "DIR")]
    containers_storage: Vec<std::path::PathBuf>,
    /// containerd's state directory (k3s: /run/k3s/containerd).
    #[arg(long, value_name = "DIR", default_value = "/run/containerd")]
    containerd_state: std::path::PathBuf,
    /// docker's data root.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/docker")]
    docker_root: std::path::PathBuf,
    /// The kubelet's pod log directory.
    #[arg(long, value_name = "DIR", default_value = "/var/log/pods")]
    pod_log_dir: std::path::PathBuf,
    /// The kubelet's per-container log links.
    #[arg(long, value_name = "DIR", default_value = "/var/log/containers")]
    container_log_dir: std::path::PathBuf,
}

impl RuntimeFiles {
    fn sources(&self) -> crate::pipeline::enrich::container::Sources {
        let d = crate::pipeline::enrich::container::Sources::default();
        crate::pipeline::enrich::container::Sources {
            containers_storage: if self.containers_storage.is_empty() {
                d.containers_storage
            } else {
                self.containers_storage.clone()
            },
            containerd_state: self.containerd_state.clone(),
            docker_root: self.docker_root.clone(),
            pod_logs: self.pod_log_dir.clone(),
            container_logs: self.container_log_dir.clone(),
        }
    }
}
