//! C and C++ programs' dying words, printed by their libraries: libstdc++'s `terminate called
//! after throwing an instance of 'T'` with `  what():  msg`; glibc's failed assertion
//! (`prog: file.c:12: func: Assertion `x' failed.`), its heap-corruption checks
//! (`free(): double free detected in tcache 2`) and fortify's `*** stack smashing detected
//! ***: terminated`; and the sanitizers' reports (`==PID==ERROR: AddressSanitizer: …` with
//! `#N 0x… in f file:line` frames).
use super::{capped, file_line_col, Death, Frame, Lines, MAX_FRAMES};

/// glibc's malloc_printerr messages (malloc/malloc.c), by their start.
pub(super) const HEAP: [&str; 12] = [
    "free(): ",
    "malloc(): ",
    "realloc(): ",
    "calloc(): ",
    "munmap_chunk(): ",
    "malloc_consolidate(): ",
    "_int_malloc(): ",
    "_int_free(): ",
    "tcache_thread_shutdown(): ",
    "double free or corruption",
    "corrupted size vs. prev_size",
    "corrupted double-linked list",
];

pub(super) fn parse(lines: &Lines) -> Option<Death> {
    let i = lines.last(|l| kind(l).is_some())?;
    let line = lines.text(i);
    let start = lines.at(i);
    match kind(line)? {
        Kind::Terminate => {
            let ty = line
                .strip_prefix("terminate called after throwing an instance of '")
                .and_then(|t| t.strip_suffix('\''));
            let what = lines
                .text(i + 1)
                .strip_prefix("  what():  ")
                .unwrap_or_default();
            Some(Death {
                runtime: "c++",
                reason: "uncaught_exception",
                headline: capped(line),
                error_type: ty.map(str::to_string),
                message: capped(what),
                start,
                ..Default::default()
            })
        }
        Kind::Assertion => {
            let (location, message) = assertion(line);
            Some(Death {
                runtime: "glibc",
                reason: "assertion",
                headline: capped(line),
                message: capped(message),
                location,
                start,
                ..Default::default()
            })
        }
        Kind::Heap => Some(Death {
            runtime: "glibc",
            reason: "heap_corruption",
            headline: capped(line),
            message: capped(line),
            start,
            ..Default::default()
        }),
        Kind::Fortify => Some(Death {
            runtime: "glibc",
            reason: "stack_smashing",
            headline: capped(line),
            message: capped(
                line.trim_start_matches("*** ")
                    .trim_end_matches(" ***: terminated"),
            ),
            start,
            ..Default::default()
        }),
        Kind::Sanitizer => Some(sanitizer(lines, i)),
    }
}

pub(super) enum Kind {
    Terminate,
    Assertion,
    Heap,
    Fortify,
    Sanitizer,
}

pub(super) fn kind(l: &str) -> Option<Kind> {
    if l.starts_with("terminate called ") {
        Some(Kind::Terminate)
    } else if l.ends_with("' failed.") && l.contains(": Assertion `") {
        Some(Kind::Assertion)
    } else if HEAP.iter().any(|h| l.starts_with(h)) {
        Some(Kind::Heap)
    } else if l.starts_with("*** ") && l.ends_with(" ***: terminated") {
        Some(Kind::Fortify)
    } else if sanitizer_header(l).is_some() {
        Some(Kind::Sanitizer)
    } else {
        None
    }
}

/// `prog: file.c:12: int main(int, char**): Assertion `x == 1' failed.`
fn assertion(line: &str) -> (Option<Frame>, &str) {
    let Some((before, expr)) = line.split_once(": Assertion `") else {
        return (None, line);
    };
    let message = expr.strip_suffix("' failed.").unwrap_or(expr);
    // `prog: file:line: function` — the function may itself hold `: ` (C++ signatures do not,
    // but `operator::` does hold colons), so split at the first two `: `.
    let mut parts = before.splitn(3, ": ");
    let (_prog, loc, func) = (parts.next(), parts.next(), parts.next());
    let location = loc.and_then(file_line_col).map(|mut f| {
        f.function = func.map(str::to_string);
        f
    });
    (location, message)
}

/// `==1234==ERROR: AddressSanitizer: heap-buffer-overflow on address …`: the tool and what
/// follows.
fn sanitizer_header(l: &str) -> Option<(&str, &str)> {
    let rest = l.strip_prefix("==")?;
    let (pid, rest) = rest.split_once("==ERROR: ")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (tool, what) = rest.split_once(": ")?;
    tool.ends_with("Sanitizer").then_some((tool, what))
}

fn sanitizer(lines: &Lines, i: usize) -> Death {
    let line = lines.text(i);
    let (tool, what) = sanitizer_header(line).unwrap_or(("", line));
    let ty = what.split_whitespace().next().unwrap_or("");
    // The first stack after the header is the bad access's.
    let mut frames = Vec::new();
    let mut j = i + 1;
    while j < lines.len() && j < i + 4 && !lines.text(j).trim_start().starts_with("#0 ") {
        j += 1;
    }
    while j < lines.len() && frames.len() < MAX_FRAMES {
        match sanitizer_frame(lines.text(j)) {
            Some(f) => frames.push(f),
            None => break,
        }
        j += 1;
    }
    // The line of `=` the sanitizer prints first.
    let start =
        if i > 0 && lines.text(i - 1).bytes().all(|b| b == b'=') && !lines.text(i - 1).is_empty() {
            i - 1
        } else {
            i
        };
    Death {
        runtime: "sanitizer",
        reason: "sanitizer",
        headline: capped(&format!("{tool}: {what}")),
        error_type: Some(ty.to_string()),
        message: capped(what),
        frames,
        start: lines.at(start),
        ..Default::default()
    }
}

/// `    #0 0x560ca567d1cd in main /tmp/lw/asan.c:2` or `… in _start (/tmp/lw/asan+0x10b0)`.
fn sanitizer_frame(l: &str) -> Option<Frame> {
    let rest = l.trim_start().strip_prefix('#')?;
    let (n, rest) = rest.split_once(' ')?;
    if !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = rest.split_once(" in ").map_or("", |(_, r)| r);
    let (func, loc) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut f = file_line_col(loc).unwrap_or_default();
    if f.file.is_none() && !loc.is_empty() {
        f.file = Some(
            loc.trim_start_matches('(')
                .trim_end_matches(')')
                .to_string(),
        );
    }
    f.function = (!func.is_empty()).then(|| func.to_string());
    Some(f)
}
