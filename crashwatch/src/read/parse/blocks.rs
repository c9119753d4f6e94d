//! Where in a stream of log lines a runtime printed a death: the first and last line of each
//! Go panic, fatal error or signal dump (goroutines included), Python traceback (chained
//! ones together), Rust panic, Java uncaught exception or JVM fatal-error banner, Node
//! uncaught exception or fatal error, C++ terminate, glibc assertion or heap check, and
//! sanitizer report. What the death was is then the parsers' business ([`super::recognise`]
//! on the block's text): this module only knows each runtime's shape well enough to tell
//! its lines from the program's other output.
//!
//! Streaming and bounded: a block keeps at most [`MAX_TEXT`] bytes of text (the head, where
//! the error and the dying goroutine are), its range grows on; a Go block's goroutines are
//! folded as they pass ([`super::dump`]), so a dump of a million goroutines costs no more
//! memory than one.
use std::collections::VecDeque;

use super::{dump::Fold, go, native, python, rust};

/// Bytes of a block's text kept for the parsers.
pub const MAX_TEXT: usize = 1 << 20;
/// Lines a shape that cannot tell its end (a Rust message, a Go panic value, a sanitizer
/// report) may run to.
const MAX_LOOSE: u32 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Go,
    Python,
    PythonFatal,
    Rust,
    Java,
    JvmFatal,
    NodeSource,
    NodeFatal,
    Terminate,
    OneLine,
    Sanitizer,
}

/// A death as printed: where and what.
#[derive(Debug)]
pub struct Block {
    pub first_line: u64,
    pub last_line: u64,
    /// The block's lines, up to [`MAX_TEXT`] bytes.
    pub text: String,
    /// Lines past [`MAX_TEXT`] were not kept in `text`.
    pub truncated: bool,
    /// A Go block's goroutines, folded.
    pub goroutines: Option<Fold>,
}

struct Open {
    shape: Shape,
    block: Block,
    phase: u8,
    /// Lines since the block began.
    lines: u32,
    /// Whether a Go block has reached its goroutines.
    dump: bool,
    /// The last non-empty line was GOTRACEBACK=crash's `-----` between threads.
    rule: bool,
    parser: Option<go::Parser>,
}

#[derive(Default)]
pub struct Finder {
    open: Option<Open>,
    /// Lines that belong to a block if one starts next (`runtime: …` before Go's fatal
    /// error, `#` before the JVM's banner, a `SIG…:` line until its `PC=` line comes).
    back: VecDeque<(u64, String)>,
}

impl Finder {
    /// One line; `done` gets each block this line ended.
    pub fn push(&mut self, text: &str, line: u64, done: &mut impl FnMut(Block)) {
        if let Some(o) = self.open.as_mut() {
            match o.accepts(text) {
                Take::Line => {
                    o.add(text, line);
                    return;
                }
                Take::Last => {
                    o.add(text, line);
                    let o = self.open.take().unwrap();
                    done(o.close());
                    return;
                }
                Take::No => done(self.open.take().unwrap().close()),
            }
        }
        if let Some(shape) = start(text, self.back.back().map(|b| b.1.as_str())) {
            let mut o = Open::new(shape);
            for (l, t) in self.back.drain(..) {
                if lookback(shape, &t) {
                    o.add(&t, l);
                }
            }
            o.add(text, line);
            if shape == Shape::OneLine {
                done(o.close());
            } else {
                self.open = Some(o);
            }
            return;
        }
        if looked_back_to(text) {
            if self.back.len() == 8 {
                self.back.pop_front();
            }
            self.back.push_back((line, text.to_string()));
        } else {
            self.back.clear();
        }
    }

    /// No block open and no line kept to look back to: a line without a marker
    /// ([`super::markers`]) would change nothing.
    pub fn idle(&self) -> bool {
        self.open.is_none() && self.back.is_empty()
    }

    /// A block is open.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The end of the stream.
    pub fn finish(&mut self, done: &mut impl FnMut(Block)) {
        self.back.clear();
        if let Some(o) = self.open.take() {
            done(o.close());
        }
    }
}

/// A line kept in case a block starts on a later line and takes it in (Go's `runtime: …`
/// and signal header, the JVM's `#` lines).
pub fn looked_back_to(text: &str) -> bool {
    text.starts_with("runtime: ") || text.starts_with('#') || go::is_signal_header(text)
}

/// The line that starts a block, if this is one. `before`: the line before, kept only if it
/// could belong to a block.
fn start(l: &str, before: Option<&str>) -> Option<Shape> {
    if l.starts_with("panic: ") || l.starts_with("fatal error: ") {
        return Some(Shape::Go);
    }
    // A signal dump's header counts only with the `PC=` line the runtime prints after it:
    // `SIGTERM: shutting down` is any program's log line.
    if l.starts_with("PC=0x") && before.is_some_and(go::is_signal_header) {
        return Some(Shape::Go);
    }
    if python::is_traceback_start(l) {
        return Some(Shape::Python);
    }
    if l.starts_with("Fatal Python error: ") {
        return Some(Shape::PythonFatal);
    }
    if rust::starts(l) {
        return Some(Shape::Rust);
    }
    if l.starts_with("Exception in thread \"") {
        return Some(Shape::Java);
    }
    if l == "# A fatal error has been detected by the Java Runtime Environment:" {
        return Some(Shape::JvmFatal);
    }
    if l.starts_with("FATAL ERROR: ") || l == "<--- Last few GCs --->" {
        return Some(Shape::NodeFatal);
    }
    if node_source(l) {
        return Some(Shape::NodeSource);
    }
    match native::kind(l)? {
        native::Kind::Terminate => Some(Shape::Terminate),
        native::Kind::Sanitizer => Some(Shape::Sanitizer),
        _ => Some(Shape::OneLine),
    }
}

/// Whether a line kept before a block's first belongs to it.
fn lookback(shape: Shape, l: &str) -> bool {
    match shape {
        Shape::Go => l.starts_with("runtime: ") || go::is_signal_header(l),
        Shape::JvmFatal => l.starts_with('#'),
        _ => false,
    }
}

/// `/app/server.js:12` or `node:internal/process/promises:391`: where Node says an uncaught
/// exception was thrown, on a line of its own.
fn node_source(l: &str) -> bool {
    // From the right, so that the ordinary line costs a byte or two.
    let t = l.trim_end_matches(|c: char| c.is_ascii_digit());
    let Some(file) = t.strip_suffix(':').filter(|_| t.len() < l.len()) else {
        return false;
    };
    (file.starts_with("node:")
        || [".js", ".mjs", ".cjs", ".ts"]
            .iter()
            .any(|e| file.ends_with(e)))
        && !file.contains(' ')
}

enum Take {
    Line,
    /// The line is the block's last.
    Last,
    No,
}

impl Open {
    fn new(shape: Shape) -> Open {
        Open {
            shape,
            block: Block {
                first_line: 0,
                last_line: 0,
                text: String::new(),
                truncated: false,
                goroutines: (shape == Shape::Go).then(Fold::default),
            },
            phase: 0,
            lines: 0,
            dump: false,
            rule: false,
            parser: (shape == Shape::Go).then(go::Parser::default),
        }
    }

    fn add(&mut self, text: &str, line: u64) {
        self.lines = self.lines.saturating_add(1);
        if self.block.first_line == 0 {
            self.block.first_line = line;
        }
        if !text.trim().is_empty() {
            self.block.last_line = line;
        }
        if let (Some(p), Some(f)) = (self.parser.as_mut(), self.block.goroutines.as_mut()) {
            if let Some(g) = p.push(text) {
                f.add(g);
            }
        }
        let b = &mut self.block;
        if b.truncated || b.text.len() + text.len() + 1 > MAX_TEXT {
            b.truncated = true;
            return;
        }
        b.text.push_str(text);
        b.text.push('\n');
    }

    fn close(mut self) -> Block {
        if let (Some(p), Some(f)) = (self.parser.as_mut(), self.block.goroutines.as_mut()) {
            if let Some(g) = p.finish() {
                f.add(g);
            }
            f.fatal = p.t.fatal_error.clone();
        }
        self.block
    }

    fn accepts(&mut self, l: &str) -> Take {
        if self.lines >= MAX_LOOSE && self.shape != Shape::Go {
            return Take::No;
        }
        let indented = l.starts_with(' ') || l.starts_with('\t');
        let yes = |b: bool| if b { Take::Line } else { Take::No };
        match self.shape {
            Shape::Go => self.go(l, indented),
            Shape::Python => {
                // 0: frames; 1: after the exception line; 2: after a chain's sentence.
                match self.phase {
                    0 if indented => Take::Line,
                    0 if l.is_empty() => Take::No,
                    0 => {
                        self.phase = 1;
                        Take::Line
                    }
                    _ if l.is_empty() => Take::Line,
                    _ if l.starts_with("The above exception was the direct cause")
                        || l.starts_with("During handling of the above exception") =>
                    {
                        self.phase = 2;
                        Take::Line
                    }
                    _ if python::is_traceback_start(l) => {
                        self.phase = 0;
                        Take::Line
                    }
                    _ => Take::No,
                }
            }
            Shape::PythonFatal => yes(l.is_empty()
                || indented
                || [
                    "Python runtime state",
                    "Current thread ",
                    "Thread 0x",
                    "Extension modules",
                    "Stack (most recent call first)",
                    "Traceback",
                ]
                .iter()
                .any(|p| l.starts_with(p))),
            Shape::Rust => {
                if l.starts_with("note: ") || l == "stack backtrace:" {
                    self.phase = 1;
                    return Take::Line;
                }
                yes(match self.phase {
                    0 => {
                        !l.is_empty() || {
                            self.phase = 1;
                            true
                        }
                    }
                    _ => indented || l.starts_with("fatal runtime error: "),
                })
            }
            Shape::Java => yes(indented || l.starts_with("Caused by: ")),
            Shape::JvmFatal => yes(l.starts_with('#')),
            Shape::NodeSource => {
                // The source line, the caret line, a blank line, the error, its frames.
                self.phase = self.phase.saturating_add(1);
                if self.phase <= 4 {
                    return Take::Line;
                }
                if l.starts_with("Node.js v") {
                    return Take::Last;
                }
                yes(l.is_empty() || indented || l == "}")
            }
            Shape::NodeFatal => yes(l.is_empty()
                || indented
                || l.starts_with("<--- ")
                || l.starts_with('[')
                || l.starts_with("FATAL ERROR: ")
                || l.starts_with("----- ")
                || l.split_once(": 0x")
                    .is_some_and(|(n, _)| n.trim().bytes().all(|b| b.is_ascii_digit()))),
            Shape::Terminate => yes(indented),
            Shape::Sanitizer => {
                if l.starts_with("==") && l.ends_with("==ABORTING") {
                    return Take::Last;
                }
                if self.phase == 1 {
                    return Take::No;
                }
                if l.starts_with("SUMMARY: ") {
                    self.phase = 1;
                }
                Take::Line
            }
            Shape::OneLine => Take::No,
        }
    }

    /// Go: 0 the header (panic values run over lines), 1 between goroutines, 2 in one.
    fn go(&mut self, l: &str, indented: bool) -> Take {
        if l.is_empty() {
            self.phase = 1;
            return Take::Line;
        }
        // A new death after a dump is the next crash (a restarted program's); a signal header
        // after one continues it only after the `-----` GOTRACEBACK=crash puts between the
        // threads it dumps.
        let rule = std::mem::replace(&mut self.rule, l.starts_with("-----"));
        if self.dump
            && (l.starts_with("panic: ")
                || l.starts_with("fatal error: ")
                || (go::is_signal_header(l) && !rule))
        {
            return Take::No;
        }
        if l.starts_with("goroutine ") || l == "runtime stack:" {
            self.phase = 2;
            self.dump = true;
            return Take::Line;
        }
        match self.phase {
            0 => {
                if self.lines >= 64 {
                    return Take::No;
                }
                Take::Line
            }
            2 if indented
                || l.ends_with(')')
                || l.starts_with("created by ")
                || l.starts_with("...additional frames elided...")
                || l.starts_with("goroutine running on other thread") =>
            {
                Take::Line
            }
            _ if l.starts_with("panic: ")
                || l.starts_with("\tpanic: ")
                || l.starts_with("fatal error: ")
                || l.starts_with("runtime: ")
                || l.starts_with("[signal ")
                || l.starts_with("PC=")
                || l.starts_with("exit status ")
                || l.starts_with("-----")
                || l == "signal arrived during cgo execution"
                || go::is_signal_header(l)
                || register(l) =>
            {
                if !self.dump {
                    self.phase = 0;
                }
                Take::Line
            }
            _ => Take::No,
        }
    }
}

/// `rax    0x0` in a GOTRACEBACK=crash register dump.
fn register(l: &str) -> bool {
    let Some((name, value)) = l.split_once(' ') else {
        return false;
    };
    name.len() <= 6
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && value.trim_start().starts_with("0x")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(text: &str) -> Vec<(u64, u64, String)> {
        let mut f = Finder::default();
        let mut out = Vec::new();
        let mut keep = |b: Block| out.push((b.first_line, b.last_line, b.text));
        for (i, l) in text.lines().enumerate() {
            f.push(l, i as u64 + 1, &mut keep);
        }
        f.finish(&mut keep);
        out
    }

    #[test]
    fn go_panic_with_its_goroutines_between_other_lines() {
        let log = "starting\npanic: boom\n\ngoroutine 1 [running]:\nmain.main()\n\t/src/main.go:5 +0x1d\n\ngoroutine 6 [chan receive]:\nmain.w()\n\t/src/main.go:9 +0x2\ncreated by main.main in goroutine 1\n\t/src/main.go:4 +0x3\nexit status 2\nnext run\n";
        let b = blocks(log);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].0, b[0].1), (2, 13));
        assert!(b[0].2.starts_with("panic: boom\n") && b[0].2.ends_with("exit status 2\n"));
    }

    #[test]
    fn runtime_lines_before_a_fatal_error_and_two_deaths_in_a_row() {
        let log = "x\nruntime: out of memory: cannot allocate\nfatal error: out of memory\n\ngoroutine 1 [running]:\nmain.f()\n\t/a.go:1\npanic: again\n\ngoroutine 1 [running]:\nmain.g()\n\t/a.go:2\n";
        let b = blocks(log);
        assert_eq!(
            b.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            [(2, 7), (8, 12)]
        );
    }

    #[test]
    fn a_signal_line_alone_is_not_a_dump() {
        assert!(blocks("SIGTERM: shutting down\nbye\n").is_empty());
        let b = blocks("ok\nSIGQUIT: quit\nPC=0x46e1a1 m=0 sigcode=0\n\ngoroutine 1 [select]:\nmain.main()\n\t/a.go:3\n\nrax    0x0\nrbx    0x1\nlater\n");
        assert_eq!((b[0].0, b[0].1), (2, 10));
        // Right after another dump (a restarted program's, on the same stream) it is the next
        // crash; after GOTRACEBACK=crash's `-----` it is the same one.
        let b = blocks("panic: x\n\ngoroutine 1 [running]:\nmain.main()\n\t/a.go:1\n\nSIGQUIT: quit\nPC=0x1 m=0 sigcode=0\n\ngoroutine 1 [select]:\nmain.main()\n\t/a.go:2\n-----\n\nSIGQUIT: quit\nPC=0x2 m=1 sigcode=0\n");
        assert_eq!(
            b.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            [(1, 5), (7, 16)]
        );
    }

    #[test]
    fn python_chain_is_one_block_ending_at_the_exception() {
        let log = "hello\nTraceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n    f()\nKeyError: 'x'\n\nThe above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\n  File \"a.py\", line 3, in <module>\nValueError: bad\nINFO next\n";
        let b = blocks(log);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].0, b[0].1), (2, 11));
    }

    #[test]
    fn rust_node_terminate_and_one_liners() {
        let log = "thread 'main' panicked at src/main.rs:2:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\nlog\n/app/x.js:3\n  throw new Error('b');\n  ^\n\nError: b\n    at Object.<anonymous> (/app/x.js:3:9)\n\nNode.js v20.1.0\nterminate called after throwing an instance of 'std::runtime_error'\n  what():  bad\nprog: a.c:3: main: Assertion `x' failed.\nmore\n";
        let b = blocks(log);
        assert_eq!(
            b.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            [(1, 3), (5, 12), (13, 14), (15, 15)]
        );
    }
}
