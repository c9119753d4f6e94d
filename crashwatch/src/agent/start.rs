//! The agent's start: load the programs (or take over pinned ones), pick up what a previous
//! agent left, start the report thread, the outputs and the listener, learn the running
//! processes, and say "ready". Everything the loop and the stop need is in [`Running`].
use std::{
    path::PathBuf,
    sync::{atomic::AtomicBool, mpsc, Arc},
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};

use super::{
    embed, handover, hold, open,
    pipeline::{Counts, Pipeline},
    reload,
    reporter::{Job, Reported, Reporter},
    Options, REPORT_QUEUE,
};
use crate::{
    kernel::probe::{go::GoProbes, klog::KernelLog, pin::Acker, ring::Ring, Probe, Settings},
    outputs::{metrics::Metrics, Stdout},
    pipeline::{
        assemble::Assembler,
        enrich::{self, container::Containers, Enricher},
        redact::Redactor,
        symbolize::{Roots, Symbolizer},
    },
};

/// Bytes of minidumps kept under the state directory (`--dumps`), the oldest removed first.
const MINIDUMPS_MAX_BYTES: u64 = 256 << 20;

/// A started agent: what its loop turns and its stop says.
pub(super) struct Running {
    pub(super) p: Pipeline,
    pub(super) ring: AsyncFd<Ring>,
    /// The programs' own diagnostics, when the agent logs at debug.
    pub(super) klog: Option<AsyncFd<KernelLog>>,
    /// With pinned programs: the losses said so far, for the next agent.
    pub(super) acker: Option<Acker>,
    /// With pinned programs: who the programs think this agent knows, forgotten at a clean
    /// stop so that a crash in the gap brings its own identity to the next agent.
    pub(super) tracked: Option<aya::maps::HashMap<aya::maps::MapData, u32, u32>>,
    pub(super) reporter: std::thread::JoinHandle<Reported>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<crate::web::Health>,
    pub(super) signals: Signals,
    pub(super) reloader: Option<super::Reloader>,
    /// Embedded in `crashwatch exec`: its orders (flush, stop); the signals are the command's.
    pub(super) control: Option<tokio::sync::mpsc::UnboundedReceiver<embed::Control>>,
    pub(super) window_ns: u64,
    /// The executable paths saved for the next agent (pinned, with a state directory).
    pub(super) paths_file: Option<PathBuf>,
    pub(super) pin_dir: Option<PathBuf>,
    /// The kernel's core handler (`--dumps`), and whether its pattern was seen taken by
    /// another tool (said once).
    pub(super) dumps: Option<crate::kernel::coredump::Handler>,
    pub(super) dumps_displaced: bool,
}

pub(super) struct Signals {
    pub(super) int: Signal,
    pub(super) term: Signal,
    pub(super) hup: Signal,
}

/// What a previous agent's pinned state hands over.
struct Carried {
    acker: Option<Acker>,
    lost_acked: Option<u64>,
    switched_ns: Option<u64>,
    tracked: Option<aya::maps::HashMap<aya::maps::MapData, u32, u32>>,
    known: crate::kernel::probe::known::KnownFiles,
    paths_file: Option<PathBuf>,
    keys: Option<hold::Keys>,
    holds: hold::Holds,
}

pub(super) async fn start(mut opts: Options) -> Result<Running> {
    crate::util::privileges::require_privileges()?;
    let window_ns = opts.pending_window.as_nanos() as u64;
    let (mut probe, pinned) = load(&opts, window_ns)?;
    let copies = probe.layout.config.guard_copies;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until the loop ends.
    let ring = unsafe { AsyncFd::register(probe.take_events()?) }
        .map_err(std::io::Error::from)
        .context("polling the ring buffer")?;
    let mut losses = probe.take_losses()?;
    let klog = probe.klog.take().and_then(|k| {
        // SAFETY: the logger owns its ring buffer's fd and lives inside the AsyncFd.
        unsafe { AsyncFd::register(k) }
            .map_err(|e| tracing::warn!("no kernel diagnostics: {}", std::io::Error::from(e)))
            .ok()
    });
    let carried = carry_over(&mut probe, &opts)?;
    let dumps = opts.dumps.as_ref().and_then(|d| start_dumps(d, &opts));
    let programs = probe.program_names().join(", ");
    let go_mode = probe.go_attach_mode();
    let last_words = probe.last_words.to_string();
    let words = probe.last_words.short();
    let uprobe_multi = probe.has_uprobe_multi();
    let host = enrich::hostname();
    let containers = Arc::new(Containers::new(
        opts.host_root.clone(),
        opts.sources.clone(),
        enrich::container::node_name(&host),
    ));
    let enricher = Enricher::new(
        probe.layout.pt_regs_names.clone(),
        opts.last_words_max,
        containers.clone(),
    );
    let metrics = Metrics::new();
    if let Some(h) = &dumps {
        let _ = metrics.dumps.set(h.stats.clone());
    }
    let health = Arc::new(crate::web::Health::default());
    health.turned();
    let outputs =
        crate::outputs::Outputs::open(opts.file.clone(), opts.webhooks.clone(), &metrics)?;
    let go = GoProbes::start(probe, opts.go);
    let (control, ready, hand_over) = match opts.embed.take() {
        Some(e) => (Some(e.control), e.ready, Some((e.cgroup, e.reports))),
        None => (None, None, None),
    };
    let (jobs, queue) = mpsc::sync_channel::<Job>(REPORT_QUEUE);
    let roots = Arc::new(Roots::default());
    let stdout_closed = Arc::new(AtomicBool::new(false));
    // The rules go to the report thread; a stop-gap without rules stays behind, never used.
    let redactor = std::mem::replace(&mut opts.redactor, Redactor::new(false, &[])?);
    let reporter = {
        let ctx = ReporterParts {
            outputs,
            redactor,
            health: &health,
            hand_over,
            go: go.view(),
            roots: roots.clone(),
            enricher,
            keys: carried.keys,
            written: carried.holds.written.clone(),
            stdout_closed: stdout_closed.clone(),
            metrics: metrics.clone(),
            host: &host,
            dumps: dumps.as_ref().map(|h| (h.dumps.clone(), h.timeout)),
        };
        spawn_reporter(&opts, ctx, queue).await?
    };
    let mut reported = losses.losses();
    if let Some(acked) = carried.lost_acked {
        // What the ring buffer lost while no agent read it is this agent's to report.
        reported.ring_full = acked.min(reported.ring_full);
    }
    let mut p = Pipeline {
        handover: handover::Handover::new(carried.switched_ns),
        holds: carried.holds,
        reported,
        go,
        losses,
        asm: Assembler::new(opts.report_nonzero_exits, opts.go_stderr_max),
        decode_errors: 0,
        reports: jobs,
        stdout_closed,
        roots,
        known: carried.known,
        counts: Counts::default(),
        containers,
    };
    for off in crate::util::privileges::Caps::current().degraded(uprobe_multi) {
        tracing::warn!("running with less: {off}");
    }
    if last_words.starts_with("unavailable") {
        tracing::warn!("running with less: no last words ({last_words}): runtimes' dying messages are not in reports, and exits they explain are not reported");
    }
    // Before "ready": a stop asked for from then on must take the orderly way out (write
    // what is queued), not the default action of the signal.
    let signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
        hup: signal(SignalKind::hangup())?,
    };
    let n = seed(&mut p);
    let loaded = programs.split(", ").count();
    // One short line at start; what was loaded and how, at debug (and in `crashwatch check`).
    tracing::debug!(
        "start-up: {loaded} programs loaded ({programs}), {n} running processes known (Go binaries among them are probed in the background: {go_mode}), ring buffer {} KiB, recursion guard: {copies} {} of each tracepoint program, last words: {last_words}, kernel state {pinned}",
        opts.ring_bytes / 1024,
        if copies == 1 { "copy" } else { "copies" },
    );
    tracing::info!("ready: watching {n} processes ({loaded} programs, {words})");
    if let Ok(mut a) = metrics.totals.attached.lock() {
        *a = serde_json::json!({
            "programs": programs.split(", ").collect::<Vec<_>>(),
            "last_words": last_words,
        });
    }
    health
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(r) = ready {
        let _ = r.send(());
    }
    Ok(Running {
        p,
        ring,
        klog,
        acker: carried.acker,
        tracked: carried.tracked,
        reporter,
        metrics,
        health,
        signals,
        reloader: opts.reload.take(),
        control,
        window_ns,
        paths_file: carried.paths_file,
        pin_dir: opts.pin_dir.clone(),
        dumps,
        dumps_displaced: false,
    })
}

/// Becomes the kernel's core handler; without it the agent runs on, said.
fn start_dumps(d: &super::DumpOptions, opts: &Options) -> Option<crate::kernel::coredump::Handler> {
    let settings = crate::kernel::coredump::Settings {
        via: d.via,
        socket: d.socket.clone(),
        timeout: d.timeout,
        limits: Default::default(),
        state_dir: opts.state_dir.clone(),
        keep_cores: d.keep_cores,
    };
    let release = crate::kernel::probe::kernel_release();
    match crate::kernel::coredump::Handler::start(settings, &release) {
        Ok(h) => {
            let (ours, previous) = h.patterns();
            tracing::info!("dumps: the kernel hands cores to {ours} (core_pattern was {previous:?}, restored at the stop)");
            Some(h)
        }
        Err(e) => {
            tracing::warn!("running with less: no dumps ({e:#})");
            None
        }
    }
}

/// Loads the programs, or takes over pinned ones; says how the kernel state is kept.
fn load(opts: &Options, window_ns: u64) -> Result<(Probe, String)> {
    let probe = Probe::load(
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
    Ok((probe, pinned))
}

/// What the pinned state and the state directory carry from a previous agent.
fn carry_over(probe: &mut Probe, opts: &Options) -> Result<Carried> {
    let acker = probe.pins.as_ref().and_then(|p| p.acker().ok());
    let lost_acked = probe.pins.as_ref().map(|p| p.lost_acked);
    let adopted = probe.pins.as_ref().is_some_and(|p| p.previous.is_some());
    let switched_ns = probe.pins.as_ref().and_then(|p| p.switched_ns);
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
    Ok(Carried {
        acker,
        lost_acked,
        switched_ns,
        tracked,
        known,
        paths_file,
        keys,
        holds,
    })
}

/// What the report thread gets from the start besides the options.
struct ReporterParts<'a> {
    outputs: crate::outputs::Outputs,
    redactor: Redactor,
    health: &'a Arc<crate::web::Health>,
    hand_over: Option<(
        String,
        tokio::sync::mpsc::UnboundedSender<Arc<crate::outputs::Item>>,
    )>,
    go: crate::kernel::probe::go::GoView,
    roots: Arc<Roots>,
    enricher: Enricher,
    keys: Option<hold::Keys>,
    written: Arc<std::sync::atomic::AtomicU64>,
    stdout_closed: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    host: &'a str,
    dumps: Option<(Arc<crate::kernel::coredump::Dumps>, std::time::Duration)>,
}

/// Opens the outputs, the crash history and the listener, and starts the report thread.
async fn spawn_reporter(
    opts: &Options,
    c: ReporterParts<'_>,
    queue: mpsc::Receiver<Job>,
) -> Result<std::thread::JoinHandle<Reported>> {
    let (clusters, store) = open::open_store(opts, &c.metrics);
    open::start_listener(opts, &c.metrics, c.health, store.as_ref(), c.host).await;
    let embedded = c.hand_over.is_some();
    let (format, cache) = (opts.format, opts.symbol_cache_bytes);
    let (outputs, redactor) = (c.outputs, c.redactor);
    let terminations = opts.report_terminations;
    let opened = reload::Opened {
        file: opts.file.clone(),
        webhooks: opts.webhooks.clone(),
    };
    let m = c.metrics;
    let state_dir = opts.state_dir.clone();
    let keep_free_pct = opts.dumps.as_ref().map_or(0, |d| d.keep_free_pct);
    std::thread::Builder::new()
        .name("reports".into())
        .spawn(move || {
            Reporter {
                embed: c.hand_over,
                go: c.go,
                roots: c.roots,
                sym: Symbolizer::new(cache),
                enricher: c.enricher,
                redactor,
                stdout: (!embedded).then(|| Stdout::new(format)),
                outputs,
                opened,
                written: c.written,
                keys: c.keys,
                stdout_closed: c.stdout_closed,
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
                minidumps: c
                    .dumps
                    .as_ref()
                    .zip(state_dir.as_deref())
                    .and_then(|(_, d)| {
                        let quota = crate::util::quota::Quota {
                            max_bytes: MINIDUMPS_MAX_BYTES,
                            keep_free_pct,
                        };
                        crate::outputs::minidump::Kept::open(d, quota)
                            .map_err(|e| tracing::warn!("no minidumps kept: {e}"))
                            .ok()
                    }),
                dumps: c.dumps,
            }
            .run(queue)
        })
        .context("starting the report thread")
}

/// Learns the processes already running (their programs, roots, containers, Go binaries).
fn seed(p: &mut Pipeline) -> usize {
    let seeded = enrich::scan_proc();
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
    n
}
