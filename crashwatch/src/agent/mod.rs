//! The agent: the layer that wires all below it (only the commands are above). Its main loop
//! drives records through kernel (probe → decode) → pipeline (assemble → symbolize → enrich →
//! redact → cluster) → outputs (the store, every output), and watches the kernel's
//! loss counters. The record loop ([`pipeline`]) only does what cannot wait (decode, reading
//! a dying process's maps while it exists, assembling) and hands each finished crash to the
//! report thread ([`reporter`]: symbolize, enrich, redact, cluster, store, sinks), so a slow
//! report (a cold parse of a large binary's symbols) never keeps the ring buffer from
//! draining; records go back to the kernel once written ([`hold`]). Go binaries are probed
//! on a thread of their own ([`GoProbes`]): the record loop never waits for an attach.
//!
//! When stdout is the only output and it is closed (a reader that went away), the agent says
//! so and stops rather than fail once per report forever; with other outputs (`--output-file`)
//! it says so once and goes on without stdout.
use std::time::Duration;

use anyhow::Result;

pub mod embed;
mod handover;
mod hold;
mod open;
mod pipeline;
mod reload;
mod reporter;
mod said;
mod start;
mod stop;
mod watch;

pub use reload::{Reload, Reloader};

use crate::{
    kernel::probe::go::Limits,
    outputs::store,
    outputs::{self as sink, Format},
    pipeline::cluster,
    pipeline::enrich,
    pipeline::redact::Redactor,
};

pub struct Options {
    pub format: Format,
    pub report_nonzero_exits: bool,
    /// Which terminations (deaths someone asked for) are reported; all are counted.
    pub report_terminations: crate::pipeline::assemble::policy::ReportTerminations,
    pub ring_bytes: u32,
    pub pending_window: Duration,
    /// Bytes of Go runtime output kept per crash.
    pub go_stderr_max: usize,
    /// Bytes of a process's argument list read.
    pub cmdline_max: u32,
    pub stack_copy: u32,
    pub last_words: crate::kernel::probe::writes::Mode,
    /// Copies of each tracepoint program; None: by kernel version.
    pub guard_copies: Option<u32>,
    /// Where the host's filesystem is (`/`, or a DaemonSet's mount of it): the container
    /// runtimes' files are read under it.
    pub host_root: std::path::PathBuf,
    /// Where on the host the runtimes keep their files.
    pub sources: enrich::container::Sources,
    /// The crash history's directory; None: no history.
    pub state_dir: Option<std::path::PathBuf>,
    pub retention: store::Retention,
    /// Crash loops and regressions.
    pub policy: cluster::Policy,
    /// Masks secrets before anything is stored or sent.
    pub redactor: Redactor,
    /// `--output-file`.
    pub file: Option<sink::FileOptions>,
    /// Where `/metrics` and the crash page are served; None: nowhere.
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token the crash page and API require (`--listen-token-file`).
    pub listen_token: Option<String>,
    /// `/metrics` requires it too.
    pub listen_token_metrics: bool,
    /// `--webhook`s and `--otlp-endpoint`.
    pub webhooks: Vec<sink::WebhookOptions>,
    /// Bytes of a dying process's last words kept in its report.
    pub last_words_max: usize,
    pub symbol_cache_bytes: usize,
    pub go: Limits,
    /// Where the kernel state is pinned to outlive the agent; None: it ends with the agent.
    pub pin_dir: Option<std::path::PathBuf>,
    /// Reads the configuration again at SIGHUP; None: SIGHUP is ignored, said.
    pub reload: Option<Reloader>,
    /// Run inside `crashwatch exec`: one cgroup's crashes, handed over.
    pub embed: Option<embed::Embed>,
    /// Be the kernel's core handler (`--dumps`); None: not.
    pub dumps: Option<DumpOptions>,
}

/// `--dumps`: where the kernel hands cores over, and how long a process is held at most.
pub struct DumpOptions {
    pub socket: std::path::PathBuf,
    pub timeout: Duration,
    /// None: the best this kernel has.
    pub via: Option<crate::kernel::coredump::Protocol>,
    /// Whole cores kept (`--keep-cores`), within this quota.
    pub keep_cores: Option<crate::util::quota::Quota>,
    /// Percent of the state directory's filesystem minidumps never take.
    pub keep_free_pct: u8,
}

/// Crashes waiting for the report thread. Each holds at most a stack copy and a process's
/// mappings (tens of KiB); past this many the record loop waits, and the kernel's ring buffer,
/// whose losses are counted, takes the rest.
const REPORT_QUEUE: usize = 1024;

/// Runs the agent until it is told to stop: its start, its loop and its stop.
pub async fn run(opts: Options) -> Result<()> {
    let mut agent = start::start(opts).await?;
    let interrupted = agent.watch().await?;
    agent.stop(interrupted)
}
