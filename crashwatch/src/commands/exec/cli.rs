//! `crashwatch exec`: the flags, and the agent's settings for a run inside a command
//! (`run`'s defaults, unpinned, no history, no outputs): [`crate::commands::exec`] does the rest.
use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    agent,
    commands::exec::{self, Restart},
    kernel::probe::{go::Limits, writes},
    outputs as sink,
    outputs::store,
    pipeline::cluster,
    pipeline::redact::Redactor,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum ExitCodeMode {
    /// 0 when the command succeeded and nothing in its tree crashed; the crash class of the
    /// first crash (111 Go panic or fatal error, 112 fatal signal, 113 OOM kill, 114
    /// uncaught runtime exception) when something crashed; else the command's own status.
    Crashes,
    /// The command's own status, whatever crashed (crashes are still reported).
    Passthrough,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Where each crash goes as a JSON line (docs/report.md, plus `restart`): a file path,
    /// `-` for stdout, or `fd:N` for a descriptor you opened (`--json fd:3 3>crashes.json`),
    /// so the command's own stdout stays clean. Readable reports go to stderr either way.
    #[arg(long, value_name = "PATH|-|fd:N")]
    pub json: Option<String>,
    /// The exit status: by crash class, or the command's own.
    #[arg(long, value_enum, default_value_t = ExitCodeMode::Crashes)]
    pub exit_code: ExitCodeMode,
    /// Write a JUnit XML report: a failing test case per crash.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a JSON summary: the crashes, their clusters, statuses and restarts.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Run the command as root even when started through sudo (by default it runs as the
    /// user who ran sudo: SUDO_UID, SUDO_GID).
    #[arg(long)]
    pub as_root: bool,
    /// Supervise the command, for hosts and containers without an orchestrator: run it again
    /// when its tree crashed (`on-crash`) or whenever it ends (`always`).
    #[arg(long, value_enum, default_value_t = Restart::No)]
    pub restart: Restart,
    /// Restarts allowed; when spent on crashes, exec gives up with a crash-loop message.
    #[arg(long, default_value_t = 5)]
    pub max_restarts: u32,
    /// Milliseconds before the first restart; doubled at each (at most 30 s).
    #[arg(long, default_value_t = 1000)]
    pub restart_delay_ms: u64,
    /// The command and its arguments, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

pub fn run(a: ExecArgs) -> ExitCode {
    crate::util::log::init(
        crate::util::log::Format::Text,
        crate::util::log::Level::Warn,
    );
    let redactor = match Redactor::new(true, &[]) {
        Ok(r) => r,
        Err(e) => {
            crate::say!("crashwatch exec: {e:#}");
            return ExitCode::from(exec::ci::FAILED);
        }
    };
    let agent = agent::Options {
        format: sink::Format::None,
        report_nonzero_exits: false,
        report_terminations: Default::default(),
        ring_bytes: 8 << 20,
        pending_window: Duration::from_secs(30),
        go_stderr_max: 64 << 10,
        cmdline_max: 4096,
        stack_copy: 16384,
        last_words: writes::Mode::Auto,
        guard_copies: None,
        host_root: "/".into(),
        sources: crate::pipeline::enrich::container::Sources::default(),
        state_dir: None,
        retention: store::Retention {
            per_cluster: 1,
            max_age: Duration::from_secs(86_400),
            max_bytes: 1 << 20,
        },
        policy: cluster::Policy {
            loop_count: 5,
            loop_window: Duration::from_secs(600),
            regression_window: Duration::from_secs(86_400),
        },
        redactor,
        file: None,
        listen: None,
        listen_token: None,
        listen_token_metrics: false,
        webhooks: Vec::new(),
        last_words_max: 16384,
        symbol_cache_bytes: 256 << 20,
        go: Limits {
            max_binaries: 1024,
            release_after: Duration::from_secs(600),
        },
        pin_dir: None,
        reload: None,
        embed: None,
        dumps: None,
    };
    ExitCode::from(exec::run(exec::Options {
        argv: a.command,
        as_root: a.as_root,
        json: a.json,
        passthrough: a.exit_code == ExitCodeMode::Passthrough,
        junit: a.junit,
        report: a.report,
        restart: a.restart,
        max_restarts: a.max_restarts,
        restart_delay: Duration::from_millis(a.restart_delay_ms),
        agent,
    }))
}
