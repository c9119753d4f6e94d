//! Outputs: where reports go once they are whole (symbolized, enriched, redacted, clustered);
//! the layer above the pipeline. The crash history is here too ([`store`]). Three consumers
//! stand beside the [`Output`] trait on purpose: stdout is written on the report thread so a
//! report is out before the next is built, the store is also read (the page, `report`) and
//! keeps its own writer thread, and the metrics are pulled by a scraper, not pushed to.
//!
//! Stdout ([`Stdout`]) is written on the report thread itself, flushed per report so a pipe
//! or a log shipper sees each crash as it happens. Every other output ([`Output`]: the file,
//! the webhooks, OTLP) runs on a thread of its own behind a bounded queue
//! ([`Outputs`]), so a slow or failing one never holds up the report thread or another
//! output: a report that finds an output's queue full is dropped for that output and
//! counted, and every report an output could not deliver is counted ([`SinkStats`]) and
//! said at stop.
mod file;
pub mod metrics;
pub mod minidump;
mod otlp;
pub mod pretty;
#[cfg(test)]
mod readback_tests;
pub mod sentry;
mod spool;
pub mod store;
mod webhook;

use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

pub use file::{FileOptions, FileSink};
pub use pretty::{frame, pretty};
pub use webhook::{Webhook, WebhookFormat, WebhookOptions, OTLP_BATCH};

use crate::{model::report::Report, util::escape::Esc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pretty on a terminal, JSON lines otherwise.
    Auto,
    Pretty,
    Json,
    /// Nothing on stdout: the other outputs only.
    None,
}

pub struct Stdout {
    json: bool,
    color: bool,
    off: bool,
    out: io::Stdout,
}

impl Stdout {
    pub fn new(format: Format) -> Self {
        use std::io::IsTerminal;
        let tty = io::stdout().is_terminal();
        let json = match format {
            Format::Auto => !tty,
            Format::Pretty => false,
            Format::Json | Format::None => true,
        };
        Stdout {
            json,
            color: color(tty),
            off: format == Format::None,
            out: io::stdout(),
        }
    }

    /// Writes one report; `json` is its JSON text.
    pub fn emit(&mut self, r: &Report, json: &str) -> io::Result<()> {
        if self.off {
            return Ok(());
        }
        let mut out = self.out.lock();
        if self.json {
            out.write_all(json.as_bytes())?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(pretty(r, self.color).as_bytes())?;
        }
        out.flush()
    }
}

/// Whether readable output to a terminal (`tty`) is colored: unless NO_COLOR is set.
pub fn color(tty: bool) -> bool {
    tty && std::env::var_os("NO_COLOR").is_none()
}

/// One report on its way out: shared by every output's queue.
pub struct Item {
    pub report: Report,
    /// The report as JSON (one line).
    pub json: String,
}

/// An output on a thread of its own.
pub trait Output: Send + 'static {
    /// Writes one report; an error counts it as not delivered.
    fn write(&mut self, item: &Item) -> anyhow::Result<()>;
    /// Called when the queue is empty after a batch: make what was written durable.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The agent stops: finish up; what the output did, when it has more to say than the
    /// reports it took.
    fn close(&mut self) -> Option<String> {
        None
    }
    /// A report written is delivered (the file); false for an output that only queues it
    /// (the spooled ones count their own deliveries).
    fn delivers_on_write(&self) -> bool {
        true
    }
    /// Which output of its kind this is, for the log (a webhook's masked URL); None: the
    /// kind's name says it.
    fn shown(&self) -> Option<String> {
        None
    }
    /// Takes the terminations `--report-terminations` asks for (the file): alerting and
    /// tracking outputs (webhooks, OTLP) take crashes only.
    fn takes_terminations(&self) -> bool {
        false
    }
}

/// What one output did.
#[derive(Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    /// Reports not delivered: the write failed, or the queue was full.
    pub errors: AtomicU64,
    /// The same count, exported (`crashwatch_sink_errors_total`).
    exported: prometheus_client::metrics::counter::Counter,
    /// `crashwatch_reports_delivered_total`, for outputs that deliver on write.
    delivered_exported: Option<prometheus_client::metrics::counter::Counter>,
}

impl SinkStats {
    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.exported.inc();
    }
}

/// Reports waiting for one output; past this, reports are dropped for it and counted.
const QUEUE: usize = 4096;

struct Worker {
    name: &'static str,
    terminations: bool,
    queue: Option<mpsc::SyncSender<Arc<Item>>>,
    thread: Option<JoinHandle<Option<String>>>,
    stats: Arc<SinkStats>,
}

/// The outputs besides stdout.
#[derive(Default)]
pub struct Outputs {
    workers: Vec<Worker>,
}

impl Outputs {
    /// The outputs besides stdout, built from the configuration: the one place they are
    /// made (at start and at each SIGHUP), each said as it opens.
    pub fn open(
        file: Option<FileOptions>,
        webhooks: Vec<WebhookOptions>,
        metrics: &metrics::Metrics,
    ) -> anyhow::Result<Outputs> {
        let mut outputs = Outputs::default();
        if let Some(f) = file {
            let shown = f.path.display().to_string();
            let (sink, warning) = FileSink::open(f)?;
            if let Some(w) = warning {
                tracing::info!("{}", Esc(&w));
            }
            outputs.add("file", sink, metrics)?;
            tracing::info!("reports also go to {}", Esc(&shown));
        }
        for w in webhooks {
            let (name, shown) = (w.name, w.shown());
            let hook = Webhook::start(w, metrics)?;
            outputs.add(name, hook, metrics)?;
            tracing::info!("reports also go to the {}", Esc(&shown));
        }
        Ok(outputs)
    }

    /// Starts `out` on its own thread.
    pub fn add(
        &mut self,
        name: &'static str,
        mut out: impl Output,
        metrics: &metrics::Metrics,
    ) -> anyhow::Result<()> {
        let (queue, rx) = mpsc::sync_channel::<Arc<Item>>(QUEUE);
        let terminations = out.takes_terminations();
        let stats = Arc::new(SinkStats {
            exported: metrics.sink_errors(name),
            delivered_exported: out.delivers_on_write().then(|| metrics.delivered(name)),
            ..SinkStats::default()
        });
        let st = stats.clone();
        let shown = out.shown().unwrap_or_else(|| format!("{name} output"));
        let thread = std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || {
                let mut said = 0u32;
                let mut fail = |what: &str, e: anyhow::Error| {
                    if said < 10 {
                        said += 1;
                        tracing::warn!("{shown}: {what} failed: {e:#}");
                    }
                };
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some(item) = next {
                        match out.write(&item) {
                            Ok(()) => {
                                st.delivered.fetch_add(1, Ordering::Relaxed);
                                if let Some(c) = &st.delivered_exported {
                                    c.inc();
                                }
                            }
                            Err(e) => {
                                fail(&format!("the report of pid {}", item.report.pid), e);
                                st.error();
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    if let Err(e) = out.flush() {
                        fail("syncing", e);
                    }
                }
                out.close()
            })?;
        self.workers.push(Worker {
            name,
            terminations,
            queue: Some(queue),
            thread: Some(thread),
            stats,
        });
        Ok(())
    }

    /// Queues a report for every output that takes it; never waits.
    pub fn send(&self, item: Arc<Item>) {
        let termination = item.report.kind == "termination";
        for w in self
            .workers
            .iter()
            .filter(|w| w.terminations || !termination)
        {
            let sent = w
                .queue
                .as_ref()
                .is_some_and(|q| q.try_send(item.clone()).is_ok());
            if !sent {
                w.stats.error();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Drains every queue; one line per output for the stop line.
    pub fn finish(mut self) -> Vec<String> {
        for w in &mut self.workers {
            w.queue.take();
        }
        self.workers
            .iter_mut()
            .map(|w| {
                let more = w.thread.take().and_then(|t| t.join().ok().flatten());
                let took = format!(
                    "{} output: {} reports taken, {} not (write failed or queue full)",
                    w.name,
                    w.stats.delivered.load(Ordering::Relaxed),
                    w.stats.errors.load(Ordering::Relaxed)
                );
                match more {
                    Some(m) => format!("{took}; {m}"),
                    None => took,
                }
            })
            .collect()
    }
}
