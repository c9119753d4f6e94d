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
use serde::{Deserialize, Serialize};

pub mod blocks;
pub mod dump;
pub mod gctrace;
pub mod go;
mod java;
pub mod logs;
mod native;
mod node;
mod python;
mod rust;

pub const MAX_FRAMES: usize = 256;
pub const MAX_CHAIN: usize = 32;
pub const MAX_TEXT: usize = 4096;

/// A frame as a runtime printed it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Frame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

/// One error of a chain (Python's causes and contexts, Java's `Caused by:`, Go's nested
/// panics), in the order the runtime printed them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Link {
    #[serde(rename = "type")]
    pub error_type: Option<String>,
    pub message: String,
    /// How this error relates to the one printed before it, in the runtime's words:
    /// `direct_cause` (Python: the one before caused this), `during_handling` (Python: this
    /// was raised while handling the one before), `group_member` (a Python exception group's
    /// member), `caused_by` (Java: this caused the one before), `suppressed` (Java),
    /// `while_panicking` (Go: raised by a deferred call of the panic before). Absent on the
    /// first.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::readback::interned_opt"
    )]
    pub relation: Option<crate::readback::Name>,
    /// Go: marked `[recovered]` (a deferred call recovered it, then panicked).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    pub frames: Vec<Frame>,
}

/// A death a runtime announced in its own words.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Death {
    /// `go`, `rust`, `python`, `node`, `java`, `c++`, `glibc` or `sanitizer`.
    #[serde(deserialize_with = "crate::readback::interned")]
    pub runtime: crate::readback::Name,
    /// `panic`, `fatal_error`, `uncaught_exception`, `stack_overflow`, `out_of_memory`,
    /// `assertion`, `heap_corruption`, `stack_smashing` or `sanitizer`.
    #[serde(deserialize_with = "crate::readback::interned")]
    pub reason: crate::readback::Name,
    /// The runtime's error line, as printed (one line).
    pub headline: String,
    /// The error's type, where the runtime names one (`ValueError`,
    /// `java.lang.IllegalStateException`, `std::runtime_error`, `heap-buffer-overflow`).
    #[serde(rename = "type")]
    pub error_type: Option<String>,
    pub message: String,
    /// The thread the runtime names (`main`, `worker-7`).
    pub thread: Option<String>,
    /// Where the runtime says the error was raised, when it says so apart from a stack (a
    /// Rust panic's `file:line:col`, a failed assertion's, Node's source line).
    pub location: Option<Frame>,
    /// The runtime's stack for the error that killed the process, innermost first.
    pub frames: Vec<Frame>,
    /// Every error of the chain in printed order, this one included; empty when there is
    /// only one.
    pub chain: Vec<Link>,
    /// Byte offset in the text where the runtime started printing this death, look-back
    /// lines included (Node's source location, Go's `runtime:` lines).
    #[serde(skip)]
    pub start: usize,
}

impl Death {
    /// Whether a process that exited with `code` died of this (rather than printed it and
    /// went on to exit for another reason): each runtime's exit code for its unhandled
    /// errors. Deaths by signal need no such check.
    pub fn explains_exit(&self, code: u32) -> bool {
        match (self.runtime, self.reason) {
            (_, "stack_overflow" | "out_of_memory") if code == 134 => true,
            ("go", _) => code == 2,
            ("rust", _) => code == 101,
            ("python", "uncaught_exception") => code == 1,
            ("node", _) => code == 1 || code == 7,
            // The JVM exits 1 after its fatal-error banner with -XX:-CreateCoredumpOnCrash.
            ("java", _) => code == 1,
            // ASan's default exitcode; LeakSanitizer's too.
            ("sanitizer", _) => code == 1 || code == 23,
            _ => false,
        }
    }
}

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
