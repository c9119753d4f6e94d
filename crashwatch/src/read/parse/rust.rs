//! Rust's dying words: a panic that reached the top of a thread (`thread 'main' panicked at
//! src/main.rs:2:5:` then the message, since 1.73; `thread 'main' panicked at 'msg',
//! src/main.rs:2:5` before; ` (tid)` after the name since 1.91), its `stack backtrace:` when
//! `RUST_BACKTRACE` asked for one, and the runtime's aborts: `has overflowed its stack`,
//! `memory allocation of N bytes failed`.
use super::{capped, file_line_col, Death, Frame, Lines, MAX_FRAMES};

pub(super) fn parse(lines: &Lines) -> Option<Death> {
    let i = lines.last(|l| {
        panic_header(l).is_some()
            || overflow_thread(l).is_some()
            || l.starts_with("memory allocation of ")
    })?;
    let line = lines.text(i);
    let start = lines.at(i);
    if let Some(thread) = overflow_thread(line) {
        return Some(Death {
            runtime: "rust",
            reason: "stack_overflow",
            headline: capped(line),
            message: "stack overflow".into(),
            thread: Some(thread.to_string()),
            start,
            ..Default::default()
        });
    }
    if let Some(rest) = line.strip_prefix("memory allocation of ") {
        if rest.ends_with(" failed") {
            return Some(Death {
                runtime: "rust",
                reason: "out_of_memory",
                headline: capped(line),
                message: capped(line),
                start,
                ..Default::default()
            });
        }
        return None;
    }
    let h = panic_header(line)?;
    let mut message = h.message.map(str::to_string).unwrap_or_default();
    let mut j = i + 1;
    if h.message.is_none() {
        // The current format: the message on the lines after the header, up to the note or
        // the backtrace.
        let mut parts: Vec<&str> = Vec::new();
        while j < lines.len() {
            let l = lines.text(j);
            if l.starts_with("note: ") || l == "stack backtrace:" || panic_header(l).is_some() {
                break;
            }
            parts.push(l);
            j += 1;
            if parts.iter().map(|p| p.len()).sum::<usize>() > super::MAX_TEXT {
                break;
            }
        }
        while parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        message = parts.join("\n");
    }
    let frames = backtrace(lines, j);
    let first = message.lines().next().unwrap_or("");
    Some(Death {
        runtime: "rust",
        reason: "panic",
        headline: capped(&format!(
            "thread '{}' panicked at {}: {first}",
            h.thread, h.location
        )),
        error_type: None,
        message: capped(&message),
        thread: Some(h.thread.to_string()),
        location: file_line_col(h.location),
        frames,
        chain: Vec::new(),
        start,
    })
}

struct Header<'a> {
    thread: &'a str,
    location: &'a str,
    /// The message, in the pre-1.73 format that puts it on the header line.
    message: Option<&'a str>,
}

/// Whether the runtime starts printing a death with this line.
pub(super) fn starts(l: &str) -> bool {
    panic_header(l).is_some()
        || overflow_thread(l).is_some()
        || (l.starts_with("memory allocation of ") && l.ends_with(" failed"))
}

/// `thread 'NAME' (TID) panicked at LOCATION:` or `thread 'NAME' panicked at 'MSG', LOCATION`.
fn panic_header(line: &str) -> Option<Header<'_>> {
    let (thread, rest) = thread_name(line)?;
    let rest = rest.strip_prefix("panicked at ")?;
    if let Some(quoted) = rest.strip_prefix('\'') {
        let (msg, loc) = quoted.rsplit_once("', ")?;
        return Some(Header {
            thread,
            location: loc,
            message: Some(msg),
        });
    }
    Some(Header {
        thread,
        location: rest.strip_suffix(':')?,
        message: None,
    })
}

/// `thread 'NAME' (TID) has overflowed its stack`.
fn overflow_thread(line: &str) -> Option<&str> {
    let (thread, rest) = thread_name(line)?;
    (rest == "has overflowed its stack").then_some(thread)
}

/// `thread 'NAME' ` and the optional `(TID) `: the name and what follows.
fn thread_name(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("thread '")?;
    let (name, rest) = rest.split_once("' ")?;
    let rest = match rest.strip_prefix('(') {
        Some(r) => {
            let (tid, after) = r.split_once(") ")?;
            if !tid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            after
        }
        None => rest,
    };
    Some((name, rest))
}

/// `stack backtrace:` then `  N: function` with `at file:line:col` lines after.
fn backtrace(lines: &Lines, from: usize) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    let mut j = from;
    while j < lines.len() && lines.text(j).starts_with("note: ") {
        j += 1;
    }
    if lines.text(j) != "stack backtrace:" {
        return frames;
    }
    j += 1;
    while j < lines.len() && frames.len() < MAX_FRAMES {
        let l = lines.text(j).trim_start();
        if let Some(at) = l.strip_prefix("at ") {
            if let (Some(f), Some(loc)) = (frames.last_mut(), file_line_col(at)) {
                if f.file.is_none() {
                    (f.file, f.line, f.column) = (loc.file, loc.line, loc.column);
                }
            }
        } else if let Some((n, func)) = l.split_once(": ") {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                break;
            }
            frames.push(Frame {
                function: Some(func.to_string()),
                ..Default::default()
            });
        } else {
            break;
        }
        j += 1;
    }
    frames
}
