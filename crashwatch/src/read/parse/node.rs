//! Node's dying words: an uncaught exception or unhandled rejection — the source location
//! and line with a caret, a blank line, `Name: message`, its `    at …` frames (then, for
//! errors with properties, a `{ … }` block) and `Node.js vN` — and V8's fatal errors
//! (`FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory`).
use super::{capped, file_line_col, Death, Frame, Lines, MAX_FRAMES};

pub(super) fn parse(lines: &Lines) -> Option<Death> {
    let fatal = lines.last(|l| l.starts_with("FATAL ERROR: "));
    let frame = lines.last(|l| at_frame(l).is_some());
    match (fatal, frame) {
        (Some(f), Some(a)) if f > a => Some(fatal_error(lines, f)),
        (Some(f), None) => Some(fatal_error(lines, f)),
        (_, Some(a)) => uncaught(lines, a),
        (None, None) => None,
    }
}

fn fatal_error(lines: &Lines, i: usize) -> Death {
    let line = lines.text(i);
    let message = line.trim_start_matches("FATAL ERROR: ");
    let oom = message.contains("heap out of memory") || message.contains("Allocation failed");
    // V8 prints its last garbage collections before an out-of-memory death.
    let mut start = i;
    if let Some(gc) = (i.saturating_sub(40)..i)
        .rev()
        .find(|&k| lines.text(k).starts_with("<--- Last few GCs --->"))
    {
        start = gc;
    }
    Death {
        runtime: "node",
        reason: if oom { "out_of_memory" } else { "fatal_error" },
        headline: capped(line),
        message: capped(message),
        start: lines.at(start),
        ..Default::default()
    }
}

/// From the last `at` frame back to the error line above the frames, and the source
/// location above that.
fn uncaught(lines: &Lines, last_frame: usize) -> Option<Death> {
    let mut first_frame = last_frame;
    while first_frame > 0 && at_frame(lines.text(first_frame - 1)).is_some() {
        first_frame -= 1;
    }
    let err = first_frame.checked_sub(1)?;
    let (ty, message) = error_line(lines.text(err))?;
    // Node ends an uncaught exception with its version line: without it this may be any
    // program's logged stack.
    let after = (last_frame + 1..lines.len().min(last_frame + 40))
        .find(|&k| lines.text(k).starts_with("Node.js v"));
    let thrown = (err >= 4)
        .then(|| err - 4)
        .filter(|&k| lines.text(k + 3).is_empty() && file_line_col(lines.text(k)).is_some());
    if after.is_none() && thrown.is_none() {
        return None;
    }
    let frames = (first_frame..=last_frame)
        .take(MAX_FRAMES)
        .filter_map(|k| at_frame(lines.text(k)))
        .collect();
    let location = thrown.and_then(|k| file_line_col(lines.text(k)));
    let start = thrown.unwrap_or(err);
    Some(Death {
        runtime: "node",
        reason: "uncaught_exception",
        headline: capped(lines.text(err)),
        error_type: Some(ty.to_string()),
        message: capped(message),
        thread: None,
        location,
        frames,
        chain: Vec::new(),
        start: lines.at(start),
    })
}

/// `TypeError: msg`, `Error`, `[Error: msg]`-less forms: an identifier, then `: ` or nothing.
fn error_line(l: &str) -> Option<(&str, &str)> {
    let (ty, msg) = l.split_once(": ").unwrap_or((l, ""));
    let mut b = ty.bytes();
    let ok = b
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b'$')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'.');
    ok.then_some((ty, msg))
}

/// `    at f (file:1:2)`, `    at file:1:2`, `    at async f (…)`, `    at new C (…)`.
fn at_frame(l: &str) -> Option<Frame> {
    let rest = l.strip_prefix("    at ")?;
    if let Some(inner) = rest.strip_suffix(')') {
        let (func, loc) = inner.rsplit_once(" (")?;
        let mut f = file_line_col(loc).unwrap_or(Frame {
            file: Some(loc.to_string()),
            ..Default::default()
        });
        f.function = Some(func.to_string());
        return Some(f);
    }
    Some(file_line_col(rest).unwrap_or(Frame {
        function: Some(rest.to_string()),
        ..Default::default()
    }))
}
