//! crashwatch: a crash observer for Linux hosts. Every fatal signal, OOM kill and (optionally)
//! abnormal exit of any process on the host, seen from the kernel, reported once per process.
mod agent;
mod assemble;
mod check;
mod decode;
mod elf;
mod enrich;
mod gobin;
/// Builds the Go test programs; shared with the integration tests.
#[cfg(test)]
#[path = "../tests/common/gobuild.rs"]
mod gobuild;
mod goroutines;
mod probe;
mod report;
mod signals;
mod sink;
mod symbolize;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    version,
    about,
    long_about = "crashwatch watches every process on this host from the kernel \
(eBPF on signal_deliver, sched_process_exec/exit and oom/mark_victim) and prints one report per crash: \
who died, how (signal, si_code, fault address, registers, exit status, core dump, OOM kill) and where \
(the faulting thread's user stack). Needs root."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Watch the host and report each crash (stop with Ctrl-C or SIGTERM).
    Run {
        /// Report format: readable blocks on a terminal, JSON lines (schema: docs/report.md).
        #[arg(long, value_enum, default_value_t = sink::Format::Auto)]
        output: sink::Format,
        /// Which plain exits are crashes: none, or every non-zero exit code.
        #[arg(long, value_enum, default_value_t = Exits::None)]
        exits: Exits,
        /// Kernel ring buffer size in bytes (a power of two, at least 4096 × page size... see docs).
        #[arg(long, default_value_t = 4 << 20, value_parser = parse_ring_size)]
        ring_size: u32,
        /// A handled SIGSEGV/SIGBUS/... is blamed for a death that follows within this many seconds.
        #[arg(long, default_value_t = 30)]
        pending_window: u64,
        /// Bytes of a Go program's dying output kept per crash (head and tail when longer).
        #[arg(long, default_value_t = 64 * 1024)]
        go_stderr_max: usize,
    },
    /// Tell whether crashwatch can run on this host, and what to do if not.
    Check,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check => {
            if check::run() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Run {
            output,
            exits,
            ring_size,
            pending_window,
            go_stderr_max,
        } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("crashwatch: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = agent::Options {
                format: output,
                report_nonzero_exits: exits == Exits::Nonzero,
                ring_bytes: ring_size,
                pending_window: Duration::from_secs(pending_window),
                go_stderr_max,
            };
            match rt.block_on(agent::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crashwatch: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
