//! `crashwatch exec [OPTIONS] -- CMD ARGS…`: runs a command and reports every crash in its
//! tree (children, grandchildren, daemons that double-fork away) and nothing else on the
//! host; for CI, an exit status that fails the job when anything in the tree crashed, even
//! when the command itself exited 0; for hosts without an orchestrator, restarts on crash
//! with a budget and backoff.
//!
//! The tree is a cgroup of its own ([`cgroup`]); the agent runs in-process with its own
//! programs, unpinned (so it works beside a `crashwatch run`), handing over only that
//! cgroup's reports ([`crate::agent::embed`]). After each run of the command the agent is
//! flushed, so a crash that happened before the command's exit is never missed by a race.
//! [`ci`] says what happened: summary, exit status, annotations, JUnit, JSON.
mod cgroup;
mod child;
pub mod ci;
pub mod cli;
mod detach;

use std::{
    ffi::OsString,
    io::{IsTerminal, Write},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicI32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, oneshot};

use crate::{
    agent::{self, embed},
    outputs::Item,
    util::escape::escape,
};
use ci::Seen;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Restart {
    /// Run the command once.
    No,
    /// Run it again when something in its tree crashed during the run.
    OnCrash,
    /// Run it again whenever it ends.
    Always,
}

pub struct Options {
    pub argv: Vec<OsString>,
    pub as_root: bool,
    /// Where JSON lines of the crashes go: a path, `-` (stdout) or `fd:N`.
    pub json: Option<String>,
    /// Keep the command's exit status whatever crashed.
    pub passthrough: bool,
    pub junit: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub restart: Restart,
    pub max_restarts: u32,
    pub restart_delay: Duration,
    pub agent: agent::Options,
}

/// The longest wait between restarts.
const MAX_DELAY: Duration = Duration::from_secs(30);

pub fn run(o: Options) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::say!("crashwatch exec: {e}");
            return ci::FAILED;
        }
    };
    match rt.block_on(exec(o)) {
        Ok(code) => code,
        Err(e) => {
            crate::say!("crashwatch exec: {e:#}");
            ci::FAILED
        }
    }
}

async fn exec(o: Options) -> Result<u8> {
    crate::util::privileges::require_privileges()?;
    let started = Instant::now();
    let mut json = open_json(o.json.as_deref())?;
    let cg = cgroup::Cgroup::create()?;
    let procs = cg.procs()?;
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready) = oneshot::channel();
    let mut opts = o.agent;
    opts.embed = Some(embed::Embed {
        cgroup: cg.path.clone(),
        reports: reports_tx,
        control: control_rx,
        ready: Some(ready_tx),
    });
    let agent = agent::run(opts);
    tokio::pin!(agent);
    tokio::select! {
        r = &mut agent => {
            cg.remove();
            return Err(r.err().unwrap_or_else(|| anyhow::anyhow!("the agent stopped before it was ready")));
        }
        _ = ready => {}
    }
    let user = if o.as_root {
        None
    } else {
        child::User::invoking()
    };
    // The child now; 0 when none runs.
    let child_pid = Arc::new(AtomicI32::new(0));
    let (sig_tx, mut sigs) = mpsc::unbounded_channel::<i32>();
    let forward = child::forwarded();
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(sig))
            .context("handling signals")?;
        let (tx, pid, pass) = (sig_tx.clone(), child_pid.clone(), forward.contains(&sig));
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let p = pid.load(Ordering::Relaxed);
                if pass && p > 0 {
                    // SAFETY: a signal to our own child, still unreaped while p is set.
                    unsafe { libc::kill(p, sig) };
                }
                let _ = tx.send(sig);
            }
        });
    }
    let color = std::io::stderr().is_terminal();
    let mut seen: Vec<Seen> = Vec::new();
    let (mut restarts, mut delay, mut stopping, mut gave_up) =
        (0u32, o.restart_delay, false, false);
    let status = loop {
        let before = seen.len();
        let mut cmd = child::command(&o.argv, &procs, user.as_ref())?;
        let mut c = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = control.send(embed::Control::Stop);
                let _ = (&mut agent).await;
                cg.remove();
                let prog = o.argv[0].to_string_lossy().into_owned();
                crate::say!("crashwatch exec: running {}: {e}", escape(&prog));
                return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                });
            }
        };
        child_pid.store(c.id().map_or(0, |p| p as i32), Ordering::Relaxed);
        let status = loop {
            tokio::select! {
                st = c.wait() => break st.context("waiting for the command")?,
                Some(item) = reports.recv() => show(&item, restarts, color, &mut json, &mut seen),
                Some(sig) = sigs.recv() => {
                    if matches!(sig, libc::SIGINT | libc::SIGTERM) {
                        stopping = true;
                    }
                }
                r = &mut agent => bail!("the agent stopped: {}", r.err().map(|e| format!("{e:#}")).unwrap_or_default()),
            }
        };
        child_pid.store(0, Ordering::Relaxed);
        // Every crash recorded up to the command's end, before anything is decided.
        let (done, flushed) = oneshot::channel();
        let _ = control.send(embed::Control::Flush(done));
        tokio::select! {
            _ = flushed => {}
            r = &mut agent => bail!("the agent stopped: {}", r.err().map(|e| format!("{e:#}")).unwrap_or_default()),
        }
        while let Ok(item) = reports.try_recv() {
            show(&item, restarts, color, &mut json, &mut seen);
        }
        let crashed = seen.len() > before;
        let again = match o.restart {
            Restart::No => false,
            Restart::OnCrash => crashed,
            Restart::Always => true,
        };
        if !again || stopping {
            break status;
        }
        if restarts >= o.max_restarts {
            gave_up = crashed;
            if gave_up {
                crate::say!(
                    "crashwatch exec: crash loop: the command's tree crashed again; --max-restarts {} spent: giving up",
                    o.max_restarts
                );
            }
            break status;
        }
        restarts += 1;
        crate::say!(
            "crashwatch exec: the command {}; restart {restarts} of {} in {:.1} s",
            if crashed { "crashed" } else { "ended" },
            o.max_restarts,
            delay.as_secs_f64()
        );
        let wake = tokio::time::sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                Some(sig) = sigs.recv() => if matches!(sig, libc::SIGINT | libc::SIGTERM) {
                    stopping = true;
                    break;
                },
            }
        }
        if stopping {
            break status;
        }
        delay = (delay * 2).min(MAX_DELAY);
    };
    detach::after_exit();
    let _ = control.send(embed::Control::Stop);
    let _ = (&mut agent).await;
    let left = cg.remove();
    if left > 0 {
        crate::say!("crashwatch exec: {left} process(es) of the command's tree still run; they are not watched any more");
    }
    let told = Told {
        argv: o.argv,
        passthrough: o.passthrough,
        junit: o.junit,
        report: o.report,
    };
    conclude(
        &told,
        Ran {
            status,
            seen,
            restarts,
            gave_up,
            left,
            secs: started.elapsed().as_secs_f64(),
        },
    )
}

/// What the options ask of the conclusion.
struct Told {
    argv: Vec<OsString>,
    passthrough: bool,
    junit: Option<PathBuf>,
    report: Option<PathBuf>,
}

/// How the command's runs ended, for [`conclude`].
struct Ran {
    status: std::process::ExitStatus,
    seen: Vec<Seen>,
    restarts: u32,
    gave_up: bool,
    left: usize,
    secs: f64,
}

/// Says what happened (summary, annotations, JUnit, the JSON report) and picks exec's exit
/// status.
fn conclude(o: &Told, r: Ran) -> Result<u8> {
    let Ran {
        status,
        seen,
        restarts,
        gave_up,
        left,
        secs,
    } = r;
    let cmd_code = status
        .code()
        .map(|c| c as u8)
        .or_else(|| status.signal().map(|s| 128 + s as u8))
        .unwrap_or(ci::FAILED);
    let code = match seen.first() {
        Some(first) if !o.passthrough => ci::class_code(first.item.report.kind),
        _ => cmd_code,
    };
    let clusters = ci::clusters(&seen);
    let ended = match (status.code(), status.signal()) {
        (Some(c), _) => format!("the command exited {c}"),
        (_, Some(s)) => format!(
            "the command was killed by {}",
            crate::model::signals::name(s)
        ),
        _ => "the command ended".into(),
    };
    crate::say_raw!("{}", ci::summary(&clusters, seen.len(), &ended));
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        let workspace = std::env::var("GITHUB_WORKSPACE").ok();
        // A reader that went away ends the annotations, not exec.
        if let Err(e) = crate::commands::out::write(&ci::github(&clusters, workspace.as_deref())) {
            crate::say!("crashwatch exec: writing the annotations: {e}");
        }
    }
    let command = o
        .argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    if let Some(p) = &o.junit {
        std::fs::write(p, ci::junit(&seen, &command.join(" "), secs))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &o.report {
        let crashes: Vec<serde_json::Value> = seen.iter().map(with_restart).collect();
        let doc = serde_json::json!({
            "command": command,
            "exit_code": code,
            "command_status": cmd_code,
            "runs": restarts + 1,
            "restarts": restarts,
            "gave_up": gave_up,
            "seconds": secs,
            "leftover_processes": left,
            "crashes": crashes,
            "clusters": clusters,
        });
        std::fs::write(p, format!("{doc}\n"))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(code)
}

/// A report as exec writes it: the report's JSON with the run it happened in.
fn with_restart(s: &Seen) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&s.item.json).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("restart".into(), s.restart.into());
    }
    v
}

fn show(
    item: &Arc<Item>,
    restart: u32,
    color: bool,
    json: &mut Option<Box<dyn Write>>,
    seen: &mut Vec<Seen>,
) {
    let s = Seen {
        item: item.clone(),
        restart,
    };
    let mut text = crate::outputs::pretty::pretty(&item.report, color);
    if restart > 0 {
        text = format!("(restart {restart})\n{text}");
    }
    crate::say_raw!("{text}");
    if let Some(w) = json {
        let _ = writeln!(w, "{}", with_restart(&s)).and_then(|_| w.flush());
    }
    seen.push(s);
}

/// `--json`'s target: a path (created or truncated), `-` for stdout, `fd:N` for a
/// descriptor the caller opened.
fn open_json(to: Option<&str>) -> Result<Option<Box<dyn Write>>> {
    let Some(to) = to else {
        return Ok(None);
    };
    if to == "-" {
        return Ok(Some(Box::new(std::io::stdout())));
    }
    if let Some(n) = to.strip_prefix("fd:") {
        let fd: i32 = n
            .parse()
            .with_context(|| format!("--json {to}: not a descriptor number"))?;
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            bail!("--json {to}: descriptor {fd} is not open");
        }
        // SAFETY: the caller handed us this open descriptor for the JSON lines; we own it now.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        return Ok(Some(Box::new(f)));
    }
    let f = std::fs::File::create(to).with_context(|| format!("--json: creating {to}"))?;
    Ok(Some(Box::new(f)))
}
