//! Python's dying words: an uncaught exception's `Traceback (most recent call last):` with its
//! `File "…", line N, in f` frames and the `Type: message` line, chained by "The above
//! exception was the direct cause of the following exception:" or "During handling of the
//! above exception, another exception occurred:"; exception groups (`+ Exception Group
//! Traceback`, members boxed in `|`); and the interpreter's `Fatal Python error:` with the
//! faulthandler's `Current thread … (most recent call first):` frames.
use super::{capped, Death, Frame, Lines, Link, MAX_CHAIN, MAX_FRAMES};

const TRACEBACK: &str = "Traceback (most recent call last):";
const GROUP: &str = "Exception Group Traceback (most recent call last):";
const CAUSE: &str = "The above exception was the direct cause of the following exception:";
const CONTEXT: &str = "During handling of the above exception, another exception occurred:";

pub(super) fn parse(lines: &Lines) -> Option<Death> {
    let fatal = lines.last(|l| l.starts_with("Fatal Python error: "));
    // The chain's first traceback: walk back over tracebacks joined by the chain's sentences.
    let last_tb = lines.last(is_traceback_start);
    match (fatal, last_tb) {
        (Some(f), Some(t)) if f > t => Some(fatal_error(lines, f)),
        (Some(f), None) => Some(fatal_error(lines, f)),
        (_, Some(t)) => uncaught(lines, chain_start(lines, t)),
        (None, None) => None,
    }
}

pub(super) fn is_traceback_start(l: &str) -> bool {
    let t = strip_group(l);
    t == TRACEBACK || t.ends_with(GROUP)
}

/// Inside an exception group every line is boxed: leading spaces, `|`, `+` and `-` rules.
fn strip_group(l: &str) -> &str {
    l.trim_start_matches([' ', '|', '+', '-'])
}

/// A line of an exception group's box without the box: `  | text` → `text` (source lines
/// keep their extra indentation); the `+-…` rules become blank.
fn unbox(l: &str) -> &str {
    match l.trim_start().strip_prefix('|') {
        Some(r) => r.strip_prefix(' ').unwrap_or(r),
        None => "",
    }
}

/// Walks back from the traceback at `t` over the ones chained before it.
fn chain_start(lines: &Lines, mut t: usize) -> usize {
    loop {
        // `…exception:` then a blank line, after the previous exception's blank line.
        let Some(sentence) = (1..=3)
            .filter_map(|k| t.checked_sub(k))
            .find(|&k| !lines.text(k).is_empty())
        else {
            return t;
        };
        let s = lines.text(sentence);
        if s != CAUSE && s != CONTEXT {
            return t;
        }
        match (0..sentence)
            .rev()
            .take(MAX_FRAMES * 4)
            .find(|&k| is_traceback_start(lines.text(k)))
        {
            Some(prev) => t = prev,
            None => return t,
        }
    }
}

/// The tracebacks from `from` on, each with its exception, joined by the chain's sentences.
fn uncaught(lines: &Lines, from: usize) -> Option<Death> {
    let mut chain: Vec<Link> = Vec::new();
    let mut relation: Option<&'static str> = None;
    let mut j = from;
    let mut frames: Vec<Frame> = Vec::new();
    let mut in_group = false;
    // An exception line counts only after a traceback (or inside a group's box): a log line
    // that looks like `INFO: …` after the death is not another exception.
    let mut expecting = false;
    while j < lines.len() {
        let full = lines.text(j);
        let raw = if in_group { unbox(full) } else { full };
        if is_traceback_start(full) {
            in_group |= full.trim_end().ends_with(GROUP);
            frames.clear();
            expecting = true;
        } else if let Some(f) = file_frame(raw) {
            if frames.len() < MAX_FRAMES {
                frames.push(f);
            }
        } else if raw == CAUSE || raw == CONTEXT {
            relation = Some(if raw == CAUSE {
                "direct_cause"
            } else {
                "during_handling"
            });
        } else if raw.is_empty() || raw.starts_with(' ') {
            // Source lines, carets, blank lines and the group's rules.
        } else if let Some((ty, msg)) = exception_line(raw).filter(|_| expecting || in_group) {
            if chain.len() >= MAX_CHAIN {
                break;
            }
            // Innermost first, as stacks are everywhere else in a report.
            frames.reverse();
            chain.push(Link {
                error_type: Some(ty.to_string()),
                message: capped(msg),
                relation: if chain.is_empty() {
                    None
                } else if in_group && relation.is_none() {
                    Some("group_member")
                } else {
                    relation
                },
                recovered: false,
                frames: std::mem::take(&mut frames),
            });
            relation = None;
            expecting = false;
        } else {
            break;
        }
        j += 1;
    }
    // What killed the process is the last exception printed; a group's is the group itself.
    let top = if in_group {
        chain.first()?
    } else {
        chain.last()?
    }
    .clone();
    let ty = top.error_type.clone().unwrap_or_default();
    let headline = if top.message.is_empty() {
        ty.clone()
    } else {
        format!("{ty}: {}", top.message.lines().next().unwrap_or(""))
    };
    Some(Death {
        runtime: "python",
        reason: "uncaught_exception",
        headline: capped(&headline),
        error_type: top.error_type.clone(),
        message: top.message.clone(),
        thread: None,
        location: None,
        frames: top.frames.clone(),
        chain: if chain.len() > 1 { chain } else { Vec::new() },
        start: lines.at(from),
    })
}

/// `  File "path", line 12, in func` (a traceback) or `  File "path", line 12 in func` (the
/// faulthandler).
fn file_frame(l: &str) -> Option<Frame> {
    let rest = l.trim_start().strip_prefix("File \"")?;
    let (file, rest) = rest.rsplit_once("\", line ")?;
    let (line, func) = match rest.split_once(", in ") {
        Some((n, f)) => (n, Some(f)),
        None => match rest.split_once(" in ") {
            Some((n, f)) => (n, Some(f)),
            None => (rest, None),
        },
    };
    Some(Frame {
        function: func.map(str::to_string),
        file: Some(file.to_string()),
        line: line.trim().parse().ok(),
        column: None,
    })
}

/// `ValueError: message`, `module.Error: message` or a bare `KeyboardInterrupt`.
fn exception_line(l: &str) -> Option<(&str, &str)> {
    let (ty, msg) = match l.split_once(": ") {
        Some((t, m)) => (t, m),
        None => (l.strip_suffix(':').unwrap_or(l), ""),
    };
    let ok = !ty.is_empty()
        && ty.split('.').all(|p| {
            let mut b = p.bytes();
            b.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        });
    ok.then_some((ty, msg))
}

/// `Fatal Python error: Segmentation fault` and the faulthandler's current thread.
fn fatal_error(lines: &Lines, i: usize) -> Death {
    let line = lines.text(i);
    let message = line.trim_start_matches("Fatal Python error: ");
    let mut frames = Vec::new();
    let mut thread = None;
    let mut j = i + 1;
    while j < lines.len() && j < i + 8 && thread.is_none() {
        let l = lines.text(j);
        if let Some(t) = l.strip_prefix("Current thread ") {
            thread = t.split_whitespace().next().map(str::to_string);
        }
        j += 1;
    }
    while thread.is_some() && j < lines.len() && frames.len() < MAX_FRAMES {
        match file_frame(lines.text(j)) {
            Some(f) => frames.push(f),
            None => break,
        }
        j += 1;
    }
    Death {
        runtime: "python",
        reason: "fatal_error",
        headline: capped(line),
        error_type: None,
        message: capped(message),
        thread,
        location: None,
        frames,
        chain: Vec::new(),
        start: lines.at(i),
    }
}
