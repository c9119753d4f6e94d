//! The agent's own log, through `tracing`: to stderr as `crashwatch: message` lines (`text`,
//! what a terminal, journald and the tests read; messages that carry what a process chose
//! are escaped where they are made, see [`crate::escape`]) or one JSON object per line
//! (`json`: timestamp, level, message, target) for log pipelines that parse fields.
use std::fmt;

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
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false);
    let _ = match format {
        Format::Text => builder.event_format(Plain).try_init(),
        Format::Json => builder.json().flatten_event(true).try_init(),
    };
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
