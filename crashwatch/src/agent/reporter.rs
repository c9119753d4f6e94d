//! The report thread: each finished crash, in the order assembled, is symbolized, enriched,
//! redacted, counted into its cluster, queued for the crash history and each output, and
//! written to stdout. Builds the Go prober read are taken in between reports.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use crate::{
    kernel::probe::go::GoView,
    outputs::store,
    outputs::{self as sink, Outputs, Stdout},
    pipeline::assemble::{policy, Crash, Kind},
    pipeline::cluster::{self, Clusters},
    pipeline::enrich::Enricher,
    pipeline::redact::Redactor,
    pipeline::symbolize::{Roots, Symbolizer},
    util::escape::Esc,
};

/// How long a report waits for the Go prober still reading the crashed binary (its first
/// run): the prober reads a binary in milliseconds; this bounds a stuck read.
const GO_PROBE_WAIT: Duration = Duration::from_secs(2);

/// What the report thread does next, in the order queued.
// Nearly every job is a crash: boxing the large variant would only add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    /// A finished crash, and the kernel losses since the previous one.
    Crash { crash: Crash, lost: u64 },
    /// SIGHUP: new outputs and redaction rules from here on.
    Reload(Box<super::reload::Reload>),
    /// Answered when every job queued before it is done (`crashwatch exec`).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The report thread: symbolizes, enriches and writes each crash in the order assembled.
pub(super) struct Reporter {
    /// `crashwatch exec`'s cgroup and where its crashes go.
    pub(super) embed: Option<(String, tokio::sync::mpsc::UnboundedSender<Arc<sink::Item>>)>,
    pub(super) go: GoView,
    pub(super) roots: Arc<Roots>,
    pub(super) sym: Symbolizer,
    pub(super) enricher: Enricher,
    pub(super) redactor: Redactor,
    pub(super) stdout: Option<Stdout>,
    /// The outputs besides stdout, each on its own thread.
    pub(super) outputs: Outputs,
    /// What `outputs` were opened from.
    pub(super) opened: super::reload::Opened,
    /// Crashes finished with, for the record loop's release of the ring buffer.
    pub(super) written: Arc<std::sync::atomic::AtomicU64>,
    /// Where their keys go for the next agent (with a pinned ring buffer and a state dir).
    pub(super) keys: Option<super::hold::Keys>,
    pub(super) stdout_closed: Arc<AtomicBool>,
    /// Reports that could not be written to stdout.
    pub(super) unwritten: u64,
    /// Crashes counted by fingerprint.
    pub(super) clusters: Clusters,
    /// The crash history's thread, when there is one.
    pub(super) store: Option<store::Writer>,
    pub(super) metrics: Arc<sink::metrics::Metrics>,
    /// `crashwatch_sink_errors_total{sink="stdout"}`.
    pub(super) stdout_errors: prometheus_client::metrics::counter::Counter,
    pub(super) stdout_delivered: prometheus_client::metrics::counter::Counter,
    /// The symbolizer's memory bound, to start it afresh after a panic.
    pub(super) cache_bytes: usize,
    /// Reports whose building panicked (sent without their stack), and crashes that could
    /// not be reported at all.
    pub(super) build_panics: u64,
    pub(super) unbuilt: u64,
    /// Which terminations are reported (all are counted).
    pub(super) terminations: policy::ReportTerminations,
    /// Kernel losses a termination that was not reported carried, for the next report.
    pub(super) carried_lost: u64,
    /// Fault injection for the tests (`CRASHWATCH_FAILPOINT_REPORT_PANIC=COMM`): building
    /// the report of a process with this name panics.
    pub(super) failpoint: Option<String>,
    /// Core dumps (`--dumps`), and how long a report waits for one still being read.
    pub(super) dumps: Option<(Arc<crate::kernel::coredump::Dumps>, Duration)>,
    /// Where minidumps are kept (`--dumps` with a state directory).
    pub(super) minidumps: Option<sink::minidump::Kept>,
}

/// What the report thread says when it ends.
pub(super) struct Reported {
    pub(super) build_panics: u64,
    pub(super) unbuilt: u64,
    pub(super) unwritten: u64,
    pub(super) symbolization: String,
    /// What the crash history's thread did; None without one.
    pub(super) stored: Option<store::Stored>,
    /// Build sightings the report thread took too late to keep.
    pub(super) seen_dropped: u64,
    /// One line per output besides stdout.
    pub(super) outputs: Vec<String>,
}

impl Reporter {
    pub(super) fn run(mut self, jobs: mpsc::Receiver<Job>) -> Reported {
        loop {
            // Builds the prober read are taken in before each report (a crash of a binary
            // just deployed is judged against its exec) and every few seconds, so their
            // first sightings reach the store without a crash.
            let job = jobs.recv_timeout(Duration::from_secs(5));
            self.note_builds();
            // Loops end by time as well as begin by crashes.
            self.metrics
                .loops
                .set(self.clusters.looping_now(crate::model::clock::now_ns()) as i64);
            let (crash, lost) = match job {
                Ok(Job::Crash { crash, lost }) => (crash, lost),
                Ok(Job::Reload(r)) => {
                    self.reload(*r);
                    continue;
                }
                Ok(Job::Flush(done)) => {
                    let _ = done.send(());
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let lost = lost + std::mem::take(&mut self.carried_lost);
            if crash.kind == Kind::Termination {
                // Not a crash: counted, and reported only when asked for.
                self.metrics.terminated(
                    (crash.status & 0x7f) as i32,
                    self.enricher.namespace(&crash).as_deref(),
                    crash
                        .asked
                        .is_some_and(|(_, ns)| ns <= policy::GRACE_WINDOW_NS),
                );
                let sig = (crash.status & 0x7f) as i32;
                if !self.terminations.wants(sig) || self.embed.is_some() {
                    // Its losses are the next report's to say.
                    self.carried_lost = lost;
                    self.written.fetch_add(1, Ordering::Release);
                    if let Some(k) = &mut self.keys {
                        k.note((crash.head.pid, crash.head.start_ns));
                    }
                    continue;
                }
            }
            if self.stdout_closed.load(Ordering::Relaxed) {
                self.unwritten += 1;
            } else if let Some(report) = self.build_guarded(&crash, lost) {
                self.publish(report);
            }
            // Done with, written or not: its records may go back to the kernel (see `hold`).
            if let Some(k) = &mut self.keys {
                k.note((crash.head.pid, crash.head.start_ns));
            }
            self.written.fetch_add(1, Ordering::Release);
        }
        Reported {
            build_panics: self.build_panics,
            unbuilt: self.unbuilt,
            unwritten: self.unwritten,
            symbolization: self.sym.summary(),
            stored: self.store.take().map(store::Writer::finish),
            seen_dropped: self.go.seen_dropped(),
            outputs: std::mem::take(&mut self.outputs).finish(),
        }
    }

    fn note_builds(&mut self) {
        for seen in self.go.take_seen() {
            let Some((program, revision)) = cluster::attribution::build_of_binary(
                &seen.exe,
                seen.build.as_ref(),
                seen.gnu_build_id.as_deref(),
            ) else {
                continue;
            };
            let s = cluster::attribution::Sighting {
                program,
                revision,
                at_ns: seen.at_ns,
            };
            if self.clusters.see_build(&s) {
                if let Some(w) = &mut self.store {
                    w.write_build(s);
                }
            }
        }
    }

    /// Builds the report; when that panics (a parser of some binary's tables, ours or a
    /// crate's, meeting input it did not expect), says so, starts the symbolizer afresh (it
    /// may be half-updated) and reports what is known without the stack and the binary's
    /// details, with `report_error` saying why. The report thread goes on either way.
    fn build_guarded(&mut self, crash: &Crash, lost: u64) -> Option<crate::model::report::Report> {
        use std::panic::{catch_unwind, AssertUnwindSafe};
        let err = match catch_unwind(AssertUnwindSafe(|| self.build(crash, lost))) {
            Ok(r) => return Some(r),
            Err(e) => e,
        };
        let why = err
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        self.build_panics += 1;
        tracing::warn!(
            "building the report of pid {} ({}) panicked ({}): reporting it without its stack",
            crash.head.pid,
            Esc(&crash.head.comm),
            Esc(&why)
        );
        self.sym = Symbolizer::new(self.cache_bytes);
        match catch_unwind(AssertUnwindSafe(|| {
            self.enricher.report(crash, Vec::new(), lost, None)
        })) {
            Ok(mut r) => {
                r.report_error = Some(format!(
                    "building the full report failed ({why}): no stack, no Go binary details"
                ));
                Some(r)
            }
            Err(_) => {
                self.unbuilt += 1;
                None
            }
        }
    }

    /// Symbolizes and enriches one crash.
    fn build(&mut self, crash: &Crash, lost: u64) -> crate::model::report::Report {
        if self
            .failpoint
            .as_deref()
            .is_some_and(|f| f == crash.head.comm)
        {
            panic!("failpoint CRASHWATCH_FAILPOINT_REPORT_PANIC");
        }
        let go = &self.go;
        let root = crash
            .proc
            .as_ref()
            .and_then(|p| p.root)
            .and_then(|k| self.roots.get(k));
        let stack = self
            .sym
            .frames(crash, &|id| go.held_file(id), root.as_deref());
        let bin = crash
            .proc
            .as_ref()
            .and_then(|p| p.file)
            .and_then(|id| self.go.lookup_settled(id, GO_PROBE_WAIT));
        // The process's exit, which closed this crash, follows its dump: a dump is filed
        // by now unless it is still being read past the timeout.
        let dump = self
            .dumps
            .as_ref()
            .filter(|_| crash.signal.is_some())
            .and_then(|(d, wait)| d.take(crash.head.pid, *wait + Duration::from_secs(1)));
        let threads = dump.as_ref().map(|d| {
            self.sym
                .threads(crash, d, &|id| go.held_file(id), root.as_deref())
        });
        // A CPython's own frames among the crashed thread's native ones, as in `threads`.
        let py = dump.as_ref().and_then(|d| {
            let crashed = d.threads.iter().find(|t| t.crashed)?;
            crate::pipeline::symbolize::python::frames_of(d.python.as_ref()?, crashed)
        });
        let stack = match py {
            Some(py) => crate::pipeline::symbolize::python::interleave(&stack, py),
            None => stack,
        };
        let mut report = self.enricher.report(crash, stack, lost, bin.as_deref());
        if let (Some(d), Some((threads, images))) = (dump, threads) {
            report.threads = threads;
            let kept = self.keep_minidump(crash, &d, &images);
            report.dump = Some(crate::model::report::DumpInfo {
                bytes: d.bytes,
                held_ms: d.held_ms,
                cut: d.cut.clone(),
                minidump: kept.as_ref().ok().cloned(),
                minidump_missing: kept.err().flatten(),
                root: d.root.as_ref().map(|p| p.display().to_string()),
                python: d.python.as_ref().map(|p| crate::model::report::PythonInfo {
                    version: p.version.clone(),
                    threads: p.threads.len() as u32,
                    cut: (!p.cut.is_empty()).then(|| p.cut.join("; ")),
                }),
                images: images
                    .iter()
                    .map(|i| crate::model::report::ImageInfo {
                        path: i.path.clone(),
                        base: i.base,
                        size: i.end.saturating_sub(i.base),
                        build_id: i.build_id.as_deref().map(crate::model::hex::bytes),
                    })
                    .collect(),
                ..Default::default()
            });
            if let Some(info) = report.dump.as_mut() {
                self.file_core(crash, &d, info);
            }
        }
        report
    }

    /// Files the dump's whole core (`--keep-cores`) under the report's name.
    fn file_core(
        &self,
        crash: &Crash,
        d: &crate::model::dump::Dump,
        info: &mut crate::model::report::DumpInfo,
    ) {
        info.core_missing = d.core_missing.clone();
        let (Some(core), Some(cores)) = (
            &d.core,
            self.dumps.as_ref().and_then(|(x, _)| x.cores.as_ref()),
        ) else {
            return;
        };
        let name = format!("{}-{}.core.zst", crash.head.pid, crash.head.start_ns);
        match cores.file(core, &name) {
            Ok(p) => {
                info.core = Some(p.display().to_string());
                info.core_bytes = core.bytes;
            }
            Err(e) => info.core_missing = Some(format!("filing it: {e}")),
        }
    }

    /// Writes the dump's minidump where they are kept: its path, or why it was not kept
    /// (none: minidumps are not kept, no state directory).
    fn keep_minidump(
        &mut self,
        crash: &Crash,
        d: &crate::model::dump::Dump,
        images: &[crate::model::dump::Image],
    ) -> Result<String, Option<String>> {
        let kept = self.minidumps.as_mut().ok_or(None)?;
        let name = format!("{}-{}.dmp", crash.head.pid, crash.head.start_ns);
        match kept.keep(&name, d, images) {
            Ok(p) => Ok(p.display().to_string()),
            Err(e) => {
                tracing::warn!("keeping the minidump of pid {}: {e}", crash.head.pid);
                Err(Some(e.to_string()))
            }
        }
    }

    /// Redacts, clusters, stores and writes out one report.
    fn publish(&mut self, mut report: crate::model::report::Report) {
        // `crashwatch exec`: only its tree's crashes, handed over, never clustered or stored.
        if let Some((cgroup, _)) = &self.embed {
            if !super::embed::within(report.cgroup.as_deref(), cgroup) {
                return;
            }
        }
        self.redactor.report(&mut report);
        if report.kind == Kind::Termination.as_str() {
            // Asked for, and no crash: written out, never clustered, stored or alerted on.
            let json = serde_json::to_string(&report).unwrap_or_default();
            self.emit_stdout(&report, &json);
            if !self.outputs.is_empty() {
                self.outputs.send(Arc::new(sink::Item { report, json }));
            }
            return;
        }
        report.fingerprint = cluster::fingerprint::fingerprint(&report).value;
        if let Some((_, to)) = &self.embed {
            let json = serde_json::to_string(&report).unwrap_or_default();
            let _ = to.send(Arc::new(sink::Item { report, json }));
            return;
        }
        let seen = self
            .clusters
            .observe(&report, crate::model::clock::now_ns());
        report.cluster = Some(seen.info);
        self.metrics.crashed(&report);
        let json = serde_json::to_string(&report).unwrap_or_default();
        if let Some(w) = &mut self.store {
            if let Some(s) = seen.new_build {
                w.write_build(s);
            }
            w.write(store::Write {
                cluster: seen.cluster,
                facts: store::Facts::of(&report, seen.build),
                json: json.clone(),
            });
        }
        self.emit_stdout(&report, &json);
        if !self.outputs.is_empty() {
            self.outputs.send(Arc::new(sink::Item { report, json }));
        }
    }

    fn emit_stdout(&mut self, report: &crate::model::report::Report, json: &str) {
        let Some(out) = &mut self.stdout else {
            return;
        };
        match out.emit(report, json) {
            Ok(()) => {
                self.stdout_delivered.inc();
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.unwritten += 1;
                self.stdout_errors.inc();
                if self.outputs.is_empty() {
                    self.stdout_closed.store(true, Ordering::Relaxed);
                } else {
                    tracing::warn!(
                        "stdout is closed (broken pipe): reports go to the other outputs only"
                    );
                    self.stdout = None;
                }
            }
            Err(e) => {
                self.unwritten += 1;
                self.stdout_errors.inc();
                tracing::warn!(
                    "writing the report of pid {} ({}) failed: {e}",
                    report.pid,
                    Esc(&report.comm)
                );
            }
        }
    }
}
