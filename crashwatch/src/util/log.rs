//! The agent's own log, through `tracing`: to stderr as `crashwatch: message` lines (`text`,
//! what a terminal, journald and the tests read; messages that carry what a process chose
//! are escaped where they are made, see [`crate::util::escape`]) or one JSON object per line
//! (`json`: timestamp, level, message, target) for log pipelines that parse fields.
//!
//! The agent outlives its stderr: a line that cannot be written (a closed pipe, `crashwatch
//! run 2>&1 | head -1`; a full disk) is dropped and counted ([`unwritten`]:
//! `crashwatch_log_lines_unwritten_total`, and the stop line), never a panic.
/// `eprintln!` that never panics: the commands' messages before (or without) the log, lost
/// with a closed stderr as the log's own lines are, and the command goes on.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `eprint!` that never panics (see [`say!`]).
#[macro_export]
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

use std::{
    fmt,
    io::{self, Write},
    sync::atomic::{AtomicU64, Ordering},
};

use clap::ValueEnum;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `crashwatch: message`, one line each.
    Text,
    /// `{"timestamp":…,"level":"INFO","message":…,"target":…}` per line.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// Sets the process's log subscriber; a second call (tests) leaves the first in place.
pub fn init(format: Format, level: Level) {
    let level = match level {
        Level::Error => tracing::Level::ERROR,
        Level::Warn => tracing::Level::WARN,
        Level::Info => tracing::Level::INFO,
        Level::Debug => tracing::Level::DEBUG,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(|| Stderr)
        .with_max_level(level)
        .with_ansi(false);
    let _ = match format {
        Format::Text => builder.event_format(Plain).try_init(),
        Format::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Log lines that could not be written, since the start.
static UNWRITTEN: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written.
pub fn unwritten() -> u64 {
    UNWRITTEN.load(Ordering::Relaxed)
}

/// stderr for the log: each event is one `write_all` of its whole line (the formatter's
/// buffer), so a failure is one line lost, counted; the writer itself never fails.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(line).is_err() {
            UNWRITTEN.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `crashwatch_log_lines_unwritten_total` on /metrics, read at each scrape.
#[derive(Debug)]
pub struct Unwritten;

impl prometheus_client::collector::Collector for Unwritten {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::{encoding::EncodeMetric, metrics::counter::ConstCounter};
        let c = ConstCounter::new(unwritten());
        c.encode(enc.encode_descriptor(
            "crashwatch_log_lines_unwritten",
            "The agent's own log lines it could not write (stderr closed or failing)",
            None,
            c.metric_type(),
        )?)
    }
}

/// `crashwatch: ` and the message: a warning reads as a sentence of its own, so the level
/// is left to the words (and to `json`).
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        w.write_str("crashwatch: ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
