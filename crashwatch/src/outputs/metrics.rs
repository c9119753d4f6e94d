//! Prometheus metrics (prometheus-client, the Prometheus text format): what crashed, crash
//! loops now, what was lost on the way, and the agent's own process. Served on `--listen`
//! at `/metrics` ([`crate::web`]).
//!
//! Labels are bounded: `kind` and `signal` take a few dozen values, `namespace` and
//! `container` (a Kubernetes namespace, a container's name) come from the node; past
//! [`MAX_SERIES`] label sets, new ones are counted under `namespace="_other",
//! container="_other"`. Never a pid, a pod name, a fingerprint or a message: each would
//! make a series per crash.
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::{kernel::coredump::Stats, model::report::Report};

/// Label sets of `crashwatch_crashes_total` kept apart.
pub const MAX_SERIES: usize = 1000;
const OTHER: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrashLabels {
    kind: String,
    signal: String,
    namespace: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabel {
    file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TerminationLabels {
    signal: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

pub struct Metrics {
    registry: Registry,
    crashes: Family<CrashLabels, Counter>,
    terminations: Family<TerminationLabels, Counter>,
    grace_kills: Family<NamespaceLabel, Counter>,
    /// Namespaces kept apart in the termination counters (bounded as the crashes' are).
    termination_namespaces: Mutex<HashSet<String>>,
    /// Bytes of last words the kernel could not read.
    unreadable: Counter,
    writes_skipped: Counter,
    series: Mutex<HashSet<CrashLabels>>,
    pub loops: Gauge,
    lost: Family<ReasonLabel, Counter>,
    pub go_probed: Gauge,
    sink_errors: Family<SinkLabel, Counter>,
    delivered: Family<SinkLabel, Counter>,
    /// Reports waiting in the network outputs' spools.
    pub spooled: Gauge,
    dump_files_dropped: Family<FileLabel, Counter>,
    /// The core handler's counts (`--dumps`), once it runs.
    pub dumps: Arc<OnceLock<Arc<Stats>>>,
    /// What the hub's heartbeat says of this node (shared with the hub output's sender).
    pub totals: Arc<Totals>,
}

/// Sums the heartbeat reads without walking the label families.
#[derive(Debug, Default)]
pub struct Totals {
    pub crashes: AtomicU64,
    pub lost: AtomicU64,
    /// Unix ns of the last crash counted; 0: none since the start.
    pub last_crash_ns: AtomicU64,
    /// The kernel programs attached and how last words are read, as the start-up said them
    /// (`{"programs": [...], "last_words": "..."}`); null until the agent is ready.
    pub attached: std::sync::Mutex<serde_json::Value>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let crashes = Family::<CrashLabels, Counter>::default();
        registry.register(
            "crashwatch_crashes",
            "Crashes reported, by kind, fatal signal, Kubernetes namespace and container name",
            crashes.clone(),
        );
        let terminations = Family::<TerminationLabels, Counter>::default();
        registry.register(
            "crashwatch_terminations",
            "Deaths someone asked for (SIGTERM, SIGINT, SIGKILL, SIGPIPE, ...): not crashes, by signal and Kubernetes namespace",
            terminations.clone(),
        );
        let grace_kills = Family::<NamespaceLabel, Counter>::default();
        registry.register(
            "crashwatch_grace_period_kills",
            "SIGKILLs of processes that had been asked to stop (a handled SIGTERM or SIGINT) and had not within their grace period, by Kubernetes namespace",
            grace_kills.clone(),
        );
        let unreadable = Counter::default();
        registry.register(
            "crashwatch_last_words_unreadable_bytes",
            "Bytes of crashed processes' last words the kernel could not read (a page not yet in memory), shown as unreadable in reports",
            unreadable.clone(),
        );
        let writes_skipped = Counter::default();
        registry.register(
            "crashwatch_last_words_writes_skipped",
            "Writes to stderr the kernel's recursion guard made the write hooks skip (preemptible kernels): bytes missing from some process's last words, no crash lost",
            writes_skipped.clone(),
        );
        let loops = Gauge::default();
        registry.register(
            "crashwatch_crash_loops",
            "Crash clusters in a crash loop now (--loop-count crashes within --loop-window)",
            loops.clone(),
        );
        let lost = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "crashwatch_kernel_events_lost",
            "Kernel records lost: ring buffer full, recursion misses not redone, undecodable",
            lost.clone(),
        );
        let go_probed = Gauge::default();
        registry.register(
            "crashwatch_go_binaries_probed",
            "Go binaries whose runtime probes are attached now",
            go_probed.clone(),
        );
        let sink_errors = Family::<SinkLabel, Counter>::default();
        registry.register(
            "crashwatch_sink_errors",
            "Reports an output did not deliver (write failed, queue full), by output",
            sink_errors.clone(),
        );
        let delivered = Family::<SinkLabel, Counter>::default();
        registry.register(
            "crashwatch_reports_delivered",
            "Reports an output delivered: written (stdout, file, store) or accepted with a 2xx (webhook, otlp)",
            delivered.clone(),
        );
        let spooled = Gauge::default();
        registry.register(
            "crashwatch_reports_spooled",
            "Reports waiting in the network outputs' spools (an endpoint down)",
            spooled.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: env!("CRASHWATCH_REVISION").into(),
            })
            .set(1);
        registry.register(
            "crashwatch_build_info",
            "The agent's version and the git revision it was built from",
            build,
        );
        let dump_files_dropped = Family::<FileLabel, Counter>::default();
        registry.register(
            "crashwatch_dump_files_dropped",
            "Minidumps and whole cores (--keep-cores) not kept although asked for (their quota, the free space kept, a write error), by file: each report says why in dump.minidump_missing or dump.core_missing",
            dump_files_dropped.clone(),
        );
        let dumps = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(DumpCollector(dumps.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        registry.register_collector(Box::new(crate::util::log::Unwritten));
        Arc::new(Metrics {
            registry,
            crashes,
            terminations,
            grace_kills,
            termination_namespaces: Mutex::default(),
            unreadable,
            writes_skipped,
            series: Mutex::default(),
            loops,
            lost,
            go_probed,
            sink_errors,
            delivered,
            spooled,
            dump_files_dropped,
            dumps,
            totals: Arc::default(),
        })
    }

    /// Counts a crash.
    pub fn crashed(&self, r: &Report) {
        let mut l = CrashLabels {
            kind: r.kind.to_string(),
            signal: r
                .signal
                .as_ref()
                .map(|s| s.name.clone())
                .or_else(|| r.exit.signal_name.clone())
                .unwrap_or_default(),
            namespace: r
                .k8s
                .as_ref()
                .and_then(|k| k.namespace.clone())
                .unwrap_or_default(),
            container: r
                .k8s
                .as_ref()
                .and_then(|k| k.container.clone())
                .or_else(|| r.container.as_ref().and_then(|c| c.name.clone()))
                .unwrap_or_default(),
        };
        {
            let mut seen = self.series.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.contains(&l) {
                if seen.len() >= MAX_SERIES {
                    l.namespace = OTHER.into();
                    l.container = OTHER.into();
                } else {
                    seen.insert(l.clone());
                }
            }
        }
        self.crashes.get_or_create(&l).inc();
        self.totals.crashes.fetch_add(1, Ordering::Relaxed);
        self.totals
            .last_crash_ns
            .store(crate::model::clock::now_ns(), Ordering::Relaxed);
        if let Some(w) = &r.last_words {
            self.unreadable.inc_by(w.unreadable);
        }
        if let Some(d) = &r.dump {
            for (file, missing) in [("minidump", &d.minidump_missing), ("core", &d.core_missing)] {
                if missing.is_some() {
                    self.dump_files_dropped
                        .get_or_create(&FileLabel { file: file.into() })
                        .inc();
                }
            }
        }
    }

    /// Counts a termination by signal `sig`; `grace_expired`: a SIGKILL after a stop request.
    pub fn terminated(&self, sig: i32, namespace: Option<&str>, grace_expired: bool) {
        let mut namespace = namespace.unwrap_or_default().to_string();
        {
            let mut seen = self
                .termination_namespaces
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !seen.contains(&namespace) {
                if seen.len() >= MAX_SERIES {
                    namespace = OTHER.into();
                } else {
                    seen.insert(namespace.clone());
                }
            }
        }
        self.terminations
            .get_or_create(&TerminationLabels {
                signal: crate::model::signals::name(sig),
                namespace: namespace.clone(),
            })
            .inc();
        if grace_expired && sig == 9 {
            self.grace_kills
                .get_or_create(&NamespaceLabel { namespace })
                .inc();
        }
    }

    /// Writes to stderr the kernel's recursion guard skipped since the last call (bytes
    /// missing from last words, not lost crashes).
    pub fn writes_skipped(&self, n: u64) {
        self.writes_skipped.inc_by(n);
    }

    /// Kernel records lost for `reason` since the last call.
    pub fn lost(&self, reason: &str, n: u64) {
        if n > 0 {
            self.totals.lost.fetch_add(n, Ordering::Relaxed);
            self.lost
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc_by(n);
        }
    }

    /// A handle on output `sink`'s error counter.
    pub fn sink_errors(&self, sink: &str) -> Counter {
        self.sink_errors
            .get_or_create(&SinkLabel { sink: sink.into() })
            .clone()
    }

    /// A handle on output `sink`'s delivered counter.
    pub fn delivered(&self, sink: &str) -> Counter {
        self.delivered
            .get_or_create(&SinkLabel { sink: sink.into() })
            .clone()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry);
        s
    }
}

/// The core handler's counts (`--dumps`), read at each scrape; nothing before it runs.
#[derive(Debug)]
struct DumpCollector(Arc<OnceLock<Arc<Stats>>>);

impl Collector for DumpCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.get() else {
            return Ok(());
        };
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            (
                "crashwatch_dumps_read",
                "Core dumps the kernel streamed to the agent (--dumps) and the agent read",
                r(&s.taken),
            ),
            (
                "crashwatch_dump_bytes_read",
                "Bytes of core dumps read",
                r(&s.bytes),
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let timeout = r(&s.timed_out);
        let cut = [
            ("timeout", timeout),
            ("other", r(&s.cut).saturating_sub(timeout)),
        ];
        counted_by_reason(
            &mut enc,
            "crashwatch_dumps_cut",
            "Dumps read less than whole, by reason: cut at --dump-timeout, or past the reader's bounds or a stream that broke (the report's dump.cut says which)",
            &cut,
        )?;
        let lost = [
            ("busy", r(&s.busy)),
            ("failed", r(&s.failed)),
            ("unclaimed", r(&s.unclaimed)),
        ];
        counted_by_reason(
            &mut enc,
            "crashwatch_dumps_lost",
            "Cores not made into a report's threads, by reason: refused while too many were read at once (busy), a connection that never became a dump (failed), a dump no report took within a minute (unclaimed: its crash's kernel records lost). The crashes themselves are still reported from the kernel's records",
            &lost,
        )?;
        let g = ConstGauge::new(r(&s.held_ms_max) as f64 / 1000.0);
        g.encode(enc.encode_descriptor(
            "crashwatch_dump_hold_seconds_max",
            "The longest a crashing process was held for its dump since the agent started",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// One counter family labelled `reason`, from values read now.
fn counted_by_reason(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut fam = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for &(reason, v) in values {
        let label = ReasonLabel {
            reason: reason.into(),
        };
        ConstCounter::new(v).encode(fam.encode_family(&label)?)?;
    }
    Ok(())
}

/// The `process_*` metrics every Prometheus client library exports, read from /proc/self at
/// each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let tps = procfs::ticks_per_second() as f64;
        let page = procfs::page_size();
        if let Ok(st) = me.stat() {
            let cpu = ConstCounter::new((st.utime + st.stime) as f64 / tps);
            cpu.encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let gauges = [
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    (st.rss * page) as i64,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    st.vsize as i64,
                ),
            ];
            for (name, help, v) in gauges {
                let g = ConstGauge::new(v);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
            if let Ok(boot) = procfs::boot_time_secs() {
                let g = ConstGauge::new(boot as f64 + st.starttime as f64 / tps);
                g.encode(enc.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds",
                    None,
                    g.metric_type(),
                )?)?;
            }
        }
        if let Ok(n) = me.fd_count() {
            let g = ConstGauge::new(n as i64);
            g.encode(enc.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(max) = me
            .limits()
            .ok()
            .and_then(|l| match l.max_open_files.soft_limit {
                procfs::process::LimitValue::Value(v) => Some(v),
                procfs::process::LimitValue::Unlimited => None,
            })
        {
            let g = ConstGauge::new(max as i64);
            g.encode(enc.encode_descriptor(
                "process_max_fds",
                "Maximum open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(kind: &'static str, ns: Option<&str>, container: &str) -> Report {
        Report {
            kind,
            k8s: ns.map(|n| crate::pipeline::enrich::container::K8sInfo {
                namespace: Some(n.into()),
                container: Some(container.into()),
                ..Default::default()
            }),
            ..Report::default()
        }
    }

    #[test]
    fn crashes_are_counted_by_bounded_labels() {
        let m = Metrics::new();
        m.crashed(&crash("go_panic", Some("shop"), "api"));
        m.crashed(&crash("go_panic", Some("shop"), "api"));
        m.crashed(&crash("oom_kill", None, ""));
        m.lost("ring_full", 3);
        m.sink_errors("file").inc();
        let text = m.encode();
        for line in [
            r#"crashwatch_crashes_total{kind="go_panic",signal="",namespace="shop",container="api"} 2"#,
            r#"crashwatch_crashes_total{kind="oom_kill",signal="",namespace="",container=""} 1"#,
            r#"crashwatch_kernel_events_lost_total{reason="ring_full"} 3"#,
            r#"crashwatch_sink_errors_total{sink="file"} 1"#,
            "crashwatch_crash_loops 0",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains("crashwatch_build_info{version="), "{text}");
    }

    #[test]
    fn dump_losses_are_counted_from_reports_and_the_handler() {
        let m = Metrics::new();
        assert!(!m.encode().contains("crashwatch_dumps_read"), "no --dumps");
        let mut r = crash("signal", None, "");
        r.dump = Some(crate::model::report::DumpInfo {
            minidump_missing: Some("quota".into()),
            core_missing: Some("quota".into()),
            ..Default::default()
        });
        m.crashed(&r);
        r.dump.as_mut().unwrap().minidump_missing = None;
        m.crashed(&r);
        let stats = Arc::new(Stats::default());
        stats.taken.store(4, Ordering::Relaxed);
        stats.cut.store(3, Ordering::Relaxed);
        stats.timed_out.store(1, Ordering::Relaxed);
        stats.unclaimed.store(2, Ordering::Relaxed);
        stats.held_ms_max.store(1500, Ordering::Relaxed);
        m.dumps.set(stats).unwrap();
        let text = m.encode();
        for line in [
            r#"crashwatch_dump_files_dropped_total{file="minidump"} 1"#,
            r#"crashwatch_dump_files_dropped_total{file="core"} 2"#,
            "crashwatch_dumps_read_total 4",
            r#"crashwatch_dumps_cut_total{reason="timeout"} 1"#,
            r#"crashwatch_dumps_cut_total{reason="other"} 2"#,
            r#"crashwatch_dumps_lost_total{reason="unclaimed"} 2"#,
            r#"crashwatch_dumps_lost_total{reason="busy"} 0"#,
            "crashwatch_dump_hold_seconds_max 1.5",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn past_the_bound_new_label_sets_share_one_series() {
        let m = Metrics::new();
        for i in 0..MAX_SERIES + 5 {
            m.crashed(&crash("signal", Some(&format!("ns{i}")), "c"));
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("crashwatch_crashes_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1);
        assert!(
            text.contains(r#"namespace="_other",container="_other"} 5"#),
            "the overflow is counted"
        );
    }
}
