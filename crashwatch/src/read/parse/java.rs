//! Java's dying words: an exception out of a thread's `run` or `main` (`Exception in thread
//! "main" java.lang.IllegalStateException: msg`, `\tat pkg.C.m(C.java:4)` frames, `Caused
//! by:` and `Suppressed:` chains with their `... N more`), and the JVM's fatal error banner
//! (`# A fatal error has been detected by the Java Runtime Environment:` then `#  SIGSEGV
//! (0xb) at pc=…` and the problematic frame), which the JVM writes to stdout.
use super::{capped, Death, Frame, Lines, Link, MAX_CHAIN, MAX_FRAMES};

const BANNER: &str = "# A fatal error has been detected by the Java Runtime Environment:";

pub(super) fn parse(lines: &Lines) -> Option<Death> {
    let exc = lines.last(|l| l.starts_with("Exception in thread \""));
    let fatal = lines.last(|l| l == BANNER);
    match (exc, fatal) {
        (Some(e), Some(f)) if f > e => Some(fatal_error(lines, f)),
        (None, Some(f)) => Some(fatal_error(lines, f)),
        (Some(e), _) => uncaught(lines, e),
        (None, None) => None,
    }
}

fn uncaught(lines: &Lines, i: usize) -> Option<Death> {
    let line = lines.text(i);
    let rest = line.strip_prefix("Exception in thread \"")?;
    let (thread, exception) = rest.split_once("\" ")?;
    let (ty, msg) = type_and_message(exception);
    let mut chain = vec![Link {
        error_type: Some(ty.to_string()),
        message: capped(msg),
        ..Default::default()
    }];
    let mut j = i + 1;
    while j < lines.len() {
        let l = lines.text(j);
        let t = l.trim_start();
        if let Some(f) = t.strip_prefix("at ").and_then(frame) {
            let link = chain
                .last_mut()
                .expect("the chain starts with the exception");
            if link.frames.len() < MAX_FRAMES {
                link.frames.push(f);
            }
        } else if t.starts_with("... ") && t.ends_with(" more") {
            // Frames in common with the enclosing trace.
        } else if let Some((relation, e)) = t
            .strip_prefix("Caused by: ")
            .map(|e| ("caused_by", e))
            .or_else(|| t.strip_prefix("Suppressed: ").map(|e| ("suppressed", e)))
        {
            if chain.len() >= MAX_CHAIN {
                break;
            }
            let (ty, msg) = type_and_message(e);
            chain.push(Link {
                error_type: Some(ty.to_string()),
                message: capped(msg),
                relation: Some(relation),
                ..Default::default()
            });
        } else {
            break;
        }
        j += 1;
    }
    let top = chain[0].clone();
    Some(Death {
        runtime: "java",
        reason: "uncaught_exception",
        headline: capped(line),
        error_type: top.error_type,
        message: top.message,
        thread: Some(thread.to_string()),
        location: None,
        frames: top.frames,
        chain: if chain.len() > 1 { chain } else { Vec::new() },
        start: lines.at(i),
    })
}

/// `java.lang.IllegalStateException: msg` or a bare type.
fn type_and_message(e: &str) -> (&str, &str) {
    match e.split_once(": ") {
        Some((t, m)) if !t.contains(' ') => (t, m),
        _ => (e.trim(), ""),
    }
}

/// `java.base/java.lang.Integer.parseInt(Integer.java:668)`, `(Native Method)`,
/// `(Unknown Source)`.
fn frame(s: &str) -> Option<Frame> {
    let inner = s.strip_suffix(')')?;
    let (func, loc) = inner.split_once('(')?;
    let (file, line) = match loc.rsplit_once(':') {
        Some((f, n)) => (f, n.parse().ok()),
        None => (loc, None),
    };
    Some(Frame {
        function: Some(func.to_string()),
        file: Some(file.to_string()),
        line,
        column: None,
    })
}

/// The hs_err banner: `#  SIGSEGV (0xb) at pc=…, pid=…, tid=…` and `# Problematic frame:`.
fn fatal_error(lines: &Lines, i: usize) -> Death {
    let mut headline = String::new();
    let mut frames = Vec::new();
    let mut j = i + 1;
    while j < lines.len() && j < i + 40 {
        let l = lines.text(j);
        let Some(body) = l.strip_prefix('#') else {
            break;
        };
        let body = body.trim();
        if headline.is_empty() && !body.is_empty() {
            headline = body.to_string();
        }
        if body == "Problematic frame:" {
            if let Some(f) = lines.text(j + 1).strip_prefix('#') {
                frames.push(Frame {
                    function: Some(f.trim().to_string()),
                    ..Default::default()
                });
            }
        }
        j += 1;
    }
    Death {
        runtime: "java",
        reason: "fatal_error",
        headline: capped(&headline),
        message: capped(&headline),
        frames,
        start: lines.at(i.saturating_sub(1)),
        ..Default::default()
    }
}
