//! The agent's main loop: drives records through the pipeline probe → decode → assemble →
//! symbolize → context (enrich) → redact → cluster → store → sink, and watches the kernel's
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
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

pub mod embed;
mod handover;
mod hold;
mod open;
mod pipeline;
mod reload;
mod reporter;
mod said;

use pipeline::{Counts, Pipeline};
pub use reload::{Reload, Reloader};
use reporter::{Job, Reported, Reporter};
use said::{give_back_freed_memory, guard_note, kernel_state_at_stop};

use crate::{
    assemble::Assembler,
    cluster,
    context::{self, container::Containers, Enricher},
    probe::{
        go::{GoProbes, Limits},
        Probe, Settings,
    },
    redact::Redactor,
    sink::{self, Format, Stdout},
    store,
    symbolize::{Roots, Symbolizer},
};

pub struct Options {
    pub format: Format,
    pub report_nonzero_exits: bool,
    /// Which terminations (deaths someone asked for) are reported; all are counted.
    pub report_terminations: crate::assemble::policy::ReportTerminations,
    pub ring_bytes: u32,
    pub pending_window: Duration,
    /// Bytes of Go runtime output kept per crash.
    pub go_stderr_max: usize,
    /// Bytes of a process's argument list read.
    pub cmdline_max: u32,
    pub stack_copy: u32,
    pub last_words: crate::probe::writes::Mode,
    /// Copies of each tracepoint program; None: by kernel version.
    pub guard_copies: Option<u32>,
    /// Where the host's filesystem is (`/`, or a DaemonSet's mount of it): the container
    /// runtimes' files are read under it.
    pub host_root: std::path::PathBuf,
    /// Where on the host the runtimes keep their files.
    pub sources: context::container::Sources,
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
}

/// Crashes waiting for the report thread. Each holds at most a stack copy and a process's
/// mappings (tens of KiB); past this many the record loop waits, and the kernel's ring buffer,
/// whose losses are counted, takes the rest.
const REPORT_QUEUE: usize = 1024;

pub async fn run(mut opts: Options) -> Result<()> {
    crate::privileges::require_privileges()?;
    let pin_dir = opts.pin_dir.clone();
    let window_ns = opts.pending_window.as_nanos() as u64;
    let mut probe = Probe::load(
        Settings {
            ring_bytes: opts.ring_bytes,
            pending_window_ns: window_ns,
            args_max: opts.cmdline_max,
            stack_copy: opts.stack_copy,
            last_words: opts.last_words,
            exec_all: opts.report_nonzero_exits,
            guard_copies: opts.guard_copies,
        },
        opts.pin_dir.as_deref(),
    )?;
    let pinned = match &probe.pins {
        None => "not pinned (the programs end with the agent)".to_string(),
        Some(p) => {
            if let Some(r) = &p.replaced {
                tracing::warn!("{r}");
            }
            let dir = p.dir().display();
            let pinned = match p.previous {
                Some(g) => format!("pinned under {dir}: took over from generation {g} (what it recorded meanwhile is reported now)"),
                None => format!("pinned under {dir} (recording goes on while no agent runs)"),
            };
            tracing::info!("kernel state {pinned}");
            pinned
        }
    };
    let copies = probe.layout.config.guard_copies;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until the loop ends.
    let mut ring = unsafe { AsyncFd::register(probe.take_events()?) }
        .map_err(std::io::Error::from)
        .context("polling the ring buffer")?;
    let mut losses = probe.take_losses()?;
    // SAFETY: the logger owns its ring buffer's fd and lives inside the AsyncFd.
    let mut klog = match probe.klog.take() {
        Some(k) => match unsafe { AsyncFd::register(k) } {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("no kernel diagnostics: {}", std::io::Error::from(e));
                None
            }
        },
        None => None,
    };
    // With pinned programs: the losses said so far, for the next agent; and who the programs
    // think this agent knows, forgotten at a clean stop so that a crash in the gap brings
    // its own identity to the next agent.
    let mut acker = probe.pins.as_ref().and_then(|p| p.acker().ok());
    let lost_acked = probe.pins.as_ref().map(|p| p.lost_acked);
    let adopted = probe.pins.as_ref().is_some_and(|p| p.previous.is_some());
    let probe_switched_ns = probe.pins.as_ref().and_then(|p| p.switched_ns);
    let tracked = if probe.pinned() {
        probe.take_tracked()
    } else {
        None
    };
    let mut known = probe.take_known()?;
    // The previous agent's executable paths, for processes that died while none ran.
    let paths_file = opts
        .state_dir
        .as_ref()
        .filter(|_| probe.pinned())
        .map(|d| d.join("known-paths.jsonl"));
    if let (Some(f), true) = (&paths_file, adopted) {
        known.load(f);
    }
    // What the previous agent wrote of the crashes still in the pinned ring buffer.
    let (keys, already) = match opts.state_dir.as_ref().filter(|_| probe.pinned()) {
        Some(d) => match hold::Keys::open(d, adopted) {
            Ok((k, a)) => (Some(k), a),
            Err(e) => {
                tracing::warn!("running with less: {}/reported-keys: {e}: after a kill -9 the next agent may report some crashes twice", d.display());
                (None, Default::default())
            }
        },
        None => (None, Default::default()),
    };
    let holds = hold::Holds::new(already, probe.pinned());
    let programs = probe.program_names().join(", ");
    let go_mode = probe.go_attach_mode();
    let last_words = probe.last_words.to_string();
    let words = probe.last_words.short();
    let uprobe_multi = probe.has_uprobe_multi();
    let host = context::hostname();
    let containers = Arc::new(Containers::new(
        opts.host_root.clone(),
        opts.sources.clone(),
        context::container::node_name(&host),
    ));
    let enricher = Enricher::new(
        probe.layout.pt_regs_names.clone(),
        opts.last_words_max,
        containers.clone(),
    );
    let metrics = sink::metrics::Metrics::new();
    let health = Arc::new(crate::web::Health::default());
    health.turned();
    let outputs = open::start_outputs(opts.file.clone(), opts.webhooks.clone(), &metrics)?;
    let go = GoProbes::start(probe, opts.go);
    let stdout_closed = Arc::new(AtomicBool::new(false));
    let embed = opts.embed.take();
    let (mut control, ready, hand_over) = match embed {
        Some(e) => (Some(e.control), e.ready, Some((e.cgroup, e.reports))),
        None => (None, None, None),
    };
    let embedded = hand_over.is_some();
    let (jobs, queue) = mpsc::sync_channel::<Job>(REPORT_QUEUE);
    let roots = Arc::new(Roots::default());
    let (clusters, store) = open::open_store(&opts, &metrics);
    open::start_listener(&opts, &metrics, &health, store.as_ref(), &host).await;
    let reporter = {
        let (go, closed, roots) = (go.view(), stdout_closed.clone(), roots.clone());
        let (format, cache) = (opts.format, opts.symbol_cache_bytes);
        let redactor = opts.redactor;
        let terminations = opts.report_terminations;
        let (outputs, m) = (outputs, metrics.clone());
        let written = holds.written.clone();
        let opened = reload::Opened {
            file: opts.file.clone(),
            webhooks: opts.webhooks.clone(),
        };
        std::thread::Builder::new()
            .name("reports".into())
            .spawn(move || {
                Reporter {
                    embed: hand_over,
                    go,
                    roots,
                    sym: Symbolizer::new(cache),
                    enricher,
                    redactor,
                    stdout: (!embedded).then(|| Stdout::new(format)),
                    outputs,
                    opened,
                    written,
                    keys,
                    stdout_closed: closed,
                    unwritten: 0,
                    clusters,
                    store,
                    stdout_errors: m.sink_errors("stdout"),
                    stdout_delivered: m.delivered("stdout"),
                    cache_bytes: cache,
                    build_panics: 0,
                    unbuilt: 0,
                    terminations,
                    carried_lost: 0,
                    failpoint: std::env::var("CRASHWATCH_FAILPOINT_REPORT_PANIC").ok(),
                    metrics: m,
                }
                .run(queue)
            })
            .context("starting the report thread")?
    };
    let mut baseline = losses.losses();
    if let Some(acked) = lost_acked {
        // What the ring buffer lost while no agent read it is this agent's to report.
        baseline.ring_full = acked.min(baseline.ring_full);
    }
    let mut p = Pipeline {
        handover: handover::Handover::new(probe_switched_ns),
        holds,
        reported: baseline,
        go,
        losses,
        asm: Assembler::new(opts.report_nonzero_exits, opts.go_stderr_max),
        decode_errors: 0,
        reports: jobs,
        stdout_closed,
        roots,
        known,
        counts: Counts::default(),
        containers,
    };
    for off in crate::privileges::Caps::current().degraded(uprobe_multi) {
        tracing::warn!("running with less: {off}");
    }
    if last_words.starts_with("unavailable") {
        tracing::warn!("running with less: no last words ({last_words}): runtimes' dying messages are not in reports, and exits they explain are not reported");
    }
    // Before "ready": a stop asked for from then on must take the orderly way out (write
    // what is queued), not the default action of the signal.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let reloader = opts.reload.take();
    let seeded = context::scan_proc();
    let n = seeded.len();
    for (pid, mut info) in seeded {
        info.root = p.roots.note(pid);
        p.containers.note(&info.cgroup);
        if let Some(id) = info.file {
            p.go.request(pid, id, info.exe.as_deref().unwrap_or("?"));
            if let Some(exe) = &info.exe {
                p.known.remember(id, exe);
            }
        }
        p.asm.seed(pid, info);
    }
    let loaded = programs.split(", ").count();
    // One short line at start; what was loaded and how, at debug (and in `crashwatch check`).
    tracing::debug!(
        "start-up: {loaded} programs loaded ({programs}), {n} running processes known (Go binaries among them are probed in the background: {go_mode}), ring buffer {} KiB, recursion guard: {copies} {} of each tracepoint program, last words: {last_words}, kernel state {pinned}",
        opts.ring_bytes / 1024,
        if copies == 1 { "copy" } else { "copies" },
    );
    tracing::info!("ready: watching {n} processes ({loaded} programs, {words})");
    health.ready.store(true, Ordering::Relaxed);
    if let Some(r) = ready {
        let _ = r.send(());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut logged = p.reported;
    let mut exported = (p.reported, 0);
    let mut ticks: u64 = 0;
    // Stopped by Ctrl-C (a person at a terminal) rather than SIGTERM (a service manager).
    let mut interrupted = false;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                p.drain(guard.get_inner_mut());
                guard.clear_ready();
                if p.stdout_closed.load(Ordering::Relaxed) {
                    tracing::warn!("stdout is closed (broken pipe) and it is where reports go: stopping");
                    break;
                }
            }
            guard = async {
                match klog.as_mut() {
                    Some(k) => k.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut read = false;
                if let Ok(mut g) = guard {
                    read = crate::probe::klog::drain(g.get_inner_mut());
                    g.clear_ready();
                }
                if !read {
                    tracing::warn!("kernel diagnostics stopped: a record could not be read");
                    klog = None;
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                health.turned();
                // Insurance against a wakeup the kernel never sent: nothing waits longer.
                p.drain(ring.get_mut());
                let now = p.losses.losses();
                let (was, was_undecodable) = exported;
                metrics.lost("ring_full", now.ring_full - was.ring_full);
                metrics.lost("recursion_miss", now.recursion_misses - was.recursion_misses);
                metrics.lost("undecodable", p.decode_errors - was_undecodable);
                metrics.writes_skipped(now.writes_skipped.saturating_sub(was.writes_skipped));
                exported = (now, p.decode_errors);
                metrics.go_probed.set(p.go.stats().probed_now as i64);
                if now.total() != logged.total() {
                    // Recursion misses: a program was preempted and re-entered on the same CPU
                    // (preemptible kernels); a full ring buffer: raise --ring-size.
                    tracing::warn!(
                        "kernel lost {} events (ring buffer full: {}, recursion misses: {}; {})",
                        now.total() - logged.total(),
                        now.ring_full - logged.ring_full,
                        now.recursion_misses - logged.recursion_misses,
                        guard_note(&p.losses, now)
                    );
                    logged = now;
                }
                if let Some(a) = &mut acker {
                    a.ack(logged.ring_full);
                }
                // Forgetting exited processes walks /proc: once a minute is plenty.
                let every_minute = ticks.is_multiple_of(60);
                if ticks.is_multiple_of(10) {
                    p.roots.sweep();
                }
                p.asm.expire(context::monotonic_ns(), window_ns, |pid| {
                    !every_minute || std::path::Path::new(&format!("/proc/{pid}")).exists()
                });
                if ticks == 5 || every_minute {
                    give_back_freed_memory();
                }
            }
            // The kernel wakes the loop only for records where the consumer position stands:
            // while it holds records back, the loop looks by itself.
            _ = poll.tick(), if ring.get_ref().holding() => p.drain(ring.get_mut()),
            _ = sighup.recv() => reload::on_sighup(reloader.as_ref(), &p.reports),
            // Embedded, the signals are the command's: it stops the agent when it is done.
            _ = sigint.recv(), if !embedded => {
                interrupted = true;
                break;
            }
            _ = sigterm.recv(), if !embedded => break,
            c = async {
                match control.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => match c {
                Some(embed::Control::Flush(done)) => {
                    p.drain(ring.get_mut());
                    let _ = p.reports.send(Job::Flush(done));
                }
                Some(embed::Control::Stop) | None => break,
            },
        }
    }
    // Whatever the kernel already wrote still gets reported.
    p.drain(ring.get_mut());
    let l = p.losses.losses_final();
    if let Some(a) = &mut acker {
        // The stop line below says them.
        a.ack(l.ring_full);
    }
    if let Some(mut t) = tracked {
        let pids: Vec<u32> = t.keys().flatten().collect();
        for pid in pids {
            let _ = t.remove(&pid);
        }
    }
    let go = p.go.stats();
    let open = p.asm.min_hold();
    let Pipeline {
        go: probes,
        losses: reader,
        decode_errors,
        reports,
        roots,
        known,
        handover,
        counts,
        mut holds,
        ..
    } = p;
    if handover.dropped > 0 {
        tracing::info!(
            "dropped {} records both program generations made of one event at the takeover",
            handover.dropped
        );
    }
    if let Some(f) = &paths_file {
        if let Err(e) = known.save(f) {
            tracing::warn!("saving {} for the next agent: {e}", f.display());
        }
    }
    // Every crash queued is reported before the stop line.
    drop(reports);
    let done = reporter.join().unwrap_or_else(|_| Reported {
        unwritten: 0,
        symbolization: "the report thread panicked".into(),
        stored: None,
        seen_dropped: 0,
        outputs: Vec::new(),
        build_panics: 0,
        unbuilt: 0,
    });
    // Everything is written: only the records of cases still open stay for the next agent.
    let rb = ring.get_mut();
    let to = holds.release_point(open, rb.cursor(), rb.size());
    rb.release(to);
    if holds.skipped > 0 {
        tracing::info!(
            "{} crashes in the ring buffer were written by the agent before (kill -9): not repeated",
            holds.skipped
        );
    }
    if done.build_panics + done.unbuilt > 0 {
        tracing::warn!(
            "reports whose building panicked: {} (sent without their stack), {} not sent at all",
            done.build_panics,
            done.unbuilt
        );
    }
    for line in &done.outputs {
        tracing::info!("{line}");
    }
    if let Some(s) = done.stored {
        let busy = s.busy.as_secs_f64();
        tracing::info!(
            "crash history: {} reports sent to the store, {} not stored (queue full or write failed); {:.0} ms of store time, {:.0} reports/s while writing; build sightings not stored: {} (queue full), {} (taken too late)",
            s.sent,
            s.dropped,
            busy * 1e3,
            s.sent as f64 / busy.max(1e-9),
            s.builds_dropped,
            done.seen_dropped
        );
    }
    tracing::info!(
        "stopped (kernel losses: ring buffer full {}, recursion misses {}, undecodable records {}; reports not written {}) ({}) (Go binaries: {} probed at the end, {} released, {} left unprobed over --go-max-binaries)",
        l.ring_full,
        l.recursion_misses,
        decode_errors,
        done.unwritten,
        guard_note(&reader, l),
        go.probed_now,
        go.released,
        go.over_limit,
    );
    // Said for a stderr that failed for a while and came back (a full disk), and for the
    // log pipelines that read the JSON lines; /metrics has it too.
    let unwritten = crate::log::unwritten();
    if unwritten > 0 {
        tracing::warn!("{unwritten} log lines could not be written (stderr closed or failing)");
    }
    tracing::info!(
        "records from the kernel: {} execs (of files not yet known, Go binaries, or tracked processes), {} identities read at a crash sign, {} exits; {} executables marked known{}",
        counts.execs,
        counts.idents,
        counts.exits,
        known.marked,
        if known.mark_errors > 0 {
            format!(" ({} marks refused by the kernel)", known.mark_errors)
        } else {
            String::new()
        }
    );
    let (held, over) = roots.stats();
    tracing::info!(
        "symbolization per report: {}; container roots held {held}, {over} not held over the limit of {}",
        done.symbolization,
        crate::symbolize::ROOTS_MAX
    );
    let took = probes.shutdown();
    if go.probed_now > 0 {
        tracing::info!(
            "released the probes on {} Go binaries in {} ms",
            go.probed_now,
            took.as_millis()
        );
    }
    tracing::info!("{}", kernel_state_at_stop(pin_dir.as_deref(), interrupted));
    Ok(())
}
