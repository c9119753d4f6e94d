//! Parsers of what dying programs print: the Go runtime's panics and goroutine dumps, Rust
//! panics, Python tracebacks, Node's uncaught exceptions, Java's uncaught exceptions and JVM
//! fatal errors, C++ `terminate`, glibc's assertion and heap-corruption messages, and the
//! sanitizers' reports. Pure functions over text: the agent runs them on the last words it
//! captured from a dying process, and log analysis runs them on files.
//!
//! Hand-written, because each format is its runtime's own and no crate parses them. Every
//! parser reads its input once, line by line, without backtracking, and keeps at most
//! [`MAX_FRAMES`] frames, [`MAX_CHAIN`] chained errors and [`MAX_TEXT`] bytes of any message:
//! megabytes of hostile text cost one pass and a bounded result.
//!
//! [`recognise`] returns the last death any parser finds (a process may log a handled
//! traceback long before the one that kills it).
pub use crate::model::death::{Death, Frame, Link};

pub mod blocks;
pub mod dump;
pub mod gctrace;
pub mod go;
mod java;
pub mod logs;
pub mod markers;
mod native;
mod node;
mod python;
mod rust;

pub const MAX_FRAMES: usize = 256;
pub const MAX_CHAIN: usize = 32;
pub const MAX_TEXT: usize = 4096;

/// The last death any runtime's parser recognises in `text`.
pub fn recognise(text: &str) -> Option<Death> {
    let lines = Lines::of(text);
    [
        go_death(text, &lines),
        rust::parse(&lines),
        python::parse(&lines),
        node::parse(&lines),
        java::parse(&lines),
        native::parse(&lines),
    ]
    .into_iter()
    .flatten()
    .max_by_key(|d| d.start)
}

/// The text's lines with their byte offsets, line ends (`\n`, `\r\n`) removed.
pub(crate) struct Lines<'a> {
    pub lines: Vec<(usize, &'a str)>,
}

impl<'a> Lines<'a> {
    pub fn of(text: &'a str) -> Self {
        let mut at = 0;
        let lines = text
            .split_inclusive('\n')
            .map(|l| {
                let start = at;
                at += l.len();
                let l = l.strip_suffix('\n').unwrap_or(l);
                (start, l.strip_suffix('\r').unwrap_or(l))
            })
            .collect();
        Lines { lines }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn text(&self, i: usize) -> &'a str {
        self.lines.get(i).map_or("", |l| l.1)
    }

    pub fn at(&self, i: usize) -> usize {
        self.lines.get(i).map_or(0, |l| l.0)
    }

    /// The index of the last line for which `f` holds.
    pub fn last(&self, f: impl Fn(&str) -> bool) -> Option<usize> {
        self.lines.iter().rposition(|l| f(l.1))
    }
}

/// `s` cut to at most [`MAX_TEXT`] bytes on a character boundary.
pub(crate) fn capped(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `file:line[:col]` → a frame's location. The file may hold colons (`node:internal/…`,
/// Windows drives never reach here): the numbers are taken from the right.
pub(crate) fn file_line_col(s: &str) -> Option<Frame> {
    let (rest, last) = s.rsplit_once(':')?;
    let last: u32 = last.parse().ok()?;
    match rest.rsplit_once(':') {
        Some((file, line)) if !file.is_empty() && line.parse::<u32>().is_ok() => Some(Frame {
            file: Some(file.to_string()),
            line: line.parse().ok(),
            column: Some(last),
            function: None,
        }),
        _ if !rest.is_empty() => Some(Frame {
            file: Some(rest.to_string()),
            line: Some(last),
            ..Default::default()
        }),
        _ => None,
    }
}

/// The Go runtime's death: the chain of panics (the first as the headline), a fatal error or
/// a signal dump, with the dying goroutine's frames.
fn go_death(text: &str, lines: &Lines) -> Option<Death> {
    let first = lines.lines.iter().position(|(_, l)| {
        l.starts_with("panic: ") || l.starts_with("fatal error: ") || go::is_signal_header(l)
    })?;
    // Lines the runtime prints before the header (`runtime: out of memory: …`).
    let mut start = first;
    while start > 0 && lines.text(start - 1).starts_with("runtime: ") {
        start -= 1;
    }
    let tb = go::parse(&text[lines.at(start)..]);
    let frames: Vec<Frame> = tb
        .goroutines
        .first()
        .map(|g| {
            g.frames
                .iter()
                .take(MAX_FRAMES)
                .map(|f| Frame {
                    function: Some(f.function.clone()),
                    file: f.file.clone(),
                    line: f.line,
                    column: None,
                })
                .collect()
        })
        .unwrap_or_default();
    let (reason, headline, message) = if let Some(p) = tb.chain.first() {
        let mark = if p.repanicked {
            " [recovered, repanicked]"
        } else if p.recovered {
            " [recovered]"
        } else {
            ""
        };
        let first_line = p.value.lines().next().unwrap_or("");
        (
            "panic",
            format!("panic: {first_line}{mark}"),
            p.value.clone(),
        )
    } else if let Some(m) = &tb.fatal_error {
        ("fatal_error", format!("fatal error: {m}"), m.clone())
    } else {
        let m = tb.fatal_message()?;
        ("fatal_error", m.clone(), m)
    };
    let chain = if tb.chain.len() > 1 {
        tb.chain
            .iter()
            .take(MAX_CHAIN)
            .enumerate()
            .map(|(i, p)| Link {
                error_type: None,
                message: capped(&p.value),
                relation: (i > 0).then_some("while_panicking"),
                recovered: p.recovered,
                frames: Vec::new(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(Death {
        runtime: "go",
        reason,
        headline: capped(&headline),
        error_type: None,
        message: capped(&message),
        thread: tb.goroutines.first().map(|g| format!("goroutine {}", g.id)),
        location: None,
        frames,
        chain,
        start: lines.at(start),
    })
}

#[cfg(test)]
mod tests;
